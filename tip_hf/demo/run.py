"""``tip demo``: the whole marketplace on an embedded default, on a CPU, in a few minutes.

Buyer: the real pretrained all-MiniLM-L6-v2 (BERT) fine-tuned with ``transformers.Trainer``
+ :class:`TIPCallback` on real movie-review sentiment sentences; its bundle, CKKS keys and
encrypted query go to the seller as files. Seller: eight corpora of visibly different
quality (in-domain, near- and off-domain reviews, noisy and flipped labels, duplicates, an
unrelated task), sketched with the buyer's published model and scored under the buyer's
key. Buyer: decrypts a ranked table. Then the realized check: fine-tune the buyer's model
on each corpus with the real Trainer and measure how much its eval loss actually drops.
Writes ``report.md``, ``valuation.png`` and ``results.json`` under the output directory.

:func:`run_demo` leaves the process as it found it (random-number generators, log levels,
progress bars; see :func:`~tip_hf.demo.training.process_state_restored`).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .assets import minilm_path
from .corpora import as_dataset, buyer_split, demo_corpora, tokenised
from .training import TARGETS, build_trainer, eval_loss, freeze_all_but_targets, process_state_restored

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

logger = logging.getLogger(__name__)

STEPS = 6  # the headings run_demo prints: [1/6] ... [6/6]


def _took(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def _plural(n: float, word: str) -> str:
    return f"{n:g} {word}" + ("" if n == 1 else "s")


@dataclass
class DemoConfig:
    out_dir: str = "tip_demo"
    quick: bool = False
    seed: int = 0
    proj_dim: int = 1024
    preconditioner: str = "identity"  # the recipe predictor's values are eval-loss drops (bench_fidelity)
    targets: tuple[str, ...] = tuple(TARGETS)
    per_corpus: int | None = None  # default 96 (quick: 48)
    n_train: int | None = None  # buyer's training set, default 256 (quick: 128)
    n_eval: int | None = None  # buyer's eval set, default 192 (quick: 96)
    max_length: int = 64
    buyer_epochs: int = 2
    buyer_lr: float = 5e-5
    buyer_trains: str = "all"  # "all" weights, or only the "targets"
    # the realized check fine-tunes the way the buyer trains (AdamW, all weights), gently --
    # influence is a local prediction -- and averages over `realized_repeats` training seeds
    realized_epochs: int = 1
    realized_lr: float = 2e-5
    realized_repeats: int = 2
    realized_optim: str = "adamw_torch"
    realized_trains: str = "all"
    epsilon: float | None = 2.0  # the seller's DP (tip score's default); None: no DP
    progress: bool = True  # step headings with timings (stdout) and progress bars; False: silent

    def sizes(self) -> tuple[int, int, int]:
        quick = (48, 128, 96) if self.quick else (96, 256, 192)
        return (self.per_corpus or quick[0], self.n_train or quick[1], self.n_eval or quick[2])


@dataclass
class DemoResult:
    rows: list[dict[str, Any]]
    spearman: float
    pearson: float
    eval_loss_before: float
    spearman_noiseless: float = float("nan")  # the same ranking without DP noise or clipping
    spearman_first_order: float = float("nan")  # first-order influence (mean) from the same release
    spearman_first_order_noiseless: float = float("nan")  # first-order influence (mean) without DP or clipping
    dp: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    out_dir: str = ""


def run_demo(config: DemoConfig) -> DemoResult:
    """Run the marketplace end to end (see the module docstring); the process's global state
    (random-number generators, log levels, progress bars) is restored afterwards."""
    with process_state_restored():
        return _run(config)


def _run(config: DemoConfig) -> DemoResult:
    from scipy.stats import pearsonr, spearmanr
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..bundle import load_bundle
    from ..callback import TIPCallback
    from ..dataset import sketch_dataset
    from ..he import BuyerKeys, ReleasePolicy, decrypt_scores, encrypt_query, score_encrypted
    from ..recipe import Recipe
    from ..report import write_demo_report
    from ..spec import ValuationSpec
    from ..values import plaintext_values

    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    start = clock

    def say(text: str, end: str = "\n") -> None:  # the demo's own progress lines (stdout), unless progress=False
        if config.progress:
            print(text, end=end, flush=True)

    def heading(number: int, text: str) -> None:
        say(f"[{number}/{STEPS}] {text} ...")

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now
        say(f"      done in {_took(seconds[name])}")

    out = Path(config.out_dir)
    for part in ("buyer", "seller", "exchange"):
        shutil.rmtree(out / part, ignore_errors=True)
    buyer, seller, exchange = out / "buyer", out / "seller", out / "exchange"
    per_corpus, n_train, n_eval = config.sizes()
    torch.manual_seed(config.seed)  # the classifier head's initialisation (the global state is restored after)

    # ---- buyer: data, model, fine-tuning with the callback ------------------------------
    heading(
        1,
        f"buyer: fine-tuning MiniLM on {n_train} movie reviews ({_plural(config.buyer_epochs, 'epoch')}) "
        f"with TIPCallback; query from {n_eval} eval reviews",
    )
    train_rows, eval_rows = buyer_split(n_train, n_eval, config.seed)
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    if config.buyer_trains == "targets":
        freeze_all_but_targets(model, list(config.targets))
    spec = ValuationSpec(
        targets=list(config.targets),
        proj_dim=config.proj_dim,
        seed=config.seed,
        task="sequence_classification",
        preconditioner=config.preconditioner,  # type: ignore[arg-type]
    )
    callback = TIPCallback(
        spec,
        eval_dataset=tokenised(eval_rows, tokenizer, config.max_length),
        output_dir=buyer / "bundle",
        tokenizer=tokenizer,
    )
    trainer = build_trainer(
        model,
        tokenizer,
        tokenised(train_rows, tokenizer, config.max_length),
        buyer / "trainer",
        config.buyer_epochs,
        config.buyer_lr,
        config.seed,
        progress=config.progress,
        callbacks=[callback],
    )
    trainer.train()
    model.eval()
    model.save_pretrained(exchange / "model")  # the buyer publishes its model and spec
    tokenizer.save_pretrained(exchange / "model")
    shutil.copy(buyer / "bundle" / "spec.json", exchange / "spec.json")
    eval_before = eval_loss(model, tokenizer, eval_rows, config.max_length)
    lap("buyer fine-tuning + bundle")

    heading(2, f"buyer: CKKS keys and the encrypted query (k = {config.proj_dim})")
    keys = BuyerKeys.generate()
    keys.save(buyer / "keys")
    shutil.copy(buyer / "keys" / "public_context.tip", exchange / "public_context.tip")
    bundle = load_bundle(buyer / "bundle")
    # the buyer declares how it will fine-tune on a bought corpus: the realized check's recipe
    recipe = Recipe(
        learning_rate=config.realized_lr,
        epochs=config.realized_epochs,
        batch_size=16,
        optimizer="adam" if "adam" in config.realized_optim else "sgd",
    ).with_trust_radius(bundle.summary["eval_loss"], bundle.summary["eval_gradient_norm"])
    # without DP the seller scores only column queries (ReleasePolicy.allow_packed_without_dp)
    layout = "packed/1" if config.epsilon is not None else "complex-pairs/3"
    encrypt_query(bundle.query, keys, bundle.spec, fingerprint=bundle.fingerprint, recipe=recipe, layout=layout).save(
        exchange / "query.tip"
    )
    lap("keys + encrypted query")

    # ---- seller: sketch with the published model, score under the buyer's key ------------
    corpora = demo_corpora(per_corpus, config.seed, {r.text for r in train_rows + eval_rows})
    heading(3, f"seller: sketching {len(corpora)} corpora x {per_corpus} examples with the buyer's published model")
    seller_model = AutoModelForSequenceClassification.from_pretrained(exchange / "model").eval()
    seller_tok = AutoTokenizer.from_pretrained(exchange / "model")
    head = json.loads((exchange / "spec.json").read_text())
    seller_spec = ValuationSpec.from_dict(head["spec"])
    if seller_spec.fingerprint(seller_model) != head["fingerprint"]:
        raise RuntimeError("The published model does not match the buyer's spec fingerprint.")
    from datasets import concatenate_datasets

    data = concatenate_datasets([as_dataset(rows, name) for name, rows in corpora.items()])
    store = sketch_dataset(
        seller_model,
        data,
        seller_spec,
        seller / "store",
        tokenizer=seller_tok,
        corpus_column="corpus",
        max_length=config.max_length,
        batch_size=32,
        overwrite=True,
        progress=config.progress,
    )
    lap("seller sketching")
    privacy = "no DP" if config.epsilon is None else f"DP epsilon {config.epsilon:g}"
    heading(4, f"seller: scoring every corpus under the buyer's CKKS key ({privacy})")
    score_encrypted(
        exchange / "query.tip",
        store,
        exchange / "public_context.tip",
        policy=ReleasePolicy.conservative(epsilon=config.epsilon),
        progress=config.progress,
    ).save(exchange / "scores.tip")
    lap("encrypted scoring")

    # ---- buyer: decrypt -----------------------------------------------------------------
    heading(5, "buyer: decrypting and ranking the values")
    table = decrypt_scores(exchange / "scores.tip", BuyerKeys.load(buyer / "keys"))
    plain = plaintext_values(bundle.query, store, recipe=recipe)  # noiseless, unclipped: what DP and clipping cost
    released = plaintext_values(bundle.query, store, clip_norm=table.clip_norm, recipe=recipe)  # before DP noise
    first_order = plaintext_values(bundle.query, store)  # the paper's value, for comparison
    lap("decryption")

    # ---- realized check: fine-tune on each corpus, measure the eval-loss drop ------------
    heading(
        6,
        f"realized check: fine-tuning the buyer's model on each corpus alone "
        f"({len(corpora)} corpora x {_plural(config.realized_repeats, 'seed')})",
    )
    realized: dict[str, float] = {}
    for i, name in enumerate(corpora, 1):
        say(f"      realized check {i}/{len(corpora)}: {name} ...", end="")
        began = time.perf_counter()
        for repeat in range(config.realized_repeats):
            candidate = copy.deepcopy(model)
            if config.realized_trains == "targets":
                freeze_all_but_targets(candidate, list(config.targets))
            build_trainer(
                candidate,
                tokenizer,
                tokenised(corpora[name], tokenizer, config.max_length),
                buyer / "realized",
                config.realized_epochs,
                config.realized_lr,
                config.seed + repeat,
                config.realized_optim,
            ).train()
            drop = eval_before - eval_loss(candidate, tokenizer, eval_rows, config.max_length)
            realized[name] = realized.get(name, 0.0) + drop / config.realized_repeats
        say(f" drop {realized[name]:+.4f} nats ({_took(time.perf_counter() - began)})")
    lap("realized check")

    rows_out = []
    for rank, row in enumerate(table.rows, 1):
        name = str(row["corpus"])
        if not row["released"]:
            logger.warning("Corpus %r was withheld by the seller's release policy.", name)
            continue
        rows_out.append(
            {
                "rank": rank,
                "corpus": name,
                "count": int(row["count"]),  # type: ignore[arg-type]
                "distinct": int(row["distinct"]),  # type: ignore[arg-type]
                "value": float(row["sum"]),  # type: ignore[arg-type]  # predicted drop under the recipe
                "value_mean": float(row["mean"]),  # type: ignore[arg-type]
                "plaintext_value": float(released[name]["sum"]),  # type: ignore[arg-type]
                "plaintext_mean": float(released[name]["mean"]),  # type: ignore[arg-type]
                "noiseless_value": float(plain[name]["sum"]),  # type: ignore[arg-type]
                "noise_std": float(row["noise_std"]),  # type: ignore[arg-type]
                "scale": float(row["scale"]),  # type: ignore[arg-type]
                "plaintext_scale": float(released[name]["scale"]),  # type: ignore[arg-type]
                "noise_std_mean": float(row["noise_std"]) / int(row["count"]),  # type: ignore[arg-type]
                "first_order_mean": float(first_order[name]["mean"]),  # type: ignore[arg-type]
                # the release's first-order part: value / scale (the noised clipped sum), per example
                "released_first_order_mean": float(row["sum"]) / float(row["scale"]) / int(row["count"]),  # type: ignore[arg-type]
                "realized_eval_loss_drop": realized[name],
            }
        )
    by_realized = sorted(rows_out, key=lambda r: -r["realized_eval_loss_drop"])
    for i, r in enumerate(by_realized, 1):
        r["realized_rank"] = i
    values = [r["value"] for r in rows_out]
    drops = [r["realized_eval_loss_drop"] for r in rows_out]
    result = DemoResult(
        rows=rows_out,
        spearman=float(spearmanr(values, drops)[0]),
        spearman_noiseless=float(spearmanr([r["noiseless_value"] for r in rows_out], drops)[0]),
        spearman_first_order=float(spearmanr([r["released_first_order_mean"] for r in rows_out], drops)[0]),
        spearman_first_order_noiseless=float(spearmanr([r["first_order_mean"] for r in rows_out], drops)[0]),
        dp=table.dp,
        pearson=float(pearsonr(values, drops)[0]),
        eval_loss_before=eval_before,
        seconds={**seconds, "total": round(time.perf_counter() - start, 2)},
        out_dir=str(out),
    )
    (out / "results.json").write_text(
        json.dumps({"config": asdict(config), **asdict(result), "bundle_summary": bundle.summary}, indent=2) + "\n"
    )
    write_demo_report(out, result, config, bundle.summary)
    return result
