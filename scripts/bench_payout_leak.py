"""How much of the buyer's secret query ``q`` a curious seller recovers from payouts, per payout scheme.

A corpus's value is ``q . s_c``; the seller knows each of its corpora's sketch sum ``s_c`` (a
k-vector) and sees the payouts rounded to cents. Attacks (correlation of the recovered ``q`` with
the true one; 1.0 = q recovered up to scale, ~0 = nothing learned):

- one-hot: 2k crafted corpora with sketch sums ``+e_j`` and ``-e_j``; estimate
  ``q_j = payout(+e_j) - payout(-e_j)``.
- least squares: ``--corpora`` ordinary corpora with Gaussian sketch sums; least squares of the
  payouts on ``s_c`` over the corpora that were paid (exact for value-proportional payouts).
- sign only: the same corpora, using only whether a corpus was paid: ``sum_c (+1 paid, -1 not) s_c``.
  Every scheme that pays nothing for non-positive value leaks this bit.

Fidelity (what the buyer keeps): Spearman between payouts and true values over the ordinary
corpora (all of them, and the positive-value ones only). Flat rate pays by example count, drawn
independently of the sketch sums here.

A second table shows what does protect: the number of corpora per seller relative to k.

    python scripts/bench_payout_leak.py                 # k = 32, 192 corpora, 10 seeds
    python scripts/bench_payout_leak.py --k 64 --seeds 20
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping

import numpy as np
from scipy.stats import spearmanr

from tip_hf.pricing import flat_rate_payouts, noised_payouts, tiered_payouts, value_proportional_payouts

Scheme = Callable[[Mapping[str, float], Mapping[str, int], int], dict[str, float]]


def schemes(budget: float) -> dict[str, Scheme]:
    return {
        "value-proportional": lambda v, n, seed: value_proportional_payouts(v, budget),
        "tiered 4": lambda v, n, seed: tiered_payouts(v, budget, tiers=4),
        "tiered 2": lambda v, n, seed: tiered_payouts(v, budget, tiers=2),
        "noised 0.5": lambda v, n, seed: noised_payouts(v, budget, relative_noise=0.5, seed=seed),
        "flat rate": lambda v, n, seed: flat_rate_payouts(n, budget),
    }


def corr(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Pearson correlation; an estimate that is constant (nothing learned) counts as 0."""
    if np.ptp(estimate) == 0:
        return 0.0
    return float(np.corrcoef(estimate, truth)[0, 1])


def cents(payouts: Mapping[str, float], names: list[str]) -> np.ndarray:
    return np.round(np.array([payouts[n] for n in names]), 2)


def one_hot_attack(scheme: Scheme, q: np.ndarray, seed: int) -> float:
    k = q.size
    names = [f"+{j}" for j in range(k)] + [f"-{j}" for j in range(k)]
    values = dict(zip(names, np.concatenate([q, -q]).tolist(), strict=True))
    p = cents(scheme(values, dict.fromkeys(names, 10), seed), names)
    return corr(p[:k] - p[k:], q)


def market_attacks(scheme: Scheme, q: np.ndarray, s: np.ndarray, counts: np.ndarray, seed: int) -> dict[str, float]:
    names = [f"c{i}" for i in range(len(s))]
    true = s @ q
    p = cents(
        scheme(dict(zip(names, true.tolist(), strict=True)), dict(zip(names, counts.tolist(), strict=True)), seed),
        names,
    )
    paid = p > 0
    ls = np.linalg.lstsq(s[paid], p[paid], rcond=None)[0] if paid.any() else np.zeros(q.size)
    sign = s.T @ np.where(paid, 1.0, -1.0)
    pos = true > 0
    return {
        "least squares": corr(ls, q),
        "sign only": corr(sign, q),
        "spearman all": float(spearmanr(p, true).statistic) if np.ptp(p) > 0 else 0.0,
        "spearman pos": float(spearmanr(p[pos], true[pos]).statistic) if np.ptp(p[pos]) > 0 else 0.0,
    }


def measure(scheme: Scheme, k: int, m: int, seeds: int) -> dict[str, float]:
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        q = rng.standard_normal(k)
        s = rng.standard_normal((m, k))
        counts = rng.integers(50, 500, size=m)
        row = market_attacks(scheme, q, s, counts, seed + 10_000)
        row["one-hot"] = one_hot_attack(scheme, q, seed + 20_000)
        rows.append(row)
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=32, help="query / sketch dimension")
    ap.add_argument("--corpora", type=int, default=192, help="ordinary corpora in the least-squares market")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=float, default=1000.0)
    args = ap.parse_args()
    start = time.perf_counter()
    all_schemes = schemes(args.budget)

    cols = ["one-hot", "least squares", "sign only", "spearman all", "spearman pos"]
    print(f"k = {args.k}, {args.corpora} corpora, payouts in cents of {args.budget:g}, mean over {args.seeds} seeds")
    print("correlation(recovered q, true q) per attack | Spearman(payout, true value)")
    print(f"{'scheme':<20}" + "".join(f"{c:>15}" for c in cols))
    for name, scheme in all_schemes.items():
        r = measure(scheme, args.k, args.corpora, args.seeds)
        print(f"{name:<20}" + "".join(f"{r[c]:>15.3f}" for c in cols))

    print(f"\nwhat protects: corpora per seller vs k ({args.corpora} corpora, {args.seeds} seeds)")
    ks = [32, 128, 512, 1024]
    print(f"{'scheme / attack':<34}" + "".join(f"{'k=' + str(k):>9}" for k in ks))
    for name in ["value-proportional", "tiered 4"]:
        by_k = {k: measure(all_schemes[name], k, args.corpora, args.seeds) for k in ks}
        for attack in ["one-hot", "least squares", "sign only"]:
            print(f"{name + ' / ' + attack:<34}" + "".join(f"{by_k[k][attack]:>9.3f}" for k in ks))
    print(f"\n({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
