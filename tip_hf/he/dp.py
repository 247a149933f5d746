"""Seller side: differential privacy by input perturbation, once per corpus version.

The seller clips every sketch to ``C``, sums per corpus, and adds ``N(0, (2 C m)^2 I)`` to
each sum *once* (``m`` the noise multiplier, ``2C`` the sensitivity when one example is
replaced). The noised sums are stored beside the store (``<store>/dp/``) with their seed and
reused by every later query, whatever the buyer sends. A new version (fresh noise) is drawn
only when the seller's data or DP settings change: another store (re-sketching, another
model or spec) or another policy. Versions of a corpus compose; :class:`SellerLedger`
accounts for them and can cap the total (``max_epsilon``).

Without ``clip_norm`` the clip is chosen privately: the exponential mechanism picks a power
of two near the ``clip_quantile`` of the store's sketch norms (utility = minus the rank
distance, sensitivity 1), costing ``clip_budget`` (pure DP, composed by addition).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..store import SketchStore
from .policy import PolicyError, ReleasePolicy, SellerLedger

__all__ = ["DPVersion", "noised_sums", "prepare_version", "private_clip_norm"]

DP_DIR = "dp"
STATE = "state.json"
CLIP_GRID = 2.0 ** np.arange(-32, 33)  # 65 powers of two: a data-independent grid


@dataclass(frozen=True)
class DPVersion:
    """One corpus version's DP parameters (public, stated in the result header) and its
    noise (seller-private: the noise itself never leaves the seller)."""

    version: str
    clip_norm: float
    noise_multiplier: float
    sigma: float  # absolute noise std on each coordinate of each corpus sum
    delta: float
    epsilon: float  # this version
    pure_epsilon: float  # the clip choice's share

    def public(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "sigma": self.sigma,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "neighbouring": "one example replaced",
        }


def private_clip_norm(norms: np.ndarray, quantile: float, epsilon: float, rng: np.random.Generator) -> float:
    """Exponential mechanism over ``CLIP_GRID``: ``P(c) ~ exp(-epsilon |#{norm <= c} - q n| / 2)``."""
    below = np.searchsorted(np.sort(norms), CLIP_GRID, side="right")
    utility = -np.abs(below - quantile * len(norms))
    logits = epsilon * utility / 2.0
    weights = np.exp(logits - logits.max())
    return float(rng.choice(CLIP_GRID, p=weights / weights.sum()))


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
    its noised sums live at (written by :func:`noised_sums`)."""
    folder = store.path / DP_DIR
    key = _settings_key(store, policy)
    state_path = folder / STATE
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("key") == key and (folder / state["sums"]).is_file():
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
        sigma=2.0 * clip * multiplier,
        delta=policy.delta,
        epsilon=policy.version_epsilon(),
        pure_epsilon=pure,
    )
    return version, folder / f"noised-{version.version}.safetensors"


def noised_sums(
    store: SketchStore,
    policy: ReleasePolicy,
    version: DPVersion,
    path: Path,
    clipped_sums: torch.Tensor,
    released: list[str],
) -> torch.Tensor:
    """The corpus sums plus this version's noise, drawn once and stored; later calls load them.
    A new version is recorded in the seller's ledger for the ``released`` corpora."""
    if path.is_file():
        sums = load_file(path)["sums"]
        if sums.shape == clipped_sums.shape:
            return sums
    seed = secrets.randbits(128)
    noise = np.random.default_rng(seed).normal(0.0, version.sigma, tuple(clipped_sums.shape))
    sums = clipped_sums.double() + torch.from_numpy(noise)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"sums": sums.contiguous()}, str(path))
    state = {
        "format": "tip_hf.dp_state/1",
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
    return sums
