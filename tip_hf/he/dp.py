"""Seller side: differential privacy by input perturbation, once per corpus version.

The seller clips every sketch to ``C``, sums per corpus, and adds ``N(0, (2 C m_v)^2 I)`` to
each sum *once* (``2C`` the sensitivity when one example is replaced). The recipe-aware
predictor (:mod:`tip_hf.predictor`) needs one scalar more per corpus, the curvature along the
(noised) sum, a sum of terms in ``[0, C^2]``: it gets ``N(0, (C^2 m_s)^2)`` once, in the same
version. The two Gaussian mechanisms compose exactly into one with multiplier ``m``
(``m^-2 = m_v^-2 + m_s^-2``); the scalar takes ``MOMENT_SHARE`` of it, so the policy's
epsilon is what both cost together. The noised
moments are stored beside the store (``<store>/dp/``) with their seed and reused by every
later query and recipe, whatever the buyer sends. A new version (fresh noise) is drawn
only when the seller's data or DP settings change: another store (re-sketching, another
model or spec) or another policy. Versions of a corpus compose; :class:`SellerLedger`
accounts for them and can cap the total (``max_epsilon``).

Without ``clip_norm`` the clip is chosen privately: the exponential mechanism picks a point
of a data-independent grid (quarter powers of two) near the ``clip_quantile`` of the store's
sketch norms, costing ``clip_budget`` (pure DP, composed by addition). Utility: minus the
rank distance to the target, minus the number of norms below ``clip / 8`` (a clip far above
the data wastes noise); sensitivity 2. Without the second term every clip above the largest
norm tied, and on 384 sketch norms near 1 the mechanism picked 2^14 (10^4 times the noise the
data needed); with it, clips land within 1-2x of the target on stores of a few hundred
examples (``tests/test_dp_clip.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..store import SketchStore
from .policy import PolicyError, ReleasePolicy, SellerLedger

__all__ = ["DPVersion", "NoisedMoments", "clip_distribution", "noised_moments", "prepare_version", "private_clip_norm"]

DP_DIR = "dp"
STATE = "state.json"
CLIP_GRID = 2.0 ** (np.arange(-128, 129) / 4)  # 257 quarter powers of two: a data-independent grid
CLIP_WASTE = 8.0  # norms below clip / CLIP_WASTE count against a clip
MOMENT_SHARE = 0.1  # of the Gaussian precision m^-2 spent on the scalar moment


@dataclass(frozen=True)
class DPVersion:
    """One corpus version's DP parameters (public, stated in the result header) and its
    noise (seller-private: the noise itself never leaves the seller)."""

    version: str
    clip_norm: float
    noise_multiplier: float
    sigma: float  # absolute noise std on each coordinate of each corpus sum
    moment_sigma: float  # absolute noise std on each corpus's scalar moment (curvature along the sum)
    delta: float
    epsilon: float  # this version
    pure_epsilon: float  # the clip choice's share

    def public(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "sigma": self.sigma,
            "moment_sigma": self.moment_sigma,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "neighbouring": "one example replaced",
        }


def clip_distribution(norms: np.ndarray, quantile: float, epsilon: float) -> np.ndarray:
    """The exponential mechanism's probabilities over ``CLIP_GRID``: ``P(c) ~ exp(epsilon u(c) / 4)``
    with ``u(c) = -|#{norm <= c} - q n| - #{norm <= c / 8}`` (each count moves by at most 1 when
    one example is replaced: sensitivity 2, so ``epsilon``-DP)."""
    ordered = np.sort(norms)
    below = np.searchsorted(ordered, CLIP_GRID, side="right")
    wasted = np.searchsorted(ordered, CLIP_GRID / CLIP_WASTE, side="right")
    utility = -np.abs(below - quantile * len(norms)) - wasted
    logits = epsilon * utility / 4.0
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def private_clip_norm(norms: np.ndarray, quantile: float, epsilon: float, rng: np.random.Generator) -> float:
    """A clip drawn from :func:`clip_distribution`."""
    return float(rng.choice(CLIP_GRID, p=clip_distribution(norms, quantile, epsilon)))


def _settings_key(store: SketchStore, policy: ReleasePolicy) -> str:
    content = {
        "fingerprint": store.fingerprint,
        "corpora": store.corpora,
        "shards": [entry.get("sha256") for entry in store.manifest["shards"]],
        "epsilon": policy.epsilon,
        "noise_multiplier": policy.noise_multiplier,
        "min_examples": policy.min_examples,  # which corpora the version was recorded as released for
        "delta": policy.delta,
        "clip_norm": policy.clip_norm,
        "clip_quantile": policy.clip_quantile if policy.auto_clip else None,
        "clip_epsilon": policy.clip_budget,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _norms(store: SketchStore) -> np.ndarray:
    return torch.cat([shard.sketches.double().norm(dim=1) for shard in store.shards()]).numpy()


def prepare_version(store: SketchStore, policy: ReleasePolicy, corpora: list[str]) -> tuple[DPVersion, Path]:
    """This store's current DP version under ``policy``: loaded if one exists for exactly this
    data and these settings, else drawn (clip, then a seed), checked against the ledger's
    ``max_epsilon`` for ``corpora`` and recorded there. Returns the version and the path
    its noised sums live at (written by :func:`noised_moments`)."""
    folder = store.path / DP_DIR
    key = _settings_key(store, policy)
    state_path = folder / STATE
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        current = state.get("format") == "tip_hf.dp_state/2"  # a /1 version has no moments: redrawn
        if current and state.get("key") == key and (folder / state["sums"]).is_file():
            return DPVersion(**state["version"]), folder / state["sums"]
    rng = np.random.default_rng(secrets.randbits(128))
    multiplier = policy.gaussian_noise_multiplier()
    pure = policy.clip_budget
    clip = policy.clip_norm or private_clip_norm(_norms(store), policy.clip_quantile, pure, rng)
    ledger = SellerLedger(policy.ledger) if policy.ledger else None
    if ledger is not None and policy.max_epsilon is not None:
        for corpus in corpora:
            total = ledger.corpus_epsilon(corpus, policy.delta, extra=(multiplier, pure))
            if total > policy.max_epsilon:
                raise PolicyError(
                    f"A new DP version of corpus {corpus!r} would bring its epsilon to {total:.3g} "
                    f"(> max_epsilon {policy.max_epsilon}): this corpus has been released too often."
                )
    version = DPVersion(
        version=secrets.token_hex(16),
        clip_norm=clip,
        noise_multiplier=multiplier,
        sigma=2.0 * clip * multiplier / math.sqrt(1.0 - MOMENT_SHARE),
        moment_sigma=clip**2 * multiplier / math.sqrt(MOMENT_SHARE),
        delta=policy.delta,
        epsilon=policy.version_epsilon(),
        pure_epsilon=pure,
    )
    return version, folder / f"noised-{version.version}.safetensors"


@dataclass(frozen=True)
class NoisedMoments:
    """One version's noised corpus moments: ``sums [C, k]`` and ``along [C]``."""

    sums: torch.Tensor
    along: np.ndarray


