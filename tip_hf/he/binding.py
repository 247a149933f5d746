"""Header binding: a keyed check that ties a scores header to its ciphertexts.

The message checksum (:mod:`.messages`) is no signature: anyone can edit a scores header
(the scale exponent, a count, a corpus name, the DP statement, the SHA-256 of a ciphertext)
and recompute it. This check is keyed by a secret only the buyer holds.

* Buyer (:func:`tip_hf.he.encrypt_query`): draws a 32-byte seed and derives from it, per
  check slot ``i < CHECK_SLOTS``, a secret real pair ``R_i`` in ``[-1/2, 1/2)^2``
  (:func:`secret_rows`). The query carries one extra ciphertext holding
  ``R_i[0] - i R_i[1]`` in slot ``i`` (the vector's complex-pairs layout), zero elsewhere.
  The seed stays in the buyer's private ``queries.json``.
* Seller (:func:`tip_hf.he.score_encrypted`): once the header is complete, including the
  SHA-256 of every value ciphertext, derives public pairs ``H_i`` in ``[-1/2, 1/2)^2`` from
  SHA-256 of the canonical header (:func:`header_rows`; the ``check`` field itself is left
  out) and releases one more ciphertext, flooded and re-randomised like the values, whose
  slot ``i`` decrypts to ``<H_i, R_i>`` (:meth:`tip_hf.he.kernel.QueryKernel.release_check`).
* Buyer (:func:`tip_hf.he.decrypt_scores`): recomputes ``H`` from the header as received and
  requires ``|slot_i - <H_i, R_i>| <= tolerance`` in every check slot.

Why a *pair* per slot, different in every slot: a party without the key can multiply each
slot of a ciphertext by a public constant of its choice (plaintext multiplication; only the
modulus headroom limits its precision). With a single secret ``r`` in every slot it could
turn ``r h_i`` into ``r h'_i`` for any new header without knowing ``r``. With
``<H_i, R_i>`` it must know where ``R_i`` lies on a line (the direction of ``R_i``): each
slot is a fresh guess, right on average about once in 2^7 at the largest tolerance
(simulated with the best constant per slot; ~2^-16 at the default flooding), and all
``CHECK_SLOTS`` must be right. Squaring or otherwise combining the decrypted value within a
slot does not help: it is one number, and the target is another linear function of ``R_i``.
Whoever holds the query (the seller) can compute the check for any header: this binds the
header against everyone else (in transit, later edits).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "CHECK_FIELD",
    "CHECK_SLOTS",
    "canonical_header",
    "check_tolerance",
    "expected_check",
    "header_rows",
    "secret_rows",
]

CHECK_SLOTS = 16  # check slots per result; each needs its own guess of a secret direction
CHECK_FIELD = "check"  # the header field that describes the check ciphertext (not hashed)
HEADER_TAG = b"tip_hf-header-check/1\0"
SECRET_TAG = b"tip_hf-check-secret/1\0"
SEED_BYTES = 32
# The largest flooding std a seller accepts is 2^-16 (QueryKernel.check_precision); an honest
# check slot is off by flooding only, so 8 stds of it never fail an honest result. The cap
# keeps an editor from widening the tolerance by declaring a huge `flood_std`.
TOLERANCE_CAP = 8 * 2.0**-16


def canonical_header(header: Mapping[str, Any]) -> bytes:
    """The bytes the check binds: every header field except ``check``, as sorted compact JSON."""
    body = {key: value for key, value in header.items() if key != CHECK_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _half_open(digest: bytes) -> float:
    """53 bits of ``digest`` as a float in ``[-1/2, 1/2)`` (exact in double precision)."""
    return (int.from_bytes(digest[:8], "little") >> 11) / 2.0**53 - 0.5


def _rows(tag: bytes, key: bytes) -> np.ndarray:
    base = hashlib.sha256(tag + key).digest()
    return np.array(
        [
            [_half_open(hashlib.sha256(base + i.to_bytes(4, "little") + bytes([j])).digest()) for j in range(2)]
            for i in range(CHECK_SLOTS)
        ]
    )


def header_rows(header: Mapping[str, Any]) -> np.ndarray:
    """The public pairs ``H`` (``[CHECK_SLOTS, 2]``, entries in ``[-1/2, 1/2)``, row norms < 1)
    derived from the canonical header."""
    return _rows(HEADER_TAG, canonical_header(header))


def secret_rows(seed: bytes) -> np.ndarray:
    """The buyer's secret pairs ``R`` (``[CHECK_SLOTS, 2]``, entries in ``[-1/2, 1/2)``)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"A check seed has {SEED_BYTES} bytes, got {len(seed)}.")
    return _rows(SECRET_TAG, seed)


def expected_check(header: Mapping[str, Any], seed: bytes) -> np.ndarray:
    """What the check slots must decrypt to for this header: ``<H_i, R_i>`` per slot."""
    return (header_rows(header) * secret_rows(seed)).sum(axis=1)


def check_tolerance(flood_std: float) -> float:
    """8 flooding stds (the header's, which is itself bound), capped at :data:`TOLERANCE_CAP`."""
    return min(8.0 * max(flood_std, 0.0), TOLERANCE_CAP)
