"""Seller side: the recipe-aware predictor, computed from the seller's own sketches.

First-order influence values a corpus by ``q . sum_i s_i``: additive, so 8 copies of a corpus
are worth 8 times as much, and a corpus with large gradients is worth a lot however far a
real fine-tune would move. Under a :class:`~tip_hf.recipe.Recipe` (learning rate ``eta``,
``m`` steps) the buyer's weights move, on the model linearised around them with the corpus's
own curvature ``F_C``, by

    delta_m = eta sum_{j<m} (I - eta F_C)^j g_C = [I - (I - eta F_C)^m] F_C^+ g_C

(gradient descent on the quadratic model, and the expectation of mini-batch SGD on it), and
the value is ``q . delta_m``: the same single encrypted inner product as first-order
influence, with ``delta_m`` in place of the corpus sum. Three choices, each measured on
markets with retraining (``scripts/bench_fidelity.py``, README):

- **Curvature along g_C only.** ``F_C`` enters through one Rayleigh quotient
  ``lambda = u^T F_C u`` on ``u = g_C / |g_C|``, so ``delta_m = phi_m(lambda) g_C``. It needs
  two aggregates per corpus, each of bounded sensitivity -- the sum and
  ``sum_i w_i (s_i . u)^2`` -- so under DP the seller noises both once per corpus version
  and every recipe's answer is post-processing (:mod:`tip_hf.he.dp`).
  The full spectrum of ``F_C`` did no better on our markets and cannot be released under DP.
- **Gauss-Newton weights.** The empirical Fisher ``s_i s_i^T`` treats every example as if it
  had the same loss left to lose; a misfit example then looks very curved and a corpus
  saturates at once. The Gauss-Newton curvature of cross-entropy along an example's own
  gradient is ``s_i s_i^T p/(1-p)`` with ``p = exp(-loss_i)`` the probability of its label
  (exact for two classes), so the store keeps each example's loss.
- **A trust radius.** The linearised eval loss stops predicting once the weights move far;
  the buyer's recipe carries ``trust_radius = L_eval / (2 |g_eval|)`` (how far along its own
  gradient the linear eval loss would lose half of it) and ``delta`` is shortened to that length.
  Far fine-tunes are then ranked by direction, as gradient cosine does.

Adam moves every coordinate by about ``lr`` whatever the gradient's scale: on the coordinates
that carry the corpus's mean gradient its steps are ``lr sign(g_C)``, however noisy the
examples are elsewhere, so it is modelled as gradient descent with ``eta = lr / sqrt(v)``,
``v = |g_C|^2 / D`` (a move of ``lr sqrt(D)`` per step along ``g_C``). Counting the batch
noise in ``v`` as well (``+ (mean |s_i|^2 - |g_C|^2) / b``, i.e. averaging it over every
coordinate) ranked the demo's corpora worse (Spearman 0.75 vs 0.84 over 5 seeds) and the
other markets the same. Joint training (the buyer's
``N`` own examples plus the corpus) weights the corpus's gradient and curvature by
``n / (n + N)``; the buyer's own curvature can go into its query (``q``'s preconditioner).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .recipe import Recipe

__all__ = ["CorpusMoments", "corpus_scale", "curvature_weights", "predicted_direction"]

MAX_WEIGHT = 1e6  # p/(1-p) at p = 1 - 1e-6: a fitted example's curvature weight is bounded


def curvature_weights(losses: torch.Tensor | np.ndarray | None, count: int) -> np.ndarray:
    """Gauss-Newton weight of each example along its own gradient, ``p / (1 - p)`` with
    ``p = exp(-loss)``; all ones (the empirical Fisher) for a store without losses."""
    if losses is None:
        return np.ones(count)
    p = np.exp(-np.maximum(np.asarray(losses, dtype=np.float64), 0.0))
    return np.minimum(p / np.maximum(1.0 - p, 1.0 / MAX_WEIGHT), MAX_WEIGHT)


@dataclass(frozen=True)
class CorpusMoments:
    """What the predictor needs of one corpus (clipped sketches ``s_i``, weights ``w_i``):
    ``count`` n, ``total`` sum_i s_i and ``along`` sum_i w_i (s_i . u)^2 with ``u`` the unit
    direction of ``total``."""

    count: int
    total: np.ndarray
    along: float

    @classmethod
    def of(cls, sketches: np.ndarray, weights: np.ndarray | None = None, clip: float | None = None) -> CorpusMoments:
        """Exact moments of a corpus's (already clipped) sketches ``[n, k]``; ``clip`` bounds
        each curvature term by ``clip^2``, as the seller does."""
        s = np.asarray(sketches, dtype=np.float64)
        total = s.sum(0)
        return cls(len(s), total, float(along_terms(s @ unit(total), weights, clip).sum()))


def unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else np.zeros_like(v)


def along_terms(projections: np.ndarray, weights: np.ndarray | None, clip: float | None) -> np.ndarray:
    """``w_i (s_i . u)^2`` from the projections ``s_i . u``, each at most ``clip^2`` when
    clipping (one example's sensitivity)."""
    terms = projections**2 * (1.0 if weights is None else weights)
    return np.minimum(terms, clip**2) if clip is not None else terms


def _filter(curvature: float, eta: float, steps: int) -> float:
    """``phi_m(lambda) = (1 - (1 - eta lambda)^m) / lambda`` (``eta m`` at 0); a step past the
    curvature (``eta lambda >= 1``) is taken as converged, ``1 / lambda``: real training
    settles there where the quadratic model would oscillate."""
    x = eta * max(curvature, 0.0)
    if x < 1e-12:
        return eta * steps
    if x >= 1.0:
        return 1.0 / curvature
    return -math.expm1(steps * math.log1p(-x)) / curvature


def corpus_scale(
    moments: CorpusMoments, recipe: Recipe, input_dim: int, noise: tuple[float, float] | None = None
) -> float:
    """``c`` with ``delta = c * total`` (the corpus sum): 1 for the ``local`` recipe.

    ``noise``: the DP noise stds ``(on each sum coordinate, on each scalar moment)`` when the
    moments are noised. The curvature then counts only above twice its noise, so a corpus
    whose curvature the noise hides is not saturated at random (post-processing of public
    numbers). Lengths use the released (noised) sum itself: with a trust radius the released
    ``delta`` is never longer than it, so ``|value| <= |q| * trust_radius`` under DP too."""
    if recipe.is_local:
        return 1.0
    moment_sigma = (noise or (0.0, 0.0))[1]
    n = max(moments.count, 1)
    total_sq = float(moments.total @ moments.total)
    if total_sq == 0.0:  # no gradient: nothing moves, whatever the scale
        return 1.0
    mean_sq = total_sq / n**2
    w = moments.count / (moments.count + recipe.joint_examples) if recipe.joint_examples else 1.0
    lr = float(recipe.learning_rate)  # type: ignore[arg-type]
    eta = lr
    if recipe.optimizer == "adam":
        v = w**2 * mean_sq / max(input_dim, 1)  # the mean gradient's coordinates; see the module docstring
        eta = lr / math.sqrt(max(v, 1e-300))
    rayleigh = max(moments.along - 2.0 * moment_sigma, 0.0) / n
    scale = w * _filter(w * rayleigh, eta, recipe.total_steps(moments.count)) / n
    length = scale * math.sqrt(total_sq)
    if recipe.trust_radius is not None and length > recipe.trust_radius:
        scale *= recipe.trust_radius / length
    return scale


def predicted_direction(
    sketches: np.ndarray,
    recipe: Recipe,
    input_dim: int,
    losses: np.ndarray | torch.Tensor | None = None,
    clip: float | None = None,
) -> np.ndarray:
    """``delta`` of one corpus's sketches ``[n, k]`` under ``recipe`` (plaintext reference of
    what the seller releases): ``corpus_scale * sum``."""
    s = np.asarray(sketches, dtype=np.float64)
    moments = CorpusMoments.of(s, curvature_weights(losses, len(s)), clip)
    return corpus_scale(moments, recipe, input_dim) * moments.total
