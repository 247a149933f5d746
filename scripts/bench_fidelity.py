"""Fidelity: does a value predict the eval-loss drop the buyer realizes under its own recipe?

One run, side by side: Spearman of predicted vs realized value (actual retraining of the
buyer's model on each corpus) for the recipe-aware predictor (:mod:`tip_hf.predictor`),
first-order influence (sum and mean over the corpus) and gradient cosine, on two markets x
seven recipes; plus the seller-side cost of the predictor per corpus at k = 1024 and 4096.

Markets (``scripts/fidelity_markets.py``):
- **controlled**: Gaussian classes, the buyer's own data from a shifted source; corpora of clean
  target data (40..400), source data, exact duplicates (25 x 8), near-duplicates, 40% label
  noise, wrong labels, inputs x4 (large gradients), one class, half-noisy (12 corpora).
- **healthcare**: real thyroid records split into hospitals (examples/healthcare_market.py).
The demo market (MiniLM, 8 corpora) is measured by ``tip demo`` itself over seeds (README).

    python scripts/bench_fidelity.py            # 4 controlled draws + 6 healthcare replicates, ~6 min
    python scripts/bench_fidelity.py --quick    # 2 + 2, ~2 min
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fidelity_markets as fm

from tip_hf import SketchStore, ValuationSpec
from tip_hf.he import BuyerKeys, ReleasePolicy, encrypt_query, score_encrypted
from tip_hf.recipe import Recipe

RECIPES = {
    "local: 1 full-batch step lr 1e-3": Recipe(learning_rate=1e-3, steps=1),
    "SGD 5 steps lr 0.05 bs 32": Recipe(learning_rate=0.05, steps=5, batch_size=32),
    "SGD 5 steps lr 0.5 bs 32": Recipe(learning_rate=0.5, steps=5, batch_size=32),
    "SGD 1 epoch lr 0.05 bs 16": Recipe(learning_rate=0.05, epochs=1, batch_size=16),
    "SGD 1 epoch lr 0.5 bs 16": Recipe(learning_rate=0.5, epochs=1, batch_size=16),
    "AdamW 1 epoch lr 0.01 bs 16": Recipe(learning_rate=1e-2, epochs=1, batch_size=16, optimizer="adam"),
    "joint: own + corpus, 1 epoch lr 0.1 bs 16": Recipe(learning_rate=0.1, epochs=1, batch_size=16, joint_examples=1),
}


def _for_market(recipe: Recipe, market: fm.Market) -> Recipe:
    """A joint recipe trains on the market's own data: its size."""
    if recipe.joint_examples is None:
        return recipe
    return Recipe(**{**recipe.to_dict(), "joint_examples": len(market.own["labels"])})


def fidelity(markets: dict[str, list[fm.Market]]) -> dict:
    out: dict = {}
    for market_name, draws in markets.items():
        out[market_name] = {}
        for recipe_name, template in RECIPES.items():
            rhos: dict[str, list[float]] = {m: [] for m in fm.METHODS}
            for market in draws:
                recipe = _for_market(template, market)
                predicted = fm.predictions(market, recipe)
                realized = fm.realized(market, recipe)
                corpora = list(realized)
                for method in fm.METHODS:
                    values = [predicted[method][c] for c in corpora]
                    rhos[method].append(float(spearmanr(values, [realized[c] for c in corpora])[0]))
            out[market_name][recipe_name] = {m: float(np.nanmean(v)) for m, v in rhos.items()}
            row = "  ".join(f"{m} {v:.2f}" for m, v in out[market_name][recipe_name].items())
            print(f"{market_name:<11} {recipe_name:<42} {row}", flush=True)
    return out


def seller_cost(proj_dims: tuple[int, ...], corpora: int = 10, per_corpus: int = 1000) -> dict:
    """Seconds per corpus of scoring (no DP) for the local recipe and for a recipe (one more
    pass over the store for the curvature along each corpus's sum, then the scalar moments)."""
    keys = BuyerKeys.generate()
    out = {}
    for k in proj_dims:
        rng = np.random.default_rng(k)
        n = corpora * per_corpus
        sketches = torch.from_numpy(rng.normal(size=(n, k)).astype(np.float32))
        labels = [f"c{i // per_corpus}" for i in range(n)]
        losses = torch.from_numpy(rng.uniform(0.05, 2.0, n).astype(np.float32))
        spec = ValuationSpec(targets=["synthetic"], proj_dim=k)
        with tempfile.TemporaryDirectory() as tmp:
            store = SketchStore.from_arrays(Path(tmp) / "s", sketches, labels, spec, "f" * 64, losses=losses)
            q = rng.normal(size=k)
            times = {}
            for name, recipe in (("local", Recipe.local()), ("recipe", Recipe(learning_rate=0.05, epochs=1))):
                query = encrypt_query(q, keys, spec, fingerprint=store.fingerprint, recipe=recipe)
                score_encrypted(query, store, keys.public, policy=ReleasePolicy(), progress=False)  # warm
                began = time.perf_counter()
                score_encrypted(query, store, keys.public, policy=ReleasePolicy(), progress=False)
                times[name] = (time.perf_counter() - began) / corpora
        out[k] = {**times, "predictor": times["recipe"] - times["local"], "examples_per_corpus": per_corpus}
        print(
            f"k={k}: scoring {times['local']:.3f} s/corpus (local), {times['recipe']:.3f} s/corpus (recipe): the "
            f"predictor adds {out[k]['predictor']:.3f} s per corpus of {per_corpus} examples",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    draws = 2 if args.quick else 4
    began = time.perf_counter()
    markets = {
        "controlled": [fm.controlled_market(seed) for seed in range(draws)],
        "healthcare": [fm.healthcare_market(rep) for rep in range(2 if args.quick else 6)],
    }
    result = {"spearman": fidelity(markets), "seller_seconds_per_corpus": seller_cost((1024, 4096))}
    result["seconds"] = time.perf_counter() - began
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_fidelity.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {args.out / 'bench_fidelity.json'} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
