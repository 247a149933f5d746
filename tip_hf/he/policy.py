"""Seller side: what the seller agrees to release, and the ledger that holds it to that.

Everything here is the seller's. Nothing in it is read from what the buyer sends: not the
flooding size, not the privacy budget, not who the buyer is. A buyer can mint any number of
keys and contexts, so budgets are keyed by a name the *seller* gives the buyer, and DP is
accounted per corpus, whoever asks (docs/threat-model.md).

Differential privacy is by input perturbation: the seller clips each example's sketch, sums
per corpus and adds Gaussian noise once per corpus version (:mod:`tip_hf.he.dp`). Every
answer is computed from that noised sum, so the guarantee does not depend on the number of
queries, contexts, keys, the query's norm or the model: it is all post-processing.
Epsilon comes from Google's ``dp-accounting`` (the analytic Gaussian mechanism, Balle & Wang
2018), not from a hand-derived formula.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dp_accounting

from ..errors import PolicyError

__all__ = ["DEFAULT_EPSILON", "DEFAULT_DELTA", "PolicyError", "ReleasePolicy", "SellerLedger", "gaussian_epsilon"]

DEFAULT_EPSILON = 2.0  # chosen from scripts/bench_privacy.py (README, docs/threat-model.md)
DEFAULT_DELTA = 1e-6
DEFAULT_FLOOD_BITS = 40  # statistical security of the noise flooding, OpenFHE's range is 30-40


@dataclass(frozen=True)
class ReleasePolicy:
    """What the seller agrees to release. The plain constructor restricts nothing beyond what
    the seller asks ``score_encrypted`` for; :meth:`conservative` (the default of
    ``tip score``) is the standing policy for a buyer the seller does not trust.

    Attributes:
        min_examples: corpora with fewer *distinct* examples are withheld (nothing about them
            is published, not even a commitment).
        allow_example_release: permit ``release="example"`` (one value per example; never
            together with DP).
        epsilon: turn on differential privacy at this (epsilon, ``delta``) per example and
            corpus version, for the neighbouring relation "one example replaced by another".
        noise_multiplier: instead of ``epsilon``: the Gaussian noise std in units of the
            sensitivity ``2 * clip_norm``; epsilon is then computed from it.
        delta: the DP delta.
        clip_norm: clip every sketch to this L2 norm before summing (bounds one example's
            weight in a corpus: outliers and DP sensitivity). With DP and no ``clip_norm``,
            the seller picks it privately (``clip_quantile`` of the store's sketch norms, by
            the exponential mechanism, counted in the epsilon).
        clip_quantile: the quantile of sketch norms the automatic clip aims at (0.75: on the
            healthcare market it kept the clipped ranking at Spearman 0.78-1.0 of the unclipped
            one, where the median gave 0.58-0.99 and noise grows with the clip).
        clip_epsilon: the part of ``epsilon`` spent on choosing the clip automatically
            (default ``min(0.5, epsilon / 4)``: the exponential mechanism over quarter powers of
            two lands within ~``30 / clip_epsilon`` examples of the target rank, so a smaller share
            picks nonsense clips on stores of a few hundred examples).
        flood_bits: statistical security ``s`` of the noise flooding on every returned slot
            (real and imaginary): the flooding std is ``2^s`` times a bound on every
            data-dependent evaluation error (:mod:`tip_hf.he.kernel`).
        max_queries: answer at most this many queries per buyer (needs ``ledger`` and a
            buyer name at scoring time).
        max_epsilon: refuse a new DP version of a corpus once the epsilon composed over its
            versions (one per store that released it) would exceed this (needs ``ledger``).
        ledger: the seller's JSON ledger file (:class:`SellerLedger`).
        allow_exact_sketches: score stores whose sketch is as long as the gradient
            (``proj_dim >= D``, an invertible map): a buyer-crafted model then reads corpus
            aggregates of raw gradient coordinates. Off unless the seller opts in.
        allow_packed_without_dp: score a packed query (the default query layout) without DP.
            Its rotations run the buyer's Galois keys over ciphertexts that depend on the
            seller's data, and a forged key (the seller cannot check one) reads raw sketch
            coordinates instead of one value per corpus (docs/threat-model.md). Under DP that is
            post-processing of the noised sums; without DP a column query (``tip query
            --layout columns``) needs no rotation. On in the plain constructor, which trusts the
            buyer (it restricts nothing, per-example values included); off in
            :meth:`conservative` and in ``tip score`` (``--allow-packed-without-dp``).
    """

    min_examples: int = 1
    allow_example_release: bool = True
    epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = DEFAULT_DELTA
    clip_norm: float | None = None
    clip_quantile: float = 0.75
    clip_epsilon: float | None = None
    flood_bits: int = DEFAULT_FLOOD_BITS
    max_queries: int | None = None
    max_epsilon: float | None = None
    ledger: str | None = None
    allow_exact_sketches: bool = False
    allow_packed_without_dp: bool = True

    @classmethod
    def conservative(cls, **overrides: Any) -> ReleasePolicy:
        """Aggregates of >= 10 distinct examples only, no per-example values, DP on at
        ``epsilon = DEFAULT_EPSILON`` with an automatic clip. ``epsilon=None`` turns DP off
        (and then packed queries are refused: ``allow_packed_without_dp``)."""
        settings: dict[str, Any] = {
            "min_examples": 10,
            "allow_example_release": False,
            "epsilon": DEFAULT_EPSILON,
            "allow_packed_without_dp": False,
        }
        if "noise_multiplier" in overrides:
            settings.pop("epsilon")
        return cls(**{**settings, **overrides})

    def __post_init__(self) -> None:
        def bad(what: str) -> ValueError:
            return ValueError(f"ReleasePolicy: {what}.")

        if not isinstance(self.min_examples, int) or self.min_examples < 1:
            raise bad(f"`min_examples` must be an integer >= 1, got {self.min_examples!r}")
        for name in ("epsilon", "noise_multiplier", "clip_norm", "max_epsilon"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise bad(f"`{name}` must be a positive finite number or None, got {value!r}")
        if self.epsilon is not None and self.noise_multiplier is not None:
            raise bad("give `epsilon` or `noise_multiplier`, not both")
        if not 0 < self.delta < 0.01:
            raise bad(f"`delta` must be in (0, 0.01), got {self.delta!r}")
        if not 0 < self.clip_quantile < 1:
            raise bad(f"`clip_quantile` must be in (0, 1), got {self.clip_quantile!r}")
        if self.auto_clip and not 0 < self.clip_budget < (self.epsilon or math.inf):
            raise bad(f"`clip_epsilon` must be in (0, epsilon), got {self.clip_epsilon!r}")
        if self.dp and self.allow_example_release:
            raise bad("per-example release cannot be differentially private; pass allow_example_release=False")
        if not isinstance(self.flood_bits, int) or not 30 <= self.flood_bits <= 64:
            raise bad(f"`flood_bits` (statistical security) must be an integer in 30..64, got {self.flood_bits!r}")
        if self.max_queries is not None and (not isinstance(self.max_queries, int) or self.max_queries < 1):
            raise bad(f"`max_queries` must be an integer >= 1, got {self.max_queries!r}")
        if (self.max_queries is not None or self.max_epsilon is not None) and self.ledger is None:
            raise bad("`max_queries` and `max_epsilon` need a `ledger` file to count in")

    @property
    def dp(self) -> bool:
        return self.epsilon is not None or self.noise_multiplier is not None

    @property
    def auto_clip(self) -> bool:
        return self.dp and self.clip_norm is None

    @property
    def clip_budget(self) -> float:
        """The epsilon spent on the automatic clip (0 with a fixed ``clip_norm``)."""
        if not self.auto_clip:
            return 0.0
        if self.clip_epsilon is not None:
            return float(self.clip_epsilon)
        return min(0.5, (self.epsilon or 2.0) / 4)

    def gaussian_noise_multiplier(self) -> float:
        """Noise std / sensitivity of the Gaussian step (the analytic Gaussian mechanism)."""
        if self.noise_multiplier is not None:
            return float(self.noise_multiplier)
        if self.epsilon is None:
            raise PolicyError("This policy has no differential privacy.")
        spend = self.epsilon - self.clip_budget
        return float(dp_accounting.get_sigma_gaussian(spend, self.delta))

    def version_epsilon(self) -> float:
        """(epsilon, delta)-DP of one corpus version: clip choice + Gaussian sum."""
        return self.clip_budget + gaussian_epsilon([self.gaussian_noise_multiplier()], self.delta)

    def public_summary(self) -> dict[str, Any]:
        """What the result header states about the policy (no paths, no buyer names)."""
        return {
            "min_examples": self.min_examples,
            "allow_example_release": self.allow_example_release,
            "dp": self.dp,
            "delta": self.delta if self.dp else None,
            "flood_bits": self.flood_bits,
            "max_queries": self.max_queries,
        }


def gaussian_epsilon(noise_multipliers: list[float], delta: float) -> float:
    """Epsilon of composing Gaussian mechanisms (sensitivity 1, these noise multipliers) at
    ``delta``: they compose exactly into one with ``(sum sigma_j^-2)^(-1/2)``."""
    if not noise_multipliers:
        return 0.0
    combined = sum(m**-2 for m in noise_multipliers) ** -0.5
    return float(dp_accounting.get_epsilon_gaussian(combined, delta))


class SellerLedger:
    """The seller's record of what it released: queries answered per buyer (by the name the
    seller gives it) and DP versions drawn per corpus. One JSON file, updated atomically
    under an exclusive lock, so concurrent ``tip score`` runs count correctly."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._read()
                yield state
                tmp = self.path.with_name(f".{self.path.name}.tmp")
                tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"format": "tip_hf.seller_ledger/2", "queries": {}, "dp_versions": {}}
        try:
            state = json.loads(self.path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise PolicyError(f"The seller ledger '{self.path}' is damaged ({e}); restore it from a backup.") from e
        if not isinstance(state, dict) or state.get("format") != "tip_hf.seller_ledger/2":
            raise PolicyError(
                f"'{self.path}' is not a tip_hf seller ledger of this release (format tip_hf.seller_ledger/2)."
            )
        return state

    def answered(self, buyer: str) -> int:
        return int(self._read()["queries"].get(buyer, 0))

    def check_query(self, buyer: str, max_queries: int | None) -> None:
        if max_queries is not None and self.answered(buyer) >= max_queries:
            raise PolicyError(f"Buyer {buyer!r} has spent its query budget ({max_queries} queries answered).")

    def charge_query(self, buyer: str, max_queries: int | None) -> int:
        """Count one answered query; refuses (and counts nothing) if the budget is spent."""
        with self._locked() as state:
            used = int(state["queries"].get(buyer, 0))
            if max_queries is not None and used >= max_queries:
                raise PolicyError(f"Buyer {buyer!r} has spent its query budget ({max_queries} queries answered).")
            state["queries"][buyer] = used + 1
            return used + 1

    def corpus_epsilon(self, corpus: str, delta: float, extra: tuple[float, float] | None = None) -> float:
        """Epsilon composed over every DP version of ``corpus`` recorded (plus ``extra`` =
        (noise multiplier, pure epsilon) of a version about to be drawn)."""
        versions = list(self._read()["dp_versions"].get(corpus, {}).values())
        if extra is not None:
            versions.append({"noise_multiplier": extra[0], "pure_epsilon": extra[1]})
        pure = sum(float(v["pure_epsilon"]) for v in versions)
        return pure + gaussian_epsilon([float(v["noise_multiplier"]) for v in versions], delta)

    def record_versions(self, corpora: list[str], version: str, noise_multiplier: float, pure_epsilon: float) -> None:
        with self._locked() as state:
            for corpus in corpora:
                state["dp_versions"].setdefault(corpus, {})[version] = {
                    "noise_multiplier": noise_multiplier,
                    "pure_epsilon": pure_epsilon,
                }
