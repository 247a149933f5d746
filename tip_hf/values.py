"""Plaintext values ``v(z) = q . s_z``: the reference the encrypted scorer must reproduce."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .predictor import CorpusMoments, corpus_scale, curvature_weights
from .recipe import Recipe
from .store import SketchStore

__all__ = ["CorpusRows", "Values", "clip_rows", "plaintext_values"]


def clip_rows(sketches: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Scale every row to L2 norm <= ``clip`` (no-op without a clip): the seller's clipping,
    which the buyer repeats when it recomputes delivered values."""
    if clip is None:
        return sketches
    norms = sketches.norm(dim=1, keepdim=True).clamp(min=1e-300)
    return sketches * (clip / norms).clamp(max=1.0)


class CorpusRows:
    """Lookup by corpus name over ``self.rows`` (dicts with a ``"corpus"`` key)."""

    rows: list[dict[str, object]]

    def __getitem__(self, corpus: str) -> dict[str, object]:
        """The row of one corpus by name."""
        for row in self.rows:
            if row["corpus"] == corpus:
                return row
        raise KeyError(f"No corpus {corpus!r}; corpora: {[r['corpus'] for r in self.rows]}.")

    def as_dict(self) -> dict[str, dict[str, object]]:
        """``{corpus: row without its name}``."""
        return {str(r["corpus"]): {k: v for k, v in r.items() if k != "corpus"} for r in self.rows}


@dataclass
class Values(CorpusRows):
    """``per_example``: ``[N]`` float64 in store order, with ``corpus_labels`` (each example's
    corpus name); ``rows``: one row per corpus (``corpus``, ``count``, ``distinct``, ``sum``,
    ``mean``), ranked by ``sum``, highest first.
    Values are additive (copies of an example count as often as they occur, as in influence
    functions); ``distinct`` counts different example ids, so padding is visible."""

    per_example: np.ndarray
    corpus_labels: list[str]
    rows: list[dict[str, object]]

    @property
    def corpora(self) -> list[dict[str, object]]:
        """Deprecated: :attr:`rows` (``corpora`` means corpus names everywhere else)."""
        warnings.warn("Values.corpora is now Values.rows", DeprecationWarning, stacklevel=2)
        return self.rows

    @property
    def corpus(self) -> list[str]:
        """Deprecated: :attr:`corpus_labels`."""
        warnings.warn("Values.corpus is now Values.corpus_labels", DeprecationWarning, stacklevel=2)
        return self.corpus_labels


def plaintext_values(
    query: np.ndarray | torch.Tensor,
    store: SketchStore,
    *,
    clip_norm: float | None = None,
    recipe: Recipe | dict[str, Any] | None = None,
) -> Values:
    """Per-example and per-corpus values of ``query`` (``[k]``) over a store, in float64,
    streaming shard by shard; exactly what the encrypted per-corpus release computes (before
    its DP noise), with every sketch clipped to ``clip_norm`` if given, as the seller did.

    ``recipe``: per corpus, ``sum`` is then the predicted eval-loss drop under that fine-tuning
    recipe, ``scale * <q, sum_i s_i>`` (:mod:`tip_hf.predictor`); per-example values stay
    first-order. Each row carries its ``scale`` (1 for the local recipe)."""
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
    q = torch.as_tensor(np.asarray(query), dtype=torch.float64).reshape(-1)
    if q.numel() != store.proj_dim:
        raise ValueError(f"The query has {q.numel()} entries; the store's sketches have {store.proj_dim}.")
    names = store.corpora
    parts, codes, ids, kept, losses = [], [], [], [], []
    for shard in store.shards():
        rows = clip_rows(shard.sketches.double(), clip_norm)
        parts.append((rows @ q).numpy())
        codes.append(shard.corpus_codes.numpy())
        ids.extend(example.tobytes() for example in shard.ids.numpy())
        if not recipe.is_local:
            kept.append(rows.numpy())
            losses.append(None if shard.losses is None else shard.losses.numpy())
    values = np.concatenate(parts) if parts else np.zeros(0)
    code = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int32)
    distinct = [set() for _ in names]
    for c, example in zip(code.tolist(), ids, strict=True):
        distinct[c].add(example)
    scales = np.ones(len(names))
    if not recipe.is_local and kept:
        sketches = np.concatenate(kept)
        weights = np.concatenate([curvature_weights(loss, len(part)) for loss, part in zip(losses, kept, strict=True)])
        for i in range(len(names)):
            mine = code == i
            if mine.any():
                moments = CorpusMoments.of(sketches[mine], weights[mine], clip_norm)
                scales[i] = corpus_scale(moments, recipe, store.gradient_dim)
    rows = []
    for i, name in enumerate(names):
        mine = values[code == i] * scales[i]
        rows.append(
            {
                "corpus": name,
                "count": len(mine),
                "distinct": len(distinct[i]),
                "sum": float(mine.sum()),
                "mean": float(mine.mean()) if len(mine) else 0.0,
                "scale": float(scales[i]),
            }
        )
    rows.sort(key=lambda r: -float(r["sum"]))  # type: ignore[arg-type]
    return Values(values, [names[c] for c in code.tolist()], rows)
