"""The buyer's bundle, with or without a Trainer: the curvature ``F`` from training sketches,
the eval gradient ``g`` from the eval set, and the query ``q`` solved from them.

:class:`TIPCallback` collects ``F`` on the Trainer's own passes and calls :func:`solve_bundle`
at the end; :func:`build_bundle` does the same for a buyer that trains some other way (or
not at all), sketching its training set with :class:`GradientSketcher`.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .bundle import Bundle, write_bundle
from .curvature import CurvatureAccumulator, solve_query
from .examples import ExampleFormat
from .sketcher import GradientSketcher, mean_sketch, model_examples, sketch_dataset_batches
from .spec import BoundSpec, ValuationSpec

__all__ = ["build_bundle", "solve_bundle"]


def solve_bundle(
    bound: BoundSpec, curvature: CurvatureAccumulator | None, eval_dataset: Any, **eval_options: Any
) -> Bundle:
    """Sketch ``eval_dataset`` with the bound model's current weights, solve
    ``q = (F + lambda I)^-1 g`` (or ``q = g``: identity preconditioner or no curvature), and
    hash the weights once into the bundle's fingerprint. ``eval_options``: :func:`mean_sketch`'s."""
    spec = bound.spec
    fingerprint = bound.fingerprint()
    total, count, eval_loss = mean_sketch(bound.model, eval_dataset, bound, **eval_options)
    g = total / count
    matrix = curvature.matrix if curvature is not None and curvature.count else None
    solution = solve_query(matrix, g, spec.damping, spec.preconditioner)
    summary = {
        "n_examples": curvature.count if curvature is not None else 0,
        "n_eval_examples": count,
        "eval_loss": eval_loss,
        "proj_dim": spec.proj_dim,
        "preconditioner": spec.preconditioner,
        "damping_relative": spec.damping,
        "damping_lambda": solution.damping,  # as used: raised against a rank-deficient F (solve_query)
        "curvature_rank": solution.rank,
        "eigenvalue_min": solution.eigenvalues[0],
        "eigenvalue_max": solution.eigenvalues[1],
        "query_norm": float(solution.query.norm()),
        "eval_gradient_norm": float(g.norm()),
    }
    return Bundle(spec, fingerprint, matrix, solution.query, g, summary)


def build_bundle(
    model: nn.Module,
    spec: ValuationSpec,
    eval_dataset: Any,
    *,
    train_dataset: Any = None,
    tokenizer: Any = None,
    batch_size: int = 16,
    max_length: int | None = None,
    feature_column: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Bundle:
    """A buyer's bundle without a Trainer: ``F`` from ``train_dataset``'s sketches under the
    model's current weights (needed by the ``"fisher"`` preconditioner; the ``"identity"``
    one uses ``q = g``), ``g`` from ``eval_dataset``; written to ``output_dir`` if given
    (what ``tip query`` reads)."""
    sketcher = GradientSketcher(model, spec)
    options = {"tokenizer": tokenizer, "batch_size": batch_size, "max_length": max_length}
    curvature = None
    if train_dataset is not None:
        curvature = CurvatureAccumulator(spec.proj_dim)
        fmt = ExampleFormat(max_length=max_length, feature_column=feature_column)
        examples = model_examples(sketcher.model, spec, train_dataset, tokenizer, fmt)
        for sketches, _ in sketch_dataset_batches(
            sketcher, examples, train_dataset, batch_size, "sketching training set", progress
        ):
            curvature.add(sketches)
    bundle = solve_bundle(
        sketcher.bound, curvature, eval_dataset, **options, feature_column=feature_column, progress=progress
    )
    if output_dir is not None:
        write_bundle(output_dir, bundle)
    return bundle
