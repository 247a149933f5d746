"""Markets with ground truth for the fidelity benchmark and tests: predicted vs realized value.

A market is a buyer model (already fitted on the buyer's own data), the buyer's eval set, its
own data (for joint recipes) and the seller's corpora. :func:`predictions` values every corpus
by each method from sketches; :func:`realized` fine-tunes a copy per corpus with the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from tip_hf import GradientSketcher, ValuationSpec
from tip_hf.predictor import predicted_direction
from tip_hf.realized import realized_drop
from tip_hf.recipe import Recipe

METHODS = ["recipe_aware", "first_order_sum", "first_order_mean", "gradient_cosine"]


class MLP(nn.Module):
    """Tabular classifier with the Trainer's calling convention."""

    def __init__(self, d_in: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(d_in, hidden)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.classifier(torch.tanh(self.hidden(features)))
        return SequenceClassifierOutput(loss=None if labels is None else F.cross_entropy(logits, labels), logits=logits)


Batch = dict[str, torch.Tensor]


@dataclass
class Market:
    model: nn.Module
    own: Batch
    evaluation: Batch
    corpora: dict[str, Batch]
    targets: list[str]


def fit_buyer(model: nn.Module, own: Batch, steps: int) -> None:
    """The buyer's own fit: full-batch Adam, lr 1e-2, then eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**own).loss.backward()
        optimizer.step()
    model.eval()


def _rows(x: np.ndarray, y: np.ndarray) -> Batch:
    return {"features": torch.tensor(x, dtype=torch.float32), "labels": torch.tensor(y, dtype=torch.int64)}


def controlled_market(seed: int, d: int = 12, classes: int = 3, own_size: int = 120) -> Market:
    """Gaussian classes; the buyer's own data is drawn from a shifted source distribution and the
    eval set from the target one. Corpora: clean target data of four sizes, source data,
    exact duplicates, near-duplicates, 40% label noise, wrong labels, inputs scaled x4 (large
    gradients), a single class, and half-noisy data."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.3, (classes, d))
    shift = rng.normal(0, 0.9, (classes, d))

    def draw(n: int, target: bool = True, only: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, n) if only is None else np.full(n, only)
        x = means[y] + (shift[y] if target else 0) + rng.normal(0, 1, (n, d))
        return x, y

    def noisy(y: np.ndarray, fraction: float) -> np.ndarray:
        y = y.copy()
        hit = rng.random(len(y)) < fraction
        y[hit] = rng.integers(0, classes, hit.sum())
        return y

    torch.manual_seed(seed)
    model = MLP(d, 16, classes)
    own = _rows(*draw(own_size, target=False))
    fit_buyer(model, own, steps=200)
    corpora: dict[str, Batch] = {}
    for n in (40, 100, 200, 400):
        corpora[f"clean_{n}"] = _rows(*draw(n))
    corpora["source_200"] = _rows(*draw(200, target=False))
    x, y = draw(25)
    corpora["duplicates_25x8"] = _rows(np.repeat(x, 8, 0), np.repeat(y, 8))
    corpora["near_duplicates_25x8"] = _rows(np.repeat(x, 8, 0) + rng.normal(0, 0.05, (200, d)), np.repeat(y, 8))
    x, y = draw(200)
    corpora["label_noise_40"] = _rows(x, noisy(y, 0.4))
    x, y = draw(150)
    corpora["wrong_labels"] = _rows(x, (y + 1) % classes)
    x, y = draw(150)
    corpora["inputs_x4"] = _rows(4 * x, y)
    corpora["one_class"] = _rows(*draw(150, only=0))
    x, y = draw(200)
    corpora["half_noisy"] = _rows(x, np.where(np.arange(200) < 100, y, rng.integers(0, classes, 200)))
    return Market(model, own, _rows(*draw(400)), corpora, ["hidden", "classifier"])


def healthcare_market(replicate: int, seed: int = 0, max_sellers: int = 10) -> Market:
    """The healthcare example's market (real thyroid records split into hospitals by referring
    clinic x age band): a buyer hospital, another as eval, up to 10 seller hospitals."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from healthcare_market import hospitals, tensors

    groups, columns = hospitals(seed=seed)
    order = np.random.default_rng(seed * 1000 + replicate).permutation(sorted(groups))
    torch.manual_seed(seed * 1000 + replicate)

    def rows(name: str) -> Batch:
        x, y = tensors(groups[name], columns)
        return {"features": x, "labels": y}

    model = MLP(len(columns), 16, 2)
    own = rows(order[0])
    fit_buyer(model, own, steps=300)
    sellers = {str(name): rows(name) for name in order[2 : 2 + max_sellers]}
    return Market(model, own, rows(order[1]), sellers, ["hidden", "classifier"])


def predictions(market: Market, recipe: Recipe, proj_dim: int = 256, seed: int = 0) -> dict[str, dict[str, float]]:
    """Every method's value of every corpus (identity preconditioner: ``q`` = mean eval sketch;
    the recipe's trust radius from the eval loss and gradient, as ``tip query`` sets it)."""
    spec = ValuationSpec(targets=market.targets, proj_dim=proj_dim, seed=seed, task="sequence_classification")
    sketcher = GradientSketcher(market.model, spec)
    dim = sketcher.projection.input_dim
    q = sketcher.sketch(market.evaluation).double().mean(0).numpy()
    recipe = recipe.with_trust_radius(float(sketcher.last_losses.double().mean()), float(np.linalg.norm(q)))
    out: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    for name, corpus in market.corpora.items():
        s = sketcher.sketch(corpus).double().numpy()
        mean = s.mean(0)
        out["recipe_aware"][name] = float(q @ predicted_direction(s, recipe, dim, sketcher.last_losses))
        out["first_order_sum"][name] = float(q @ s.sum(0))
        out["first_order_mean"][name] = float(q @ mean)
        out["gradient_cosine"][name] = float(q @ mean / (np.linalg.norm(q) * np.linalg.norm(mean) + 1e-300))
    return out


def realized(market: Market, recipe: Recipe, seed: int = 0) -> dict[str, float]:
    """Eval-loss drop of fine-tuning on each corpus under ``recipe`` (joint: with own data)."""
    own = market.own if recipe.joint_examples else None
    return {
        name: realized_drop(market.model, corpus, market.evaluation, recipe, own=own, seed=seed)
        for name, corpus in market.corpora.items()
    }
