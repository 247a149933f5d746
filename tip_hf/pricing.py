"""Turning values into payouts: value-proportional vs flat-rate pricing, and their inequality.

A buyer with a budget pays each seller in proportion to the value it brings (only positive
value is paid for), or, as data markets commonly do, a flat rate per example. When values
are heavy-tailed (TIP's finding) the flat rate overpays the many low-value sellers.

Value-proportional payouts leak the buyer's secret query: a corpus's value is ``q . s_c`` and a
seller knows its sketch sums ``s_c``, so cents-rounded payouts of crafted one-hot corpora, or
least squares over a few hundred ordinary ones, give back ``q`` up to scale.
:func:`tiered_payouts` (coarse rank only) and :func:`noised_payouts` (randomised values) trade
pricing fidelity for less leakage; ``scripts/bench_payout_leak.py`` measures both sides.
Neither hides *which* corpora have positive value: anything that pays nothing for
non-positive value reveals ``sign(q . s_c)``, and that bit alone, over enough corpora, points
back at ``q``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "gini",
    "flat_rate_payouts",
    "value_proportional_payouts",
    "tiered_payouts",
    "noised_payouts",
    "top_share",
]


def _check_budget(budget: float) -> float:
    """A NaN or infinite budget would silently turn every payout into NaN/inf, a negative one into debts."""
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"budget must be a positive finite amount, got {budget!r}; pass e.g. budget=1000.0") from None
    if not math.isfinite(b) or b <= 0:
        raise ValueError(f"budget must be a positive finite amount, got {budget!r}; pass e.g. budget=1000.0")
    return b


def _positive_values(values: Mapping[str, float]) -> dict[str, float]:
    """``max(v, 0)`` per corpus, refusing NaN/inf (``max(nan, 0)`` is NaN and would poison the split)."""
    out = {}
    for name, v in values.items():
        x = float(v)
        if not math.isfinite(x):
            raise ValueError(f"value of corpus {name!r} must be finite, got {v!r}; drop or re-score that corpus")
        out[name] = max(x, 0.0)
    return out


def value_proportional_payouts(values: Mapping[str, float], budget: float) -> dict[str, float]:
    """``budget * max(v, 0) / sum(max(v, 0))``; nothing is paid when no value is positive.

    Exact, and therefore leaky: the payouts are ``q . s_c`` up to one shared scale (see the module
    docstring); prefer :func:`tiered_payouts` when sellers may be curious.
    """
    budget = _check_budget(budget)
    positive = {name: max(float(v), 0.0) for name, v in values.items()}
    total = sum(positive.values())
    return {name: budget * v / total if total > 0 else 0.0 for name, v in positive.items()}


def flat_rate_payouts(counts: Mapping[str, int], budget: float) -> dict[str, float]:
    """The budget split by example count, whatever the examples are worth."""
    budget = _check_budget(budget)
    total = sum(counts.values())
    return {name: budget * c / total if total else 0.0 for name, c in counts.items()}


def tiered_payouts(values: Mapping[str, float], budget: float, tiers: int = 4) -> dict[str, float]:
    """Same amount for every corpus in a price tier, so a payout reveals a coarse rank, not a magnitude.

    Corpora with value <= 0 get nothing. The positive ones are ranked and cut into ``tiers``
    equal-count tiers (quantiles of the positive values; ties share the lower rank, so equal values
    get equal pay). Tier ``t`` (1 = lowest) has weight ``t`` and the budget is split by weight, so
    payouts sum to the budget and never decrease with value. ``tiers=1`` pays every positive corpus
    the same. What still leaks: which corpora are positive (the sign of ``q . s_c``) and the tier.
    """
    budget = _check_budget(budget)
    if isinstance(tiers, bool) or not isinstance(tiers, (int, np.integer)) or tiers < 1:
        raise ValueError(f"tiers must be an integer >= 1, got {tiers!r}; pass e.g. tiers=4")
    positive = _positive_values(values)
    names = [name for name, v in positive.items() if v > 0]
    if not names:
        return dict.fromkeys(positive, 0.0)
    v = np.array([positive[name] for name in names])
    order = np.sort(v)
    rank = np.searchsorted(order, v, side="left")  # 0-based; ties share the lowest rank
    tier = rank * int(tiers) // len(names) + 1  # 1..tiers
    share = budget / float(tier.sum())
    paid = {name: float(t) * share for name, t in zip(names, tier.tolist(), strict=True)}
    return {name: paid.get(name, 0.0) for name in positive}


def noised_payouts(
    values: Mapping[str, float],
    budget: float,
    relative_noise: float = 0.5,
    seed: int | np.random.Generator | None = None,
) -> dict[str, float]:
    """Value-proportional payouts on randomly perturbed values, so a payout is only a noisy read of ``q . s_c``.

    Each value is multiplied by an independent mean-one lognormal factor whose relative standard
    deviation is ``relative_noise`` (``sigma = sqrt(log(1 + relative_noise**2))``), then clipped at 0
    and the budget split in proportion. Multiplicative noise keeps the sign, so a corpus of negative
    value is still never paid -- and the sign still leaks. Noise averages out: over many corpora (or
    repeated payout rounds with fresh noise) an attacker's least squares recovers most of ``q``;
    ``seed`` makes a run reproducible, but reuse the same draw for the same market.
    """
    budget = _check_budget(budget)
    r = float(relative_noise)
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"relative_noise must be a finite number >= 0, got {relative_noise!r}; pass e.g. 0.5")
    positive = _positive_values(values)
    rng = np.random.default_rng(seed)
    sigma = math.sqrt(math.log1p(r * r))
    factors = np.exp(sigma * rng.standard_normal(len(positive)) - sigma * sigma / 2)
    noisy = {name: v * float(f) for (name, v), f in zip(positive.items(), factors, strict=True)}
    total = sum(noisy.values())
    return {name: budget * v / total if total > 0 else 0.0 for name, v in noisy.items()}


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


PAYOUT_SCHEMES = ("tiers", "noised", "proportional")


def payout_table(values: dict[str, float], counts: dict[str, int], budget: float, scheme: str) -> dict[str, Any]:
    """What ``tip reveal --budget`` prints: the ``scheme``'s payouts beside flat-rate ones
    (by example count), and the Gini coefficient of each."""
    schemes = {"tiers": tiered_payouts, "noised": noised_payouts, "proportional": value_proportional_payouts}
    if scheme not in schemes:
        raise ValueError(f"Unknown payout scheme {scheme!r}; one of {sorted(schemes)}.")
    pay = schemes[scheme](values, budget)
    flat = flat_rate_payouts(counts, budget)
    return {
        "payouts": {scheme: pay, "flat_rate": flat},
        "gini": {scheme: gini(list(pay.values())), "flat_rate": gini(list(flat.values()))},
    }
