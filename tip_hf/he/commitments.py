"""Commitments to exactly the scored examples: per released corpus a salted SHA-256 over the
*multiset* of its example ids (row order free), a root over the corpora, and for
per-example releases an ordered digest. The salts stay with the seller until delivery."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

__all__ = ["COMMIT_TAG", "commitment_digest", "commitment_root", "ordered_digest"]

COMMIT_TAG = b"tip_hf-commitment/2"


def commitment_digest(salt: bytes, ids: Iterable[bytes]) -> str:
    """Salted SHA-256 over a *set* of example ids (sorted, with multiplicity and count), so
    row order does not matter and a dictionary search without the salt learns nothing."""
    ordered = sorted(bytes(i) for i in ids)
    h = hashlib.sha256(COMMIT_TAG + len(salt).to_bytes(2, "little") + salt)
    h.update(len(ordered).to_bytes(8, "little"))
    for example_id in ordered:
        h.update(example_id)
    return h.hexdigest()


def commitment_root(corpora: list[dict[str, Any]]) -> dict[str, Any]:
    h = hashlib.sha256(COMMIT_TAG)
    released = [c for c in corpora if c["released"]]
    for c in released:
        h.update(f"{c['name']}\0{c['count']}\0{c['commitment']}\0".encode())
    return {"root": h.hexdigest(), "corpora": len(released)}


def ordered_digest(salt: bytes, ids: list[bytes]) -> str:
    h = hashlib.sha256(COMMIT_TAG + b"ordered" + salt)
    h.update(len(ids).to_bytes(8, "little"))
    for example_id in ids:
        h.update(example_id)
    return h.hexdigest()
