"""Turning values into payouts: value-proportional vs flat-rate pricing, and their inequality.

A buyer with a budget pays each seller in proportion to the value it brings (only positive
value is paid for), or, as data markets commonly do, a flat rate per example. When values
are heavy-tailed (TIP's finding) the flat rate overpays the many low-value sellers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["gini", "flat_rate_payouts", "value_proportional_payouts", "top_share"]


def value_proportional_payouts(values: Mapping[str, float], budget: float) -> dict[str, float]:
    """``budget * max(v, 0) / sum(max(v, 0))``; nothing is paid when no value is positive."""
    positive = {name: max(float(v), 0.0) for name, v in values.items()}
    total = sum(positive.values())
    return {name: budget * v / total if total > 0 else 0.0 for name, v in positive.items()}


def flat_rate_payouts(counts: Mapping[str, int], budget: float) -> dict[str, float]:
    """The budget split by example count, whatever the examples are worth."""
    total = sum(counts.values())
    return {name: budget * c / total if total else 0.0 for name, c in counts.items()}


def gini(amounts: Sequence[float]) -> float:
    """Gini coefficient of non-negative amounts (0 = equal, -> 1 = one takes all)."""
    x = np.sort(np.asarray(amounts, dtype=np.float64))
    if x.size == 0 or x.sum() <= 0:
        return 0.0
    if (x < 0).any():
        raise ValueError("gini() needs non-negative amounts (payouts, not signed values).")
    ranks = np.arange(1, x.size + 1)
    return float((2 * ranks - x.size - 1) @ x / (x.size * x.sum()))


def top_share(values: Sequence[float], fraction: float = 0.1) -> float:
    """Share of the total *positive* value held by the top ``fraction`` of items."""
    v = np.sort(np.maximum(np.asarray(values, dtype=np.float64), 0.0))[::-1]
    if v.sum() <= 0:
        return 0.0
    top = max(1, int(np.ceil(fraction * v.size)))
    return float(v[:top].sum() / v.sum())
