"""Content ids: a SHA-256 of each *raw* example (the exact text, or all tokens, or the
features, plus the label), before tokenisation or truncation. What the seller commits to
and the buyer checks a delivery with; made only here."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["IDS_VERSION", "dense_example_id", "example_id", "text_example_id"]

IDS_VERSION = "raw/2"  # ids hash the raw example (text or all tokens/features, label), never truncated tokens


def _label_bytes(label: Any, as_float: bool = False) -> bytes:
    if isinstance(label, list):
        label = [float(x) for x in label] if as_float else [int(x) for x in label]
    return b"label" + repr(label).encode()


def text_example_id(text: str, label: Any = None) -> bytes:
    """SHA-256 content hash (32 bytes) of a raw text example: its exact UTF-8 text (before any
    tokenisation or truncation, so case, accents and text past ``max_length`` count) and its
    label. What the seller commits to and the buyer checks a delivery with."""
    h = hashlib.sha256(b"tip_hf-text-example/2")
    h.update(b"text" + len(text.encode()).to_bytes(8, "little") + text.encode())
    if label is not None:
        h.update(_label_bytes(label))
    return h.digest()


def example_id(input_ids: Sequence[int], label: Any = None, token_type_ids: Sequence[int] | None = None) -> bytes:
    """SHA-256 content hash (32 bytes) of a pre-tokenised example: *all* its token ids (before
    truncation), its label (class id or label token ids) and token type ids, if any."""
    h = hashlib.sha256(b"tip_hf-example/1")
    h.update(b"ids" + torch.tensor(list(input_ids), dtype=torch.int64).numpy().astype("<i8").tobytes())
    if token_type_ids is not None:
        h.update(b"tt" + torch.tensor(list(token_type_ids), dtype=torch.int64).numpy().astype("<i8").tobytes())
    if label is not None:
        h.update(_label_bytes(label))
    return h.digest()


def dense_example_id(features: torch.Tensor, label: Any = None) -> bytes:
    """SHA-256 content hash of a dense example: its shape, its ``float32`` values, its label."""
    x = torch.as_tensor(features, dtype=torch.float32).contiguous()
    h = hashlib.sha256(b"tip_hf-dense-example/1")
    h.update(b"shape" + repr(tuple(x.shape)).encode())
    h.update(b"x" + x.numpy().astype("<f4").tobytes())
    if label is not None:
        h.update(_label_bytes(label, as_float=True))
    return h.digest()
