"""Realized value: fine-tune a copy of the model with a :class:`Recipe` and measure the eval loss.

The ground truth every prediction is checked against (tests, ``scripts/bench_fidelity.py``,
the healthcare example), and a buyer's own spot check after a purchase: what the recipe
actually buys on this corpus. Works on any model that takes a dict of equal-length tensors
and returns ``.loss`` (the Trainer convention); only parameters with ``requires_grad`` train.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from .recipe import Recipe

__all__ = ["eval_loss", "fine_tune", "realized_drop"]

Batch = Mapping[str, torch.Tensor]


@torch.no_grad()
def eval_loss(model: nn.Module, data: Batch, batch_size: int = 1024) -> float:
    """Mean loss of ``model`` over ``data`` (eval mode), example-weighted."""
    model.eval()
    n = len(next(iter(data.values())))
    total = 0.0
    for lo in range(0, n, batch_size):
        part = {k: v[lo : lo + batch_size] for k, v in data.items()}
        total += float(model(**part).loss) * len(next(iter(part.values())))
    return total / max(n, 1)


def _concat(a: Batch | None, b: Batch) -> dict[str, torch.Tensor]:
    return dict(b) if a is None else {k: torch.cat([a[k], b[k]]) for k in b}


def fine_tune(model: nn.Module, data: Batch, recipe: Recipe, seed: int = 0) -> nn.Module:
    """A copy of ``model`` trained on ``data`` under ``recipe`` (shuffled mini-batches drawn
    per epoch with a seeded generator; ``sgd`` = plain SGD, ``adam`` = AdamW without weight
    decay). ``local`` has no finite fine-tune: refused."""
    if recipe.is_local:
        raise ValueError("The local recipe is an infinitesimal up-weighting: there is nothing to fine-tune.")
    tuned = copy.deepcopy(model)
    params = [p for p in tuned.parameters() if p.requires_grad]
    lr = float(recipe.learning_rate)  # type: ignore[arg-type]
    optimizer = (
        torch.optim.SGD(params, lr=lr)
        if recipe.optimizer == "sgd"
        else torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    )
    n = len(next(iter(data.values())))
    batch = min(recipe.batch_size or n, n)
    steps = recipe.total_steps(n - (recipe.joint_examples or 0))  # total_steps adds the joint rows back
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    at = 0
    tuned.train()
    for _ in range(steps):
        if at + batch > n:
            order, at = torch.randperm(n, generator=generator), 0
        rows = order[at : at + batch]
        at += batch
        optimizer.zero_grad()
        tuned(**{k: v[rows] for k, v in data.items()}).loss.backward()
        optimizer.step()
    tuned.eval()
    return tuned


def realized_drop(
    model: nn.Module, corpus: Batch, evaluation: Batch, recipe: Recipe, own: Batch | None = None, seed: int = 0
) -> float:
    """How much fine-tuning on ``corpus`` under ``recipe`` lowers the eval loss. With
    ``recipe.joint_examples`` (and the buyer's ``own`` data), the drop of training on
    own + corpus against training on own alone, same recipe and seed."""
    if recipe.joint_examples:
        if own is None or len(next(iter(own.values()))) != recipe.joint_examples:
            raise ValueError("A joint recipe needs the buyer's own data, `joint_examples` rows of it.")
        alone = fine_tune(model, own, Recipe(**{**recipe.to_dict(), "joint_examples": None}), seed)
        return eval_loss(alone, evaluation) - eval_loss(
            fine_tune(model, _concat(own, corpus), recipe, seed), evaluation
        )
    return eval_loss(model, evaluation) - eval_loss(fine_tune(model, corpus, recipe, seed), evaluation)
