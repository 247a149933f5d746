"""The private clip: epsilon-DP exactly, and close to the target quantile (it used to pick
clips 10^4 times too large when every clip above the data tied)."""

from __future__ import annotations

import numpy as np
import pytest

from tip_hf.he.dp import CLIP_GRID, clip_distribution, private_clip_norm


@pytest.mark.parametrize("epsilon", [0.25, 0.5, 2.0])
def test_clip_choice_is_epsilon_dp_for_neighbouring_stores(epsilon: float) -> None:
    rng = np.random.default_rng(0)
    norms = rng.lognormal(0, 1, 200)
    base = np.log(clip_distribution(norms, 0.75, epsilon))
    for replacement in (0.0, 1e-30, 1.0, 1e30, float(norms.max()) * 3):
        for i in (0, 17, 199):
            neighbour = norms.copy()
            neighbour[i] = replacement
            ratio = np.abs(np.log(clip_distribution(neighbour, 0.75, epsilon)) - base)
            assert ratio.max() <= epsilon + 1e-9


@pytest.mark.parametrize(
    "norms",
    [
        np.random.default_rng(1).normal(1.1, 0.1, 384),  # the demo's: concentrated near 1
        np.random.default_rng(2).lognormal(5, 1, 300),  # spread over decades
        np.random.default_rng(3).normal(1e-3, 1e-4, 200),  # tiny
        np.random.default_rng(4).normal(1e3, 1e2, 200),  # large
    ],
)
def test_clip_lands_near_the_target_quantile(norms: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    target = np.quantile(norms, 0.75)
    picks = np.array([private_clip_norm(norms, 0.75, 0.5, rng) for _ in range(200)]) / target
    assert np.mean((picks >= 0.5) & (picks <= 6.0)) >= 0.9, np.quantile(picks, [0.05, 0.5, 0.95])
    assert set(np.unique(picks * target)) <= set(CLIP_GRID)
