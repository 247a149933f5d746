"""Digits market (paper section 4.1): which seller helps a buyer that cannot read a "3"?

The buyer trains an MLP on real MNIST digits 1 and 2 only (the real ``transformers.Trainer``
with :class:`tip_hf.TIPCallback` accumulating the sketched Fisher); its evaluation set is
real digit-3 images. Three sellers offer disjoint real images of digits 1, 2 and 3. Each
seller sketches its images with the buyer's published model and scores them under the
buyer's CKKS key; the buyer decrypts one value per seller. Realized check: fine-tune the
buyer's model on each seller alone and measure its loss and accuracy on the digit-3 set.

    python examples/digits_market.py            # full (about a minute on 2 CPU cores)
    python examples/digits_market.py --quick    # CI subset
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from assets import mnist_digits
from datasets import Dataset
from market import (
    MLPClassifier,
    fidelity_plot,
    parser,
    pearson,
    pyplot,
    save_figure,
    score_privately,
    seed_everything,
    training_args,
    write_json,
)
from transformers import Trainer

from tip_hf import TIPCallback, ValuationSpec, load_bundle, sketch_dataset

NAME = "digits_market"
PAPER = {"ranking": "seller 3 first", "encrypted_vs_plaintext_pearson": 1.0}
REALIZED_EPOCHS = 5


def trainer(model: torch.nn.Module, data: Dataset, out: Path, epochs: float, lr: float, seed: int, **kw) -> Trainer:
    args = training_args(out, 32, lr, seed, num_train_epochs=epochs)
    return Trainer(model=model, args=args, train_dataset=data, **kw)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(pixel_values=x).logits
    return float(torch.nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def rows(x: np.ndarray, y: np.ndarray, corpus: str | None = None) -> Dataset:
    data = {"pixel_values": x.tolist(), "labels": y.tolist()}
    if corpus is not None:
        data["corpus"] = [corpus] * len(y)
    return Dataset.from_dict(data)


def run(quick: bool, out: Path, seed: int = 0) -> dict:
    seed_everything(seed)
    x, y = mnist_digits()
    rng = np.random.default_rng(seed)
    by_digit = {d: rng.permutation(np.flatnonzero(y == d)) for d in (1, 2, 3)}
    n_train, n_sell, n_eval = (100, 60, 60) if quick else (250, 150, 150)
    train_idx = np.concatenate([by_digit[d][:n_train] for d in (1, 2)])
    sellers = {f"seller-digit-{d}": by_digit[d][n_train if d != 3 else 0 :][:n_sell] for d in (1, 2, 3)}
    eval_idx = by_digit[3][n_sell : n_sell + n_eval]
    assert not set(eval_idx) & set(sellers["seller-digit-3"])
    ex, ey = torch.tensor(x[eval_idx]), torch.tensor(y[eval_idx])
    seconds: dict[str, float] = {}

    # ---- buyer: Trainer + TIPCallback on digits 1 and 2 -----------------------------------
    clock = time.perf_counter()
    model = MLPClassifier(784, 64, 10)
    spec = ValuationSpec(
        targets=["hidden", "classifier"],
        proj_dim=256 if quick else 1024,
        seed=seed,
        task="sequence_classification",
        preconditioner="fisher",
    )
    work = Path(tempfile.mkdtemp(prefix="tip-digits-"))
    callback = TIPCallback(
        spec, eval_dataset=rows(x[eval_idx], y[eval_idx]), output_dir=work / "bundle", feature_column="pixel_values"
    )
    trainer(model, rows(x[train_idx], y[train_idx]), work / "buyer", 3, 1e-3, seed, callbacks=[callback]).train()
    bundle = load_bundle(work / "bundle")
    before = evaluate(model, ex, ey)
    seconds["buyer_training_and_bundle"] = time.perf_counter() - clock

    # ---- seller: sketch its three corpora with the published model -----------------------
    clock = time.perf_counter()
    from datasets import concatenate_datasets

    data = concatenate_datasets([rows(x[idx], y[idx], name) for name, idx in sellers.items()])
    store = sketch_dataset(
        model,
        data,
        spec,
        work / "store",
        feature_column="pixel_values",
        corpus_column="corpus",
        batch_size=64,
        fingerprint=bundle.fingerprint,
        progress=False,
    )
    seconds["seller_sketching"] = time.perf_counter() - clock
    scored = score_privately(bundle.query, store)

    # ---- realized: fine-tune on each seller alone -------------------------------------
    clock = time.perf_counter()
    realized = {}
    for name, idx in sellers.items():
        candidate = copy.deepcopy(model)
        trainer(candidate, rows(x[idx], y[idx]), work / "realized", REALIZED_EPOCHS, 1e-3, seed).train()
        loss, acc = evaluate(candidate, ex, ey)
        realized[name] = {"eval_loss_drop": before[0] - loss, "eval_accuracy_gain": acc - before[1]}
    seconds["realized_fine_tuning"] = time.perf_counter() - clock

    table = []
    for name in sorted(scored.corpus_enc, key=lambda n: -scored.corpus_enc[n]["sum"]):
        table.append(
            {
                "seller": name,
                "encrypted_value_sum": scored.corpus_enc[name]["sum"],
                "plaintext_value_sum": scored.corpus_plain[name]["sum"],
                **realized[name],
            }
        )
    ranking = [r["seller"] for r in table]
    realized_ranking = sorted(realized, key=lambda n: -realized[n]["eval_loss_drop"])
    fid = scored.fidelity()
    result = {
        "experiment": "Digits market (paper 4.1): buyer MLP on MNIST {1,2}, eval on digit 3",
        "quick": quick,
        "settings": {
            "buyer_train": len(train_idx),
            "per_seller": n_sell,
            "eval": n_eval,
            "mlp": "784-64-10",
            "proj_dim": spec.proj_dim,
            "preconditioner": spec.preconditioner,
            "damping": spec.damping,
            "realized": f"{REALIZED_EPOCHS} epochs AdamW lr 1e-3, batch 32, on the seller's images alone",
        },
        "buyer_eval_before": {"loss": before[0], "accuracy": before[1]},
        "table": table,
        "value_ranking": ranking,
        "realized_ranking": realized_ranking,
        "seller_3_first": ranking[0] == "seller-digit-3",
        "ranking_matches_realized": ranking == realized_ranking,
        "fidelity": fid,
        "pearson_value_vs_realized": pearson(
            [r["encrypted_value_sum"] for r in table], [r["eval_loss_drop"] for r in table]
        ),
        "seconds": {**seconds, **scored.seconds},
        "paper": PAPER,
    }
    figures = [fidelity_plot(scored, "Digits: encrypted vs plaintext", out / f"{NAME}_fidelity.png")]
    figures.append(_bars(table, out / f"{NAME}_values.png"))
    result["figures"] = [p.name for p in figures]
    write_json(NAME, result, out)
    return result


def _bars(table: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 2.8))
    names = [r["seller"] for r in table]
    a.barh(names, [r["encrypted_value_sum"] for r in table], color="tab:blue")
    a.set_title("decrypted value (sum)", fontsize=9)
    a.invert_yaxis()
    b.barh(names, [r["eval_loss_drop"] for r in table], color="tab:green")
    b.set_title("realized drop of the digit-3 eval loss", fontsize=9)
    b.invert_yaxis()
    return save_figure(fig, path)


def main() -> None:
    args = parser(__doc__).parse_args()
    result = run(args.quick, args.out, args.seed)
    for r in result["table"]:
        print(
            f"{r['seller']:<16} value {r['encrypted_value_sum']:>11.4g}   realized loss drop "
            f"{r['eval_loss_drop']:>8.4f}   accuracy gain {r['eval_accuracy_gain']:>+.3f}"
        )
    print(f"encrypted vs plaintext Pearson {result['fidelity']['pearson_examples']:.9f}")


if __name__ == "__main__":
    main()
