"""The `tip` CLI end to end: buyer and seller in separate directories, exchanging only files,
each step a real subprocess; decrypted values equal the plaintext reference. Then bad input:
every mistake exits non-zero with one line naming the problem."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers import accelerate_command, make_bert, minilm_dir, tiny_training_args
from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

from tip_hf import SketchStore, TIPCallback, ValuationSpec, load_bundle, plaintext_values

pytestmark = pytest.mark.slow  # a trained buyer and real subprocesses per step (~2.5 min); the fast CLI
# error checks run in-process in test_bad_input.py

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "film", "plot", "cast", "music", "the", "was", "very"]


def tip(*args: object, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "tip_hf.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if check and out.returncode != 0:
        raise AssertionError(f"tip {args[0]} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def error_line(out: subprocess.CompletedProcess[str], command: str) -> str:
    """The one error line; no traceback."""
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith(f"tip {command}: error:")]
    assert len(lines) == 1, out.stderr
    return lines[0]


def seller_sketch(market, dataset: object, *extra: object, cwd: Path, spec: Path | None = None, check: bool = False):
    """`tip sketch` with the seller's model and (by default) the buyer's spec."""
    seller = market["seller"]
    return tip(
        "sketch", "--model", seller / "model", "--spec", spec or seller / "spec.json", "--dataset", dataset, *extra,
        cwd=cwd, check=check,
    )  # fmt: skip


def sentences(n: int, seed: int, corpus: str | None = None, flip: bool = False) -> list[dict]:
    gen = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        words = gen.choice(WORDS, size=int(gen.integers(3, 9)))
        label = int(any(w in ("good", "great", "fine") for w in words))
        rows.append({"text": " ".join(words), "label": label ^ int(flip), **({"corpus": corpus} if corpus else {})})
    return rows


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """A buyer that trained with the callback (Python API) and a seller with three corpora."""
    root = tmp_path_factory.mktemp("market")
    buyer, seller = root / "buyer", root / "seller"
    buyer.mkdir()
    seller.mkdir()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = make_bert(vocab=tokenizer.vocab_size, labels=2)
    model.config.max_position_embeddings = 64
    spec = ValuationSpec(
        targets=["classifier", "bert.encoder.layer.1.output.dense"],
        proj_dim=64,
        task="sequence_classification",
        preconditioner="fisher",
    )

    def tokenise(rows: list[dict]) -> Dataset:
        return Dataset.from_list(rows).map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])

    callback = TIPCallback(
        spec, eval_dataset=tokenise(sentences(12, 1)), output_dir=buyer / "bundle", tokenizer=tokenizer
    )
    args = tiny_training_args(root / "trainer", per_device_train_batch_size=8)
    Trainer(
        model=model,
        args=args,
        train_dataset=tokenise(sentences(32, 0)),
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[callback],
    ).train()
    model.save_pretrained(buyer / "model")
    tokenizer.save_pretrained(buyer / "model")

    # what the buyer sends: the model, spec.json, the public context and the encrypted query
    tip("keygen", "keys", cwd=buyer)
    tip("query", "--bundle", "bundle", "--keys", "keys", "-o", "query.tip", cwd=buyer)
    shutil.copytree(buyer / "model", seller / "model")
    for name in ("bundle/spec.json", "keys/public_context.tip", "query.tip"):
        shutil.copy(buyer / name, seller / Path(name).name)

    rows = sentences(24, 2, "clean") + sentences(20, 3, "flipped", flip=True) + sentences(16, 4, "more")
    with open(seller / "corpora.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    tip(
        "sketch",
        "--model",
        "model",
        "--spec",
        "spec.json",
        "--dataset",
        "corpora.jsonl",
        "--corpus-column",
        "corpus",
        "-o",
        "store",
        cwd=seller,
    )
    tip(
        "score",
        "--store",
        "store",
        "--query",
        "query.tip",
        "--context",
        "public_context.tip",
        "--min-examples",
        "2",
        "--buyer",
        "acme",
        "--ledger",
        "ledger.json",
        "-o",
        "scores.tip",
        cwd=seller,
    )
    shutil.copy(seller / "scores.tip", buyer / "scores.tip")  # what the seller sends back
    revealed = tip(
        "reveal", "--scores", "scores.tip", "--keys", "keys", "--budget", "100", "-o", "values.json", cwd=buyer
    )
    return {"root": root, "buyer": buyer, "seller": seller, "rows": rows, "reveal": revealed}


def test_cli_flow_decrypts_to_the_plaintext_reference(market):
    """The default `tip score` is DP: every corpus sum is the clipped plaintext sum plus noise of
    the stated size; the ledger counts the answer for the buyer's name and never leaves the seller."""
    buyer, seller = market["buyer"], market["seller"]
    values = json.loads((buyer / "values.json").read_text())
    assert values["dp"]["epsilon"] == pytest.approx(2.0, rel=1e-3)
    clip = values["dp"]["clip_norm"]
    reference = plaintext_values(load_bundle(buyer / "bundle").query, SketchStore(seller / "store"), clip_norm=clip)
    assert {r["corpus"] for r in values["rows"]} == {"clean", "flipped", "more"}
    for row in values["rows"]:
        ref = reference[row["corpus"]]
        assert row["count"] == ref["count"]
        assert abs(row["sum"] - ref["sum"]) <= 6 * row["noise_std"]
        assert row["mean"] == pytest.approx(row["sum"] / row["count"])
    payouts = values["payouts"]["tiers"]
    assert sum(payouts.values()) == pytest.approx(100.0) or all(v == 0 for v in payouts.values())
    assert "flat rate" in market["reveal"].stdout
    ledger = json.loads((seller / "ledger.json").read_text())
    assert ledger["queries"] == {"acme": 1} and set(ledger["dp_versions"]) == {"clean", "flipped", "more"}
    scores = (seller / "scores.tip").read_bytes()
    assert b"ledger.json" not in scores and b"acme" not in scores and str(seller).encode() not in scores
    assert (seller / "scores.opening.json").stat().st_mode & 0o777 == 0o600


