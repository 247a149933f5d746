"""Payout schemes: invariants, input checks, and how much of the buyer's query q a curious seller recovers.

A corpus's value is ``q . s_c`` and the seller knows ``s_c``. From value-proportional payouts
(rounded to cents) it gets q back exactly. Tiered payouts remove the magnitude but, measured
here, not the leak: at k = 32 with 192 corpora the attacks still reach correlation ~0.95,
because which corpora get paid (the sign of ``q . s_c``) and their rank carry most of q.
What does bound the leak is the number of corpora relative to k (last test).
``scripts/bench_payout_leak.py`` prints the full table.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tip_hf.pricing import flat_rate_payouts, noised_payouts, tiered_payouts, value_proportional_payouts

BUDGET = 1000.0
K = 32
CORPORA = 192
SEEDS = range(5)


def _corr(estimate, truth):
    return 0.0 if np.ptp(estimate) == 0 else float(np.corrcoef(estimate, truth)[0, 1])


def _cents(payouts, names):
    return np.round(np.array([payouts[n] for n in names]), 2)


def one_hot_attack(pay, q):
    """2k crafted corpora with sketch sums +e_j, -e_j: q_j ~ payout(+e_j) - payout(-e_j)."""
    k = q.size
    names = [f"+{j}" for j in range(k)] + [f"-{j}" for j in range(k)]
    p = _cents(pay(dict(zip(names, np.concatenate([q, -q]).tolist(), strict=True))), names)
    return _corr(p[:k] - p[k:], q)


def least_squares_attack(pay, q, s):
    """Least squares of the paid corpora's payouts on their sketch sums."""
    names = [f"c{i}" for i in range(len(s))]
    p = _cents(pay(dict(zip(names, (s @ q).tolist(), strict=True))), names)
    paid = p > 0
    return _corr(np.linalg.lstsq(s[paid], p[paid], rcond=None)[0], q)


def sign_attack(pay, q, s):
    """Only which corpora were paid: sum_c (+1 if paid else -1) s_c."""
    names = [f"c{i}" for i in range(len(s))]
    p = _cents(pay(dict(zip(names, (s @ q).tolist(), strict=True))), names)
    return _corr(s.T @ np.where(p > 0, 1.0, -1.0), q)


def _markets(k=K, m=CORPORA, seeds=SEEDS):
    for seed in seeds:
        rng = np.random.default_rng(seed)
        yield rng.standard_normal(k), rng.standard_normal((m, k))


def _mean_leak(pay, k=K, m=CORPORA):
    one_hot, lsq, sign = zip(
        *[(one_hot_attack(pay, q), least_squares_attack(pay, q, s), sign_attack(pay, q, s)) for q, s in _markets(k, m)],
        strict=True,
    )
    return float(np.mean(one_hot)), float(np.mean(lsq)), float(np.mean(sign))


def test_value_proportional_payouts_give_q_back():
    def pay(v):
        return value_proportional_payouts(v, BUDGET)

    for q, s in _markets():
        assert one_hot_attack(pay, q) > 0.99
        assert least_squares_attack(pay, q, s) > 0.99


def test_tiered_payouts_are_not_exact_but_still_leak_the_direction_of_q():
    """Measured (seeds 0-4): one-hot 0.926, least squares 0.971, sign only 0.914; value-proportional: 1.000."""

    def pay(v):
        return tiered_payouts(v, BUDGET, tiers=4)

    one_hot, lsq, sign = _mean_leak(pay)
    # no longer exact: the magnitude of q . s_c is gone ...
    assert one_hot < 0.97
    assert lsq < 0.99
    # ... but not the leak: the paid/unpaid bit and the coarse rank still point at q (honest bound).
    assert one_hot > 0.85
    assert lsq > 0.9
    assert sign > 0.85


def test_sign_leak_is_the_same_for_every_scheme_that_pays_only_positive_value():
    schemes = [
        lambda v: value_proportional_payouts(v, BUDGET),
        lambda v: tiered_payouts(v, BUDGET, tiers=4),
        lambda v: tiered_payouts(v, BUDGET, tiers=1),
        lambda v: noised_payouts(v, BUDGET, relative_noise=0.5, seed=0),
    ]
    q, s = next(_markets())
    leaks = [sign_attack(pay, q, s) for pay in schemes]
    assert max(leaks) - min(leaks) < 1e-12
    assert leaks[0] > 0.8


