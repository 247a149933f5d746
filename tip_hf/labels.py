"""What a label may be: plain Python values, checked against the model's classes, and the
batch tensor they become (class ids ``long``, regression and multi-label targets ``float32``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import DataError

__all__ = ["checked_label", "is_int", "label_tensor", "plain_label"]


def checked_label(
    value: Any, task: str, column: str, row: int, num_labels: int | None = None, multi_label: bool = False
) -> Any:
    """Row ``row``'s label from ``column`` as plain Python, or a :class:`DataError` naming
    the row: class ids must be integers in ``0..num_labels-1`` (when known), regression and
    multi-label targets finite floats, causal-LM labels lists of token ids."""
    label = plain_label(value)
    if task != "sequence_classification":
        if label is not None and not (isinstance(label, list) and all(is_int(t) and abs(t) < 2**63 for t in label)):
            raise DataError(f"Example {row}: causal-LM labels must be a list of token ids (-100 to ignore).")
        return label
    if label is None or isinstance(label, str | bytes | dict):
        raise DataError(
            f"Example {row} has label {label!r} in `{column}`: labels must be class ids (floats: regression).",
            fix="Map label names to ids (e.g. ClassLabel.str2int) and drop unlabelled rows.",
        )
    values = label if isinstance(label, list) else [label]
    if not values or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        raise DataError(f"Example {row} has label {label!r} in `{column}`: not finite numbers.")
    n = num_labels
    if n is None:
        return label
    if isinstance(label, list):
        if len(label) != n:
            raise DataError(f"Example {row} has {len(label)} multi-label targets in `{column}`; the model has {n}.")
    elif multi_label:
        raise DataError(f"Example {row}: the model is multi-label ({n} outputs) but `{column}` holds one number.")
    elif n > 1 and (not is_int(label) or not 0 <= int(label) < n):
        why = "unlabelled rows (-1) cannot be valued" if label == -1 else f"the model has classes 0..{n - 1}"
        raise DataError(
            f"Example {row} has label {label!r} in `{column}`, not a class id of the model: {why}.",
            fix="Drop or relabel such rows, or use the model that matches these labels.",
        )
    return label


def is_int(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def plain_label(label: Any) -> Any:
    """A label as plain Python (numpy/torch scalars and arrays, tuples -> int/float/list; -0.0 -> 0.0),
    so ids and batch dtypes do not depend on the dataset's format."""
    if hasattr(label, "tolist"):
        label = label.tolist()
    if isinstance(label, tuple):
        label = list(label)
    if isinstance(label, float):
        return label + 0.0
    if isinstance(label, list):
        return [v + 0.0 if isinstance(v, float) else v for v in label]
    return label


def label_tensor(rows: list[dict[str, Any]], integral: bool = False) -> torch.Tensor:
    """Class ids as ``long`` (integral floats such as 1.0 too, when the model has classes);
    float32 when a label is a non-integral float (regression) or a list (multi-label targets)."""
    values = [r["label"] for r in rows]
    if integral and all(is_int(v) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.long)
    floating = any(isinstance(v, float | list) for v in values)
    return torch.tensor(values, dtype=torch.float32 if floating else torch.long)
