"""Privacy vs ranking fidelity: what each epsilon costs, measured side by side in one run.

For epsilon in {0.5, 1, 2, 4, 8, none}, every answer goes through the real seller path
(``score_encrypted`` with ``ReleasePolicy.conservative(epsilon=...)``: automatic private clip,
DP noise once per corpus version, 40-bit flooding) and the buyer decrypts. Each setting is
repeated over fresh corpus versions (new noise). Reported:

- fidelity: Spearman of the decrypted per-corpus values vs the noiseless, unclipped ones;
- utility: Spearman of the decrypted values vs the *realized* eval-loss drop;

on two markets:

1. the demo market (``tip demo --quick``: MiniLM fine-tuned with TIPCallback, 8 corpora of
   real text, realized = fine-tuning on each corpus), also with its corpora cut to 12, 24
   and 48 examples to show how fidelity grows with corpus size;
2. the healthcare market (``examples/healthcare_market.py``: thyroid records split into
   hospitals of 100-300 patients, realized = eval-loss drop after 1 and 10 SGD steps).

    python scripts/bench_privacy.py            # ~6 min on 2 cores
    python scripts/bench_privacy.py --quick    # fewer repeats and replicates
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from tip_hf import SketchStore, plaintext_values  # noqa: E402
from tip_hf.he import BuyerKeys, ReleasePolicy, decrypt_scores, encrypt_query, score_encrypted  # noqa: E402
from tip_hf.he.params import COLUMNS, PACKED  # noqa: E402

EPSILONS: list[float | None] = [0.5, 1.0, 2.0, 4.0, 8.0, None]


def spearman(a: list[float], b: list[float]) -> float:
    return float(spearmanr(a, b)[0])


def released_means(store: SketchStore, query: np.ndarray, keys: BuyerKeys, epsilon: float | None) -> dict[str, float]:
    """One fresh corpus version (the stored noise is discarded first), scored and decrypted."""
    shutil.rmtree(store.path / "dp", ignore_errors=True)
    policy = ReleasePolicy.conservative(epsilon=epsilon, min_examples=10)
    layout = PACKED if policy.dp else COLUMNS  # without DP the seller scores only column queries
    query_message = encrypt_query(query, keys, layout=layout)
    result = score_encrypted(query_message, store, keys.public, policy=policy, progress=False)
    return {str(r["corpus"]): float(r["mean"]) for r in decrypt_scores(result, keys).rows if r["released"]}


def sweep(
    store: SketchStore, query: np.ndarray, keys: BuyerKeys, realized: dict[str, float] | None, repeats: int
) -> dict[str, dict[str, float]]:
    noiseless = {r["corpus"]: float(r["mean"]) for r in plaintext_values(query, store).rows}
    names = sorted(noiseless)
    out = {}
    for epsilon in EPSILONS:
        fidelity, utility = [], []
        for _ in range(repeats if epsilon is not None else 1):
            got = released_means(store, query, keys, epsilon)
            fidelity.append(spearman([got[n] for n in names], [noiseless[n] for n in names]))
            if realized is not None:
                utility.append(spearman([got[n] for n in names], [realized[n] for n in names]))
        out[str(epsilon)] = {
            "fidelity": float(np.mean(fidelity)),
            "utility": float(np.mean(utility)) if utility else float("nan"),
        }
    if realized is not None:
        out["noiseless"] = {
            "fidelity": 1.0,
            "utility": spearman([noiseless[n] for n in names], [realized[n] for n in names]),
        }
    return out


def upsampled(store: SketchStore, size: int, path: Path, seed: int = 0) -> SketchStore:
    """Every corpus resampled (with replacement) to ``size`` examples: a market of larger
    corpora drawn from the same populations, to show how fidelity grows with corpus size."""
    rng = np.random.default_rng(seed)
    sketches, labels = store.sketches(), np.array(store.corpus_labels(), dtype=object)
    keep = np.concatenate([rng.choice(np.flatnonzero(labels == name), size) for name in store.corpora])
    ids = [hashlib.sha256(b"%d" % i).digest() for i in range(len(keep))]  # resampled rows count as distinct
    return SketchStore.from_arrays(path, sketches[keep], list(labels[keep]), store.spec, store.fingerprint, ids=ids)


def demo_market(work: Path, keys: BuyerKeys, repeats: int, demo_dir: Path | None) -> dict[str, dict]:
    from tip_hf.bundle import load_bundle
    from tip_hf.demo import DemoConfig, run_demo

    if demo_dir is None:
        demo_dir = work / "demo"
        run_demo(DemoConfig(out_dir=str(demo_dir), quick=True, epsilon=None, progress=False))
    rows = json.loads((demo_dir / "results.json").read_text())["rows"]
    store = SketchStore(demo_dir / "seller" / "store")
    query = load_bundle(demo_dir / "buyer" / "bundle").query.double().numpy()
    realized = {r["corpus"]: r["realized_eval_loss_drop"] for r in rows}
    per_corpus = len(store) // len(store.corpora)
    tables = {f"demo, {per_corpus} per corpus (realized)": sweep(store, query, keys, realized, repeats)}
    for size in (300, 1000, 3000):
        tables[f"demo, resampled to {size} per corpus"] = sweep(
            upsampled(store, size, work / f"demo-{size}"), query, keys, None, repeats
        )
    return tables


def healthcare_market(work: Path, keys: BuyerKeys, replicates: int, repeats: int) -> dict[str, dict]:
    from datasets import Dataset
    from healthcare_market import MLPClassifier, hospitals, loss_of, tensors, train

    from tip_hf import ValuationSpec, sketch_dataset
    from tip_hf.dataset import mean_sketch

    groups, columns = hospitals()
    names = sorted(groups)
    rng = np.random.default_rng(0)
    spec = ValuationSpec(targets=["hidden", "classifier"], proj_dim=256, task="sequence_classification")
    tables: dict[str, list[dict]] = {"realized after 1 step": [], "realized after 10 steps": []}
    for rep in range(replicates):
        order = rng.permutation(names)
        buyer, evaluation, sellers = order[0], order[1], list(order[2:12])
        torch.manual_seed(rep)
        model = MLPClassifier(len(columns), 16, 2)
        bx, by = tensors(groups[buyer], columns)
        ex, ey = tensors(groups[evaluation], columns)
        train(model, bx, by, 300, 1e-2, adam=True)
        before = loss_of(model, ex, ey)
        eval_rows = Dataset.from_dict({"features": ex.tolist(), "labels": ey.tolist()})
        total, count, _ = mean_sketch(model, eval_rows, spec, feature_column="features", progress=False)
        query = (total / count).numpy()
        data = Dataset.from_dict(
            {
                "features": [r for s in sellers for r in groups[s][columns].to_numpy(np.float32).tolist()],
                "labels": [int(v) for s in sellers for v in groups[s].y],
                "corpus": [s for s in sellers for _ in range(len(groups[s]))],
            }
        )
        store = sketch_dataset(
            model, data, spec, work / f"health-{rep}", feature_column="features", corpus_column="corpus",
            batch_size=512, progress=False,
        )  # fmt: skip
        for size in (1000, 3000):
            big = upsampled(store, size, work / f"health-{rep}-{size}", seed=rep)
            tables.setdefault(f"resampled to {size} per hospital", []).append(sweep(big, query, keys, None, repeats))
        for steps, key in ((1, "realized after 1 step"), (10, "realized after 10 steps")):
            realized = {}
            for s in sellers:
                candidate = MLPClassifier(len(columns), 16, 2)
                candidate.load_state_dict(model.state_dict())
                sx, sy = tensors(groups[s], columns)
                train(candidate, sx, sy, steps, 0.05, adam=False)
                realized[s] = before - loss_of(candidate, ex, ey)
            tables[key].append(sweep(store, query, keys, realized, repeats))
    return {
        f"healthcare, {key} ({replicates} replicates)": {
            setting: {stat: float(np.nanmean([t[setting][stat] for t in runs])) for stat in ("fidelity", "utility")}
            for setting in runs[0]
        }
        for key, runs in tables.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_privacy.json"))
    parser.add_argument("--demo-dir", default=None, help="Reuse a `tip demo --no-dp` output instead of a quick demo.")
    args = parser.parse_args()
    repeats, replicates = (3, 3) if args.quick else (5, 8)
    torch.set_num_threads(2)
    start = time.perf_counter()
    keys = BuyerKeys.generate()
    with tempfile.TemporaryDirectory(prefix="tip-bench-privacy-") as tmp:
        work = Path(tmp)
        demo_dir = Path(args.demo_dir) if args.demo_dir else None
        tables = {**healthcare_market(work, keys, replicates, repeats), **demo_market(work, keys, repeats, demo_dir)}
    policy = ReleasePolicy.conservative()
    print(
        f"Spearman per setting, mean over {repeats} DP versions (fresh noise); default policy: conservative, "
        f"automatic private clip (quantile {policy.clip_quantile}, {policy.clip_budget} of epsilon), "
        f"delta {policy.delta}, min 10 examples\n"
    )
    header = f"{'market':<52}{'':<10}" + "".join(f"{'eps ' + str(e) if e else 'no DP':>9}" for e in EPSILONS)
    print(header)
    for market, table in tables.items():
        for stat in ("fidelity", "utility"):
            cells = "".join(f"{table[str(e)][stat]:>9.3f}" for e in EPSILONS)
            print(f"{market:<52}{stat:<10}{cells}")
        if "noiseless" in table:
            print(f"{'':<52}{'(noiseless, unclipped utility: ' + format(table['noiseless']['utility'], '.3f') + ')'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(tables, indent=1))
    print(f"\n{time.perf_counter() - start:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