def test_few_corpora_per_dimension_bound_the_market_attacks():
    """192 corpora against k = 1024: least squares and the sign bit recover little (~0.3), even from exact payouts."""

    def pay(v):
        return value_proportional_payouts(v, BUDGET)

    _, lsq, sign = _mean_leak(pay, k=1024)
    assert lsq < 0.45
    assert sign < 0.45


def test_flat_rate_leaks_nothing():
    rng = np.random.default_rng(0)
    q = rng.standard_normal(K)
    names = [f"+{j}" for j in range(K)] + [f"-{j}" for j in range(K)]
    assert one_hot_attack(lambda v: flat_rate_payouts(dict.fromkeys(names, 10), BUDGET), q) == 0.0


def test_tiered_payouts_invariants():
    rng = np.random.default_rng(1)
    values = {f"c{i}": float(v) for i, v in enumerate(rng.standard_normal(101))}
    values["tie_a"] = values["tie_b"] = 0.5
    values["zero"] = 0.0
    for tiers in (1, 2, 4, 7):
        paid = tiered_payouts(values, BUDGET, tiers=tiers)
        assert list(paid) == list(values)
        assert sum(paid.values()) == pytest.approx(BUDGET)
        assert all(paid[n] == 0.0 for n, v in values.items() if v <= 0)
        assert all(paid[n] > 0.0 for n, v in values.items() if v > 0)
        assert paid["tie_a"] == paid["tie_b"]
        by_value = sorted(values, key=values.get)
        amounts = [paid[n] for n in by_value]
        assert (np.diff(amounts) >= 0).all()
        assert len({round(a, 9) for a, v in zip(amounts, sorted(values.values()), strict=True) if v > 0}) == tiers


def test_tiered_payouts_small_markets():
    assert tiered_payouts({"a": 2.0}, BUDGET) == {"a": BUDGET}
    assert tiered_payouts({"a": -1.0, "b": 0.0}, BUDGET) == {"a": 0.0, "b": 0.0}
    assert tiered_payouts({}, BUDGET) == {}
    paid = tiered_payouts({"a": 1.0, "b": 2.0}, BUDGET, tiers=4)
    assert paid["b"] > paid["a"] > 0 and sum(paid.values()) == pytest.approx(BUDGET)


def test_noised_payouts_invariants():
    values = {"a": 3.0, "b": -1.0, "c": 1.0, "d": 0.0, "e": 10.0}
    paid = noised_payouts(values, BUDGET, relative_noise=0.5, seed=3)
    assert sum(paid.values()) == pytest.approx(BUDGET)
    assert paid["b"] == paid["d"] == 0.0
    assert all(paid[n] > 0 for n in ("a", "c", "e"))
    assert paid == noised_payouts(values, BUDGET, relative_noise=0.5, seed=3)
    assert paid != noised_payouts(values, BUDGET, relative_noise=0.5, seed=4)
    exact = noised_payouts(values, BUDGET, relative_noise=0.0, seed=3)
    assert exact == pytest.approx(value_proportional_payouts(values, BUDGET))
    assert noised_payouts({"a": -1.0}, BUDGET, seed=0) == {"a": 0.0}


def test_noised_payouts_noise_has_the_stated_relative_size():
    values = {f"c{i}": 1.0 for i in range(20_000)}
    paid = np.array(list(noised_payouts(values, BUDGET, relative_noise=0.5, seed=0).values()))
    factors = paid / paid.mean()
    assert factors.std() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("budget", [math.nan, math.inf, -math.inf, 0.0, -5.0, "lots", None])
def test_bad_budget_is_refused_by_every_scheme(budget):
    values = {"a": 1.0, "b": 2.0}
    for call in (
        lambda: value_proportional_payouts(values, budget),
        lambda: flat_rate_payouts({"a": 1, "b": 2}, budget),
        lambda: tiered_payouts(values, budget),
        lambda: noised_payouts(values, budget, seed=0),
    ):
        with pytest.raises(ValueError, match="budget must be a positive finite amount"):
            call()


@pytest.mark.parametrize("tiers", [0, -1, 2.5, True])
def test_bad_tiers_are_refused(tiers):
    with pytest.raises(ValueError, match="tiers must be an integer >= 1"):
        tiered_payouts({"a": 1.0}, BUDGET, tiers=tiers)


def test_bad_values_and_noise_are_refused():
    with pytest.raises(ValueError, match="must be finite"):
        tiered_payouts({"a": math.nan}, BUDGET)
    with pytest.raises(ValueError, match="must be finite"):
        noised_payouts({"a": math.inf}, BUDGET, seed=0)
    with pytest.raises(ValueError, match="relative_noise"):
        noised_payouts({"a": 1.0}, BUDGET, relative_noise=-0.1)