def noised_moments(
    store: SketchStore,
    policy: ReleasePolicy,
    version: DPVersion,
    path: Path,
    clipped_sums: torch.Tensor,
    along_of: Callable[[np.ndarray], np.ndarray],
    released: list[str],
) -> NoisedMoments:
    """The corpus moments plus this version's noise, drawn once and stored; later calls load
    them. ``along_of(directions [C, k])`` computes the curvature terms along the *noised*
    sums' directions (a second pass over the store, once per version). A new version is
    recorded in the seller's ledger for the ``released`` corpora."""
    if path.is_file():
        saved = load_file(path)
        if saved.get("sums") is not None and saved["sums"].shape == clipped_sums.shape and "along" in saved:
            return NoisedMoments(saved["sums"], saved["along"].numpy())
    seed = secrets.randbits(128)
    rng = np.random.default_rng(seed)
    sums = clipped_sums.double() + torch.from_numpy(rng.normal(0.0, version.sigma, tuple(clipped_sums.shape)))
    norms = sums.norm(dim=1, keepdim=True).clamp(min=1e-300)
    along = along_of((sums / norms).numpy()) + rng.normal(0.0, version.moment_sigma, len(sums))
    noised = NoisedMoments(sums, along)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "sums": sums.contiguous(),
        "along": torch.from_numpy(along.copy()),
    }
    save_file(tensors, str(path))
    state = {
        "format": "tip_hf.dp_state/2",
        "key": _settings_key(store, policy),
        "version": version.__dict__,
        "sums": path.name,
        "seed": f"{seed:032x}",
        "corpora": store.corpora,
    }
    (path.parent / STATE).write_text(json.dumps(state, indent=1))
    for old in path.parent.glob("noised-*.safetensors"):
        if old != path:
            old.unlink()
    if policy.ledger:
        SellerLedger(policy.ledger).record_versions(
            released, version.version, version.noise_multiplier, version.pure_epsilon
        )
    return noised
