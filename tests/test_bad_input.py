"""Bad input and faults, as a newcomer meets them: each gives one line naming the problem and
the fix (exit 1; usage mistakes exit 2), and none loses or silently corrupts data.

The CLI runs in-process through typer's runner (the real `tip` app); the Python API is
called directly. docs/bad-input.md lists every class with the test that covers it."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import MLP, make_bert, make_gpt2, minilm_dir, tiny_training_args
from transformers import AutoTokenizer
from typer.testing import CliRunner

from tip_hf import GradientSketcher, SketchStore, TIPCallback, ValuationSpec, sketch_dataset
from tip_hf.bundle import Bundle, BundleError, load_bundle, write_bundle
from tip_hf.cli import app
from tip_hf.data import DataSourceError, load_corpus
from tip_hf.errors import DataError, SpecMismatchError, TIPError

SPEC = ValuationSpec(
    targets=["classifier", "bert.encoder.layer.1.output.dense"], proj_dim=32, task="sequence_classification"
)
ROOT = Path(__file__).resolve().parents[1]


def rows(n: int, seed: int = 0, corpus: str | None = "clean") -> list[dict]:
    words = ["good", "great", "bad", "awful", "film", "plot", "cast", "the", "was", "very"]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        picked = [
            words[int(i)]
            for i in torch.randint(0, len(words), (int(torch.randint(3, 8, (1,), generator=gen)),), generator=gen)
        ]
        out.append({"text": " ".join(picked), "label": int("good" in picked), **({"corpus": corpus} if corpus else {})})
    return out


def jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A buyer's published model (with and without its tokenizer), spec, bundle and keys."""
    root = tmp_path_factory.mktemp("bad-input")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = make_bert(vocab=tokenizer.vocab_size, labels=2)
    model.config.max_position_embeddings = 64
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    model.save_pretrained(root / "weights-only")
    fingerprint = SPEC.fingerprint(model)
    (root / "spec.json").write_text(json.dumps({"spec": SPEC.to_dict(), "fingerprint": fingerprint}))
    q = torch.randn(SPEC.proj_dim, dtype=torch.float64)
    write_bundle(root / "bundle", Bundle(SPEC, fingerprint, None, q, q.clone(), {"n_examples": 0}))
    jsonl(root / "good.jsonl", rows(12))
    return {"root": root, "model": model, "tokenizer": tokenizer}