def test_cli_verify_and_report(market):
    buyer, seller = market["buyer"], market["seller"]
    # at delivery the seller opens the bought corpora's commitments; the buyer checks ids and values
    tip("open", "--opening", "scores.opening.json", "--corpus", "clean", "--corpus", "flipped", "--corpus", "more",
        "-o", "delivery-opening.json", cwd=seller)  # fmt: skip
    shutil.copy(seller / "delivery-opening.json", buyer / "delivery-opening.json")
    shutil.copy(seller / "corpora.jsonl", buyer / "delivered.jsonl")
    common = ["--scores", "scores.tip", "--opening", "delivery-opening.json", "--model", "model", "--bundle", "bundle",
              "--keys", "keys", "--corpus-column", "corpus"]  # fmt: skip
    ok = tip("verify", "--dataset", "delivered.jsonl", *common, cwd=buyer)
    assert ok.stdout.count("ids match the commitment") == 3 and ok.stdout.count(": ok") == 3, ok.stdout
    swapped = [dict(r, text=r["text"] + " extra") if i == 0 else r for i, r in enumerate(market["rows"])]
    with open(buyer / "tampered.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in swapped)
    bad = tip("verify", "--dataset", "tampered.jsonl", *common, cwd=buyer, check=False)
    assert bad.returncode == 1 and "clean" in bad.stdout and "DO NOT MATCH" in bad.stdout
    # the opening lists the scored ids, so the buyer learns which rows: row 0 changed, nothing else
    assert "1 scored examples missing from the delivery; 1 delivered rows not scored (extra or changed): rows 0" in (
        bad.stdout
    ), bad.stdout
    tip("report", "bundle", str(seller / "store"), "values.json", "-o", "report", cwd=buyer)
    report = (buyer / "report" / "report.md").read_text()
    assert report.count("##") == 3 and "near-duplicate sketches" in report
    assert (buyer / "report" / "values-values.png").stat().st_size > 1000


def test_cli_help_reads_well():
    out = subprocess.run([sys.executable, "-m", "tip_hf.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("keygen", "query", "sketch", "score", "reveal", "verify", "report", "demo"):
        assert command in out.stdout
    entry = shutil.which("tip", path=str(Path(sys.executable).parent))
    assert entry is not None, "the `tip` console script is not installed"


# ---- bad input: non-zero exit, one line naming the problem ---------------------------------
def test_missing_file(market):
    out = tip(
        "score",
        "--store",
        "store",
        "--query",
        "nope.tip",
        "--context",
        "public_context.tip",
        cwd=market["seller"],
        check=False,
    )
    assert "nope.tip" in error_line(out, "score")


def test_bundle_from_another_spec_or_model(market, tmp_path):
    seller = market["seller"]
    spec = json.loads((seller / "spec.json").read_text())
    spec["spec"]["seed"] = 7  # another spec: the fingerprint no longer matches the model
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = seller_sketch(
        market, seller / "corpora.jsonl", "-o", tmp_path / "store", cwd=tmp_path, spec=tmp_path / "spec.json"
    )
    line = error_line(out, "sketch")
    assert "fingerprint" in line and "differs" in line


def test_wrong_keys(market, tmp_path):
    tip("keygen", "other", cwd=tmp_path)
    out = tip("reveal", "--scores", market["buyer"] / "scores.tip", "--keys", "other", cwd=tmp_path, check=False)
    assert "wrong keys" in error_line(out, "reveal")


def test_truncated_message(market, tmp_path):
    data = (market["buyer"] / "scores.tip").read_bytes()
    (tmp_path / "cut.tip").write_bytes(data[: len(data) // 2])
    out = tip("reveal", "--scores", "cut.tip", "--keys", market["buyer"] / "keys", cwd=tmp_path, check=False)
    assert "truncated" in error_line(out, "reveal").lower()


def test_empty_corpus(market, tmp_path):
    (tmp_path / "empty.csv").write_text("text,label,corpus\n")
    out = seller_sketch(market, "empty.csv", "-o", "store", cwd=tmp_path)
    assert "empty" in error_line(out, "sketch")


def test_unknown_column(market, tmp_path):
    out = seller_sketch(
        market, market["seller"] / "corpora.jsonl", "--text-column", "body", "-o", "store", cwd=tmp_path
    )
    line = error_line(out, "sketch")
    assert "body" in line and "column" in line
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_offline_hub_dataset_is_a_clear_message(market, tmp_path):
    out = seller_sketch(market, "someone/not-cached-corpus", "-o", "store", cwd=tmp_path)
    line = error_line(out, "sketch")
    assert "someone/not-cached-corpus" in line and "local path" in line


def test_sketch_resumes_and_is_deterministic(market, tmp_path):
    """`tip sketch` with other batch and shard sizes gives the identical store."""
    seller = market["seller"]
    extra = ["--corpus-column", "corpus", "--batch-size", "5", "--shard-size", "16", "-o", tmp_path / "again"]
    seller_sketch(market, seller / "corpora.jsonl", *extra, cwd=tmp_path, check=True)
    a, b = SketchStore(seller / "store"), SketchStore(tmp_path / "again")
    assert a.ids() == b.ids()
    torch.testing.assert_close(b.sketches(), a.sketches(), rtol=1e-5, atol=1e-6)


def test_cli_sketch_under_accelerate_launch_equals_one_process(market, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m tip_hf.cli sketch` (two gloo ranks)."""
    seller = market["seller"]
    out = subprocess.run(
        accelerate_command(
            2,
            "-m",
            "tip_hf.cli",
            "sketch",
            "--model",
            str(seller / "model"),
            "--spec",
            str(seller / "spec.json"),
            "--dataset",
            str(seller / "corpora.jsonl"),
            "--corpus-column",
            "corpus",
            "--shard-size",
            "16",
            "-o",
            str(tmp_path / "store"),
        ),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("written to") == 1  # printed by the main process only
    a, b = SketchStore(seller / "store"), SketchStore(tmp_path / "store")
    assert a.ids() == b.ids() and a.corpus_labels() == b.corpus_labels() and len(b.manifest["shards"]) == 4
    torch.testing.assert_close(b.sketches(), a.sketches(), rtol=1e-5, atol=1e-6)


def test_cli_recipe_query_scores_and_verifies(market):
    """`tip query --lr ... --epochs ...`: the seller's `tip score` needs nothing new; the values
    are the recipe's predicted drops (the plaintext reference with the recipe), and `tip verify`
    accepts the honest delivery, checking each stated scale against the delivered data."""
    buyer, seller = market["buyer"], market["seller"]
    out = tip("query", "--bundle", "bundle", "--keys", "keys", "-o", "recipe.tip", "--lr", "0.05", "--epochs", "1",
              "--batch-size", "8", cwd=buyer)  # fmt: skip
    assert "recipe: sgd lr=0.05 1 epoch(s) bs=8" in out.stdout
    shutil.copy(buyer / "recipe.tip", seller / "recipe.tip")
    refused = tip("score", "--store", "store", "--query", "recipe.tip", "--context", "public_context.tip",
                  "--min-examples", "2", "--no-dp", "-o", "recipe-scores.tip", cwd=seller, check=False)  # fmt: skip
    assert refused.returncode == 1 and "--layout columns" in refused.stderr  # a packed query without DP
    tip("score", "--store", "store", "--query", "recipe.tip", "--context", "public_context.tip", "--min-examples", "2",
        "--no-dp", "--allow-packed-without-dp", "-o", "recipe-scores.tip", cwd=seller)  # fmt: skip
    shutil.copy(seller / "recipe-scores.tip", buyer / "recipe-scores.tip")
    revealed = tip("reveal", "--scores", "recipe-scores.tip", "--keys", "keys", "-o", "recipe-values.json", cwd=buyer)
    assert "values predict the eval-loss drop of fine-tuning with: sgd lr=0.05" in revealed.stdout
    values = json.loads((buyer / "recipe-values.json").read_text())
    assert values["recipe"]["learning_rate"] == 0.05 and values["recipe"]["trust_radius"] > 0
    bundle = load_bundle(buyer / "bundle")
    reference = plaintext_values(bundle.query, SketchStore(seller / "store"), recipe=values["recipe"])
    for row in values["rows"]:
        assert row["sum"] == pytest.approx(reference[row["corpus"]]["sum"], rel=1e-5, abs=1e-9)
        assert 0 < row["scale"] < 1
    tip("open", "--opening", "recipe-scores.opening.json", "--corpus", "clean", "-o", "recipe-opening.json",
        cwd=seller)  # fmt: skip
    shutil.copy(seller / "recipe-opening.json", buyer / "recipe-opening.json")
    with open(buyer / "clean.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in market["rows"] if r["corpus"] == "clean")
    ok = tip("verify", "--dataset", "clean.jsonl", "--scores", "recipe-scores.tip", "--opening", "recipe-opening.json",
             "--model", "model", "--bundle", "bundle", "--keys", "keys", "--corpus-column", "corpus",
             cwd=buyer)  # fmt: skip
    assert "ids match the commitment" in ok.stdout and ": ok" in ok.stdout, ok.stdout


def test_cli_column_query_for_per_example_values(market):
    """`tip query --layout columns`: one ciphertext per pair of coordinates (the default packed
    query is one ciphertext for the whole vector), for a seller's per-example release; the
    values equal the plaintext per-example values."""
    buyer, seller = market["buyer"], market["seller"]
    out = tip("query", "--bundle", "bundle", "--keys", "keys", "-o", "columns.tip", "--layout", "columns", cwd=buyer)
    assert "columns layout" in out.stdout
    k = load_bundle(buyer / "bundle").spec.proj_dim
    packed, columns = (buyer / "query.tip").stat().st_size, (buyer / "columns.tip").stat().st_size
    assert columns > (k // 2) / 2 * packed  # k/2 + 1 ciphertexts against 2
    shutil.copy(buyer / "columns.tip", seller / "columns.tip")
    tip("score", "--store", "store", "--query", "columns.tip", "--context", "public_context.tip", "--release",
        "example", "--allow-example-release", "--no-dp", "-o", "example-scores.tip", cwd=seller)  # fmt: skip
    shutil.copy(seller / "example-scores.tip", buyer / "example-scores.tip")
    tip("reveal", "--scores", "example-scores.tip", "--keys", "keys", "-o", "example-values.json", cwd=buyer)
    values = json.loads((buyer / "example-values.json").read_text())
    store = SketchStore(seller / "store")
    expected = store.sketches().double() @ load_bundle(buyer / "bundle").query.double()
    np.testing.assert_allclose(values["values"], expected.numpy(), atol=1e-4 * float(expected.abs().max()))
    bad = tip("query", "--bundle", "bundle", "--keys", "keys", "-o", "x.tip", "--layout", "rows", cwd=buyer,
              check=False)  # fmt: skip
    assert bad.returncode != 0 and "--layout must be 'packed' or 'columns'" in bad.stderr