def tip(*args: object) -> tuple[int, str]:
    """Run `tip` in-process; exit code and stderr (no traceback allowed)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}")
    assert "Traceback" not in result.stderr, result.stderr
    return result.exit_code, result.stderr


def sketch_cli(world, dataset: object, out: Path, *extra: object) -> tuple[int, str]:
    root = world["root"]
    return tip(
        "sketch", "--model", root / "model", "--spec", root / "spec.json", "--dataset", dataset, "-o", out, *extra
    )


def one_line(code: int, err: str, pattern: str, exit_code: int = 1) -> str:
    assert code == exit_code, (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert re.search(pattern, err), err
    if exit_code == 1:
        assert len([line for line in lines if ": error:" in line]) == 1, err
    return err


def interrupt_on_batch(monkeypatch, n: int):
    """Ctrl-C on the n-th backward pass; returns the real ``GradientSketcher.sketch``."""
    original, calls = GradientSketcher.sketch, {"n": 0}

    def interrupted(self, batch):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(GradientSketcher, "sketch", interrupted)
    return original


# -- 1. two runs into one store -----------------------------------------------------------------
def test_second_sketch_into_a_busy_store_is_refused(world, tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)  # another `tip sketch` holds the store
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242")
    try:
        one_line(
            *sketch_cli(world, world["root"] / "good.jsonl", out),
            r"being written by another process \(pid 4242\).*--out",
        )
    finally:
        os.close(fd)
    assert not (out / "manifest.json").exists()  # the busy store was not touched


def test_second_sketch_with_other_data_keeps_the_first_store(world, tmp_path):
    out = tmp_path / "store"
    assert sketch_cli(world, world["root"] / "good.jsonl", out)[0] == 0
    before = SketchStore(out).ids()
    other = jsonl(tmp_path / "other.jsonl", rows(12, seed=9))
    one_line(*sketch_cli(world, other, out), r"Example 0 of the existing store.*--overwrite")
    assert SketchStore(out).ids() == before and SketchStore(out).complete


# -- 2. a model folder without its tokenizer ----------------------------------------------------
def test_model_without_tokenizer_is_refused(world, tmp_path):
    root = world["root"]
    code, err = tip("sketch", "--model", root / "weights-only", "--spec", root / "spec.json", "--dataset",
                    root / "good.jsonl", "-o", tmp_path / "s")  # fmt: skip
    one_line(code, err, r"no tokenizer files.*tokenizer.save_pretrained.*--tokenizer")
    assert not (tmp_path / "s").exists()
    code, _ = tip("sketch", "--model", root / "weights-only", "--tokenizer", root / "model", "--spec",
                  root / "spec.json", "--dataset", root / "good.jsonl", "-o", tmp_path / "s")  # fmt: skip
    assert code == 0 and len(SketchStore(tmp_path / "s")) == 12


# -- 3. keys are never replaced ---------------------------------------------------------------
def test_keys_save_refuses_to_replace_a_secret_key(tmp_path):
    from tip_hf.he import BuyerKeys

    keys = BuyerKeys.generate("n8192")
    keys.save(tmp_path / "keys")
    secret = (tmp_path / "keys" / "secret.key").read_bytes()
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        BuyerKeys.generate("n8192").save(tmp_path / "keys")
    assert (tmp_path / "keys" / "secret.key").read_bytes() == secret
    one_line(*tip("keygen", tmp_path / "keys"), r"already holds keys")


# -- 4. max_length ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-5", "0"])
def test_max_length_must_be_positive(world, tmp_path, value):
    code, err = sketch_cli(world, world["root"] / "good.jsonl", tmp_path / "s", "--max-length", value)
    assert code == 2 and "--max-length" in err and not (tmp_path / "s").exists()
    with pytest.raises(DataError, match="max_length must be a positive"):
        sketch_dataset(world["model"], Dataset.from_list(rows(4)), SPEC, tmp_path / "t", tokenizer=world["tokenizer"],
                       max_length=int(value), progress=False)  # fmt: skip


def test_max_length_beyond_the_models_positions(world, tmp_path):
    one_line(*sketch_cli(world, world["root"] / "good.jsonl", tmp_path / "s", "--max-length", "100000"),
             r"more than the model's 64 positions.*--max-length 64")  # fmt: skip


# -- 5. resume checks every row it skips ------------------------------------------------------------
def test_resume_after_a_row_changed_inside_a_finished_shard(world, tmp_path, monkeypatch):
    data = rows(12)
    original = interrupt_on_batch(monkeypatch, 3)
    kwargs = {"tokenizer": world["tokenizer"], "corpus_column": "corpus", "shard_size": 4, "batch_size": 4,
              "progress": False}  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        sketch_dataset(world["model"], Dataset.from_list(data), SPEC, tmp_path / "s", **kwargs)
    monkeypatch.setattr(GradientSketcher, "sketch", original)
    assert len(SketchStore(tmp_path / "s")) == 8  # two whole shards kept
    edited = [dict(r) for r in data]
    edited[5]["text"] += " indeed"  # the middle of the second, finished shard
    with pytest.raises(SpecMismatchError, match="Example 5 of the existing store"):
        sketch_dataset(world["model"], Dataset.from_list(edited), SPEC, tmp_path / "s", **kwargs)
    edited[5]["label"] = 1 - edited[5]["label"]  # a label change too
    with pytest.raises(SpecMismatchError, match="Example 5"):
        sketch_dataset(world["model"], Dataset.from_list(edited), SPEC, tmp_path / "s", **kwargs)
    assert len(SketchStore(tmp_path / "s")) == 8  # nothing lost
    store = sketch_dataset(world["model"], Dataset.from_list(data), SPEC, tmp_path / "s", **kwargs)
    assert store.complete and len(store) == 12


# -- 6. files, encodings, labels, empty text -------------------------------------------------------
def test_folder_mixing_txt_and_jsonl_is_refused(world, tmp_path):
    folder = tmp_path / "corpora"
    folder.mkdir()
    (folder / "a.txt").write_text("one paragraph\n\nanother paragraph\n")
    jsonl(folder / "b.jsonl", rows(3))
    with pytest.raises(DataSourceError, match=r"mixes \.txt files with \.jsonl"):
        load_corpus(folder)
    one_line(*sketch_cli(world, folder, tmp_path / "s"), r"mixes \.txt files with \.jsonl")


def test_non_utf8_txt_is_refused(world, tmp_path):
    folder = tmp_path / "corpora"
    folder.mkdir()
    (folder / "latin.txt").write_bytes("caf\xe9 cr\xe8me\n\nna\xefve".encode("latin-1"))
    with pytest.raises(DataSourceError, match=r"latin.txt' is not UTF-8 text \(byte 0xe9 at offset 3\).*iconv"):
        load_corpus(folder)


def test_fractional_labels_are_refused(world, tmp_path):
    data = rows(6)
    data[2]["label"] = 1.5
    one_line(
        *sketch_cli(world, jsonl(tmp_path / "d.jsonl", data), tmp_path / "s"), r"Example 2 has label 1.5.*class id"
    )
    assert not (tmp_path / "s").exists()
    data[2]["label"] = 1.0  # an integral float is the class id 1
    assert sketch_cli(world, jsonl(tmp_path / "d.jsonl", data), tmp_path / "s")[0] == 0


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_text_is_refused_not_valued(world, tmp_path, text):
    data = rows(6)
    data[4]["text"] = text
    one_line(
        *sketch_cli(world, jsonl(tmp_path / "d.jsonl", data), tmp_path / "s"),
        r"Example 4 has empty or whitespace-only text",
    )
    with pytest.raises(DataError, match="Example 4 has empty"):
        gpt2_spec = ValuationSpec(targets=["transformer.h.*.mlp.c_fc"], proj_dim=8)
        sketch_dataset(make_gpt2(), Dataset.from_list(data), gpt2_spec, tmp_path / "g", tokenizer=world["tokenizer"],
                       progress=False)  # fmt: skip


# -- 7. flags that used to be ignored ------------------------------------------------------------
def test_split_on_local_files_is_refused(world, tmp_path):
    one_line(*sketch_cli(world, world["root"] / "good.jsonl", tmp_path / "s", "--split", "test"),
             r"no splits.*Leave out --split")  # fmt: skip


def test_corpus_name_and_corpus_column_together_are_refused(world, tmp_path):
    both = ("--corpus", "x", "--corpus-column", "corpus")
    one_line(*sketch_cli(world, world["root"] / "good.jsonl", tmp_path / "s", *both),
             r"--corpus NAME for one corpus, or --corpus-column")  # fmt: skip


def test_missing_corpus_name_is_refused(world, tmp_path):
    data = rows(6)
    data[3]["corpus"] = None
    one_line(*sketch_cli(world, jsonl(tmp_path / "d.jsonl", data), tmp_path / "s", "--corpus-column", "corpus"),
             r"Example 3 has no corpus name in column `corpus`")  # fmt: skip


def test_negative_workers_and_batch_sizes_are_refused(world, tmp_path):
    assert sketch_cli(world, world["root"] / "good.jsonl", tmp_path / "s", "--batch-size", "-3")[0] == 2
    assert sketch_cli(world, world["root"] / "good.jsonl", tmp_path / "s", "--shard-size", "0")[0] == 2
    with pytest.raises(DataError, match="batch_size"):
        sketch_dataset(world["model"], Dataset.from_list(rows(3)), SPEC, tmp_path / "t", batch_size=-3,
                       tokenizer=world["tokenizer"], progress=False)  # fmt: skip
    one_line(*tip("score", "--store", tmp_path, "--query", tmp_path, "--context", tmp_path, "--workers", "-3"),
             r"--workers must be >= 1")  # fmt: skip


# -- 11. a partial store is reported as such ---------------------------------------------------------
def test_report_shows_a_partial_store(world, tmp_path, monkeypatch):
    original = interrupt_on_batch(monkeypatch, 3)
    code, err = sketch_cli(
        world, world["root"] / "good.jsonl", tmp_path / "s", "--shard-size", "4", "--batch-size", "4"
    )
    assert code == 130 and "interrupted" in err and "resume" in err, err
    monkeypatch.setattr(GradientSketcher, "sketch", original)
    code, err = tip("report", tmp_path / "s", "-o", tmp_path / "r")
    assert code == 0 and "INCOMPLETE: 8 of 12 rows" in err
    assert "INCOMPLETE: 8 of 12 rows sketched" in (tmp_path / "r" / "report.md").read_text()


# -- a failed sketch leaves nothing behind --------------------------------------------------------
def test_failed_sketch_leaves_no_store(world, tmp_path):
    data = rows(6)
    data[5]["label"] = 7
    one_line(
        *sketch_cli(world, jsonl(tmp_path / "d.jsonl", data), tmp_path / "s"), r"Example 5 has label 7.*classes 0..1"
    )
    assert not (tmp_path / "s").exists()  # so following the error's advice works
    data[5]["label"] = 1
    assert sketch_cli(world, jsonl(tmp_path / "d.jsonl", data), tmp_path / "s")[0] == 0


# -- tracebacks that became one line ------------------------------------------------------------
@pytest.mark.parametrize("label", [7, -1])
def test_out_of_range_labels(world, tmp_path, label):
    data = rows(5)
    data[1]["label"] = label
    with pytest.raises(DataError, match=f"Example 1 has label {label}"):
        sketch_dataset(world["model"], Dataset.from_list(data), SPEC, tmp_path / "s", tokenizer=world["tokenizer"],
                       progress=False)  # fmt: skip
    assert not (tmp_path / "s").exists()
    batch = {
        **world["tokenizer"](["good film", "bad"], return_tensors="pt", padding=True),
        "labels": torch.tensor([0, label]),
    }
    with pytest.raises(DataError, match=f"Example 1 of the batch has label {label}"):
        GradientSketcher(world["model"], SPEC).sketch(batch)


def test_over_vocabulary_token_ids(world):
    batch = {"input_ids": torch.tensor([[5, 6, 40000]]), "labels": torch.tensor([1])}
    with pytest.raises(DataError, match="token id 40000, outside the model's vocabulary of 30522"):
        GradientSketcher(world["model"], SPEC).sketch(batch)


def test_wrong_feature_width_for_a_dense_model(tmp_path):
    spec = ValuationSpec(targets=["hidden", "classifier"], proj_dim=8, task="sequence_classification")
    data = Dataset.from_dict({"features": torch.randn(4, 5).tolist(), "label": [0, 1, 0, 1]})
    with pytest.raises(DataError, match=r"does not accept `features` of shape \(5,\)"):
        sketch_dataset(
            MLP(d_in=6, hidden=8, classes=2), data, spec, tmp_path / "s", feature_column="features", progress=False
        )
    assert not (tmp_path / "s").exists()


def test_corrupted_bundle_files(world, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(world["root"] / "bundle", bundle)
    (bundle / "query.safetensors").write_bytes((bundle / "query.safetensors").read_bytes()[:40])
    with pytest.raises(BundleError, match=r"query\.safetensors' is not a valid safetensors file"):
        load_bundle(bundle)
    one_line(*tip("query", "--bundle", bundle, "--keys", tmp_path), r"query.safetensors")
    (bundle / "spec.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(BundleError, match=r"spec\.json' is not a bundle spec"):
        load_bundle(bundle)


def test_callback_task_mismatch_fails_at_train_begin(world, tmp_path):
    from transformers import Trainer

    data = Dataset.from_list(rows(8, corpus=None)).map(lambda b: world["tokenizer"](b["text"]), batched=True,
                                                       remove_columns=["text"])  # fmt: skip
    args = tiny_training_args(tmp_path / "t", max_steps=1, logging_strategy="steps")
    wrong = ValuationSpec(targets=["classifier"], proj_dim=8, task="causal_lm")
    callback = TIPCallback(wrong, eval_dataset=data, output_dir=tmp_path / "b")
    trainer = Trainer(model=world["model"], args=args, train_dataset=data, callbacks=[callback])
    with pytest.raises(Exception, match="task is 'causal_lm' but the model is a BertForSequenceClassification"):
        trainer.train()
    bad_eval = Dataset.from_list([{**r, "label": 5} for r in rows(4, corpus=None)])
    callback = TIPCallback(SPEC, eval_dataset=bad_eval, output_dir=tmp_path / "b", tokenizer=world["tokenizer"])
    steps = {"n": 0}
    trainer = Trainer(model=world["model"], args=args, train_dataset=data, callbacks=[callback])
    original = trainer.training_step

    def counted(*a, **k):
        steps["n"] += 1
        return original(*a, **k)

    trainer.training_step = counted
    with pytest.raises(DataError, match="Example 0 has label 5"):
        trainer.train()
    assert steps["n"] == 0  # refused before the first step, not after the run


def test_non_utf8_spec_file(world, tmp_path):
    (tmp_path / "spec.json").write_bytes(b"\xff\xfe{}")
    one_line(*tip("sketch", "--model", world["root"] / "model", "--spec", tmp_path / "spec.json", "--dataset",
                  world["root"] / "good.jsonl", "-o", tmp_path / "s"), r"spec file .* is not UTF-8")  # fmt: skip


# -- the CLI speaks CLI and starts fast -------------------------------------------------------------
def test_cli_errors_name_flags_not_python_arguments(world, tmp_path):
    code, err = sketch_cli(world, world["root"] / "good.jsonl", tmp_path / "s", "--label-column", "nope")
    one_line(code, err, r"--label-column")
    assert "label_column=" not in err


def test_tip_help_imports_nothing_heavy():
    import subprocess
    import sys

    heavy = "('torch', 'transformers', 'tenseal', 'datasets')"
    code = f"import sys, tip_hf.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_bad_input_table_names_real_tests():
    """docs/bad-input.md: >= 40 classes, each naming a test that exists."""
    table = (ROOT / "docs" / "bad-input.md").read_text()
    named = re.findall(r"`(test_\w+)`", table)
    classes = [line for line in table.splitlines() if line.startswith("| ") and "`test_" in line]
    assert len(classes) >= 40, len(classes)
    defined = set()
    for file in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", file.read_text(), flags=re.M))
    missing = sorted(set(named) - defined)
    assert not missing, missing


# -- 9. an interrupted score charges nothing ---------------------------------------------------------
def seller_and_buyer_files(tmp_path: Path) -> None:
    """A small store, buyer keys and an encrypted query, as files."""
    from tip_hf.he import BuyerKeys, encrypt_query

    spec = ValuationSpec(targets=["x"], proj_dim=16)
    gen = torch.Generator().manual_seed(0)
    SketchStore.from_arrays(tmp_path / "store", torch.randn(24, 16, generator=gen), ["a"] * 12 + ["b"] * 12,
                                    spec, "f" * 64)  # fmt: skip
    keys = BuyerKeys.generate("n8192")
    keys.save(tmp_path / "keys")
    # a column query: these sellers score with --no-dp
    encrypt_query(torch.randn(16, generator=gen), keys, spec, layout="complex-pairs/3").save(tmp_path / "query.tip")


def test_interrupted_score_charges_no_query(tmp_path, monkeypatch):
    from tip_hf.he.kernel import QueryKernel

    seller_and_buyer_files(tmp_path)
    ledger = tmp_path / "ledger.json"
    args = ("score", "--store", tmp_path / "store", "--query", tmp_path / "query.tip", "--context",
            tmp_path / "keys" / "public_context.tip", "--buyer", "acme", "--ledger", ledger, "--max-queries", "2",
            "--no-dp", "--min-examples", "1", "-o", tmp_path / "scores.tip")  # fmt: skip

    def interrupted(self, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(QueryKernel, "release", interrupted)
    code, err = tip(*args)
    assert code == 130 and "no query was charged" in err, err
    assert not (tmp_path / "scores.tip").exists()
    monkeypatch.undo()
    assert tip(*args)[0] == 0 and tip(*args)[0] == 0  # both answers of the budget are still there
    one_line(*tip(*args), r"budget|max_queries|queries")


def test_budget_on_per_example_scores_is_refused(tmp_path):
    seller_and_buyer_files(tmp_path)
    code, err = tip("score", "--store", tmp_path / "store", "--query", tmp_path / "query.tip", "--context",
                    tmp_path / "keys" / "public_context.tip", "--release", "example", "--allow-example-release",
                    "--no-dp", "-o", tmp_path / "scores.tip")  # fmt: skip
    assert code == 0, err
    one_line(*tip("reveal", "--scores", tmp_path / "scores.tip", "--keys", tmp_path / "keys", "--budget", "100",
                  "-o", tmp_path / "v.json"), r"per example; leave out --budget")  # fmt: skip
    assert (
        tip("reveal", "--scores", tmp_path / "scores.tip", "--keys", tmp_path / "keys", "-o", tmp_path / "v.json")[0]
        == 0
    )


# -- 10. budgets that are not amounts -----------------------------------------------------------
@pytest.mark.parametrize("budget", ["-100", "nan", "inf", "0"])
def test_reveal_refuses_a_budget_that_is_not_an_amount(tmp_path, budget):
    seller_and_buyer_files(tmp_path)
    code, err = tip("score", "--store", tmp_path / "store", "--query", tmp_path / "query.tip", "--context",
                    tmp_path / "keys" / "public_context.tip", "--no-dp", "--min-examples", "1",
                    "-o", tmp_path / "scores.tip")  # fmt: skip
    assert code == 0, err
    one_line(*tip("reveal", "--scores", tmp_path / "scores.tip", "--keys", tmp_path / "keys", "--budget", budget,
                  "-o", tmp_path / "v.json"), r"--budget must be a positive amount")  # fmt: skip
    assert not (tmp_path / "v.json").exists()


def test_keys_refuse_a_queries_file_readable_by_others(tmp_path):
    from tip_hf.he import BuyerKeys

    BuyerKeys.generate("n8192").save(tmp_path / "keys")
    queries = tmp_path / "keys" / "queries.json"
    assert queries.stat().st_mode & 0o077 == 0
    queries.chmod(0o644)
    with pytest.raises(PermissionError, match=r"queries.json' is readable by others .*chmod 600"):
        BuyerKeys.load(tmp_path / "keys")
    queries.chmod(0o600)
    BuyerKeys.load(tmp_path / "keys")


# -- found in review -------------------------------------------------------------------------------
def test_merge_never_destroys_or_doubles_a_source(world, tmp_path):
    from tip_hf.store import merge_stores

    for name, seed in (("a", 0), ("b", 1)):
        assert sketch_cli(world, jsonl(tmp_path / f"{name}.jsonl", rows(6, seed=seed)), tmp_path / name)[0] == 0
    before = SketchStore(tmp_path / "a").ids()
    one_line(*tip("merge", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "a", "--overwrite"),
             r"one of the stores to merge.*--out")  # fmt: skip
    assert SketchStore(tmp_path / "a").ids() == before
    with pytest.raises(TIPError, match="listed twice"):
        merge_stores([tmp_path / "a", tmp_path / "a"], tmp_path / "m")


def test_pretokenised_rows_with_mismatched_lengths_or_huge_ids(tmp_path):
    model, spec = make_gpt2(), ValuationSpec(targets=["transformer.h.*.mlp.c_fc"], proj_dim=8)
    cases = [
        ({"input_ids": [[3, 4], [1, 2]], "labels": [[3, 4], [1, 2, 3]]}, "3 token labels for 2 input ids"),
        ({"input_ids": [[3, 4], [1, 2]], "token_type_ids": [[0, 0], [0, 0, 0]]}, "token_type_ids"),
        ({"input_ids": [[3.0, 4.0], [1.0, 1e20]]}, "64-bit token ids"),
    ]
    for i, (columns, message) in enumerate(cases):
        with pytest.raises(DataError, match=message):
            sketch_dataset(model, Dataset.from_dict(columns), spec, tmp_path / f"s{i}", progress=False)
        assert not (tmp_path / f"s{i}").exists()


def test_overwrite_deletes_only_a_sketch_store(world, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"tool": "something else"}')
    (folder / "shard-00000.safetensors").write_bytes(b"precious")
    one_line(*sketch_cli(world, world["root"] / "good.jsonl", folder, "--overwrite"),
             r"not a sketch store .*--overwrite replaces only sketch stores")  # fmt: skip
    assert (folder / "shard-00000.safetensors").read_bytes() == b"precious"


def test_an_orphan_shard_from_an_interrupted_first_save_is_cleaned(world, tmp_path, monkeypatch):
    import tip_hf.store as store_module

    real = store_module.StoreWriter._save_manifest
    calls = {"n": 0}

    def interrupted_after_the_shard(self):
        calls["n"] += 1
        if calls["n"] == 2:  # the first shard is on disk, its manifest entry is not
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(store_module.StoreWriter, "_save_manifest", interrupted_after_the_shard)
    code, err = sketch_cli(world, world["root"] / "good.jsonl", tmp_path / "s", "--shard-size", "4")
    assert code == 130, err
    monkeypatch.undo()
    assert not (tmp_path / "s").exists()  # nothing half-made is left
    assert sketch_cli(world, world["root"] / "good.jsonl", tmp_path / "s")[0] == 0


# -- recipes (issue 13) ----------------------------------------------------------------------------
def test_bad_recipe_flags_are_refused(world, tmp_path):
    from tip_hf.he import BuyerKeys

    BuyerKeys.generate().save(tmp_path / "keys")
    query = ("query", "--bundle", world["root"] / "bundle", "--keys", tmp_path / "keys", "-o", tmp_path / "q.tip")
    one_line(*tip(*query, "--lr", "-1", "--steps", "5"), r"learning_rate must be a positive number")
    one_line(*tip(*query, "--lr", "0.1"), r"exactly one of `steps` and `epochs`")
    one_line(*tip(*query, "--lr", "0.1", "--steps", "5", "--optimizer", "lion"), r"optimizer must be 'sgd' or 'adam'")
    one_line(*tip(*query, "--steps", "5"), r"--joint-examples need", exit_code=2)
    assert not (tmp_path / "q.tip").exists()
    code, err = tip(*query, "--lr", "0.1", "--epochs", "1", "--batch-size", "8", "--optimizer", "adam")
    assert code == 0, err
