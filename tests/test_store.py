"""sketch_dataset + SketchStore: equal to direct sketches, resumable, refuses mismatches."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from helpers import GPT2_TARGETS, make_bert, make_gpt2, minilm_dir

import tip_hf.sketcher as sketcher_module
from tip_hf import (
    GradientSketcher,
    SketchStore,
    SpecMismatchError,
    StoreCorruptedError,
    TIPError,
    ValuationSpec,
    sketch_dataset,
)
from tip_hf.dataset import example_id

SPEC = ValuationSpec(targets=GPT2_TARGETS, proj_dim=32, proj_factor=8)


def corpus_dataset(n: int = 45, seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(3, 15, (1,), generator=gen))
        rows.append({"input_ids": torch.randint(1, 97, (length,), generator=gen).tolist(), "source": f"c{i % 3}"})
    return Dataset.from_list(rows)


def test_store_equals_direct_sketches(tmp_path):
    model, data = make_gpt2(), corpus_dataset()
    store = sketch_dataset(
        model, data, SPEC, tmp_path / "s", corpus_column="source", batch_size=4, shard_size=16, progress=False
    )
    assert len(store) == 45 and store.complete and len(store.manifest["shards"]) == 3
    direct = torch.cat(
        [GradientSketcher(model, SPEC).sketch({"input_ids": torch.tensor([row["input_ids"]])}) for row in data]
    )
    torch.testing.assert_close(store.sketches(), direct, rtol=1e-5, atol=1e-6)
    assert store.corpus_labels() == [f"c{i % 3}" for i in range(45)]
    assert store.ids() == [example_id(row["input_ids"]).hex() for row in data]
    assert store.fingerprint == SPEC.fingerprint(model)
    store.verify()


def test_interrupted_run_resumes_to_identical_store(tmp_path, monkeypatch):
    model, data = make_gpt2(), corpus_dataset()
    reference = sketch_dataset(
        model, data, SPEC, tmp_path / "ref", corpus_column="source", batch_size=4, shard_size=8, progress=False
    )
    calls = {"n": 0}
    original = sketcher_module.GradientSketcher.sketch

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] == 7:  # in the middle of the 4th shard
            raise RuntimeError("simulated crash")
        return original(self, batch)

    monkeypatch.setattr(sketcher_module.GradientSketcher, "sketch", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sketch_dataset(
            model, data, SPEC, tmp_path / "run", corpus_column="source", batch_size=4, shard_size=8, progress=False
        )
    partial = SketchStore(tmp_path / "run")
    assert not partial.complete and len(partial) == 24  # three whole shards, nothing else
    monkeypatch.setattr(sketcher_module.GradientSketcher, "sketch", original)
    resumed = sketch_dataset(
        model, data, SPEC, tmp_path / "run", corpus_column="source", batch_size=5, shard_size=8, progress=False
    )
    assert resumed.complete and len(resumed) == 45
    assert resumed.ids() == reference.ids()
    assert resumed.corpus_labels() == reference.corpus_labels()
    torch.testing.assert_close(resumed.sketches(), reference.sketches(), rtol=1e-5, atol=1e-6)
    starts = [s["start"] for s in resumed.manifest["shards"]]
    assert starts == list(range(0, 45, 8))


def test_resume_refuses_other_spec_model_or_data(tmp_path):
    model, data = make_gpt2(), corpus_dataset()
    path = tmp_path / "s"
    sketch_dataset(model, data.select(range(20)), SPEC, path, batch_size=8, shard_size=8, progress=False)
    with pytest.raises(SpecMismatchError, match="fingerprint"):
        sketch_dataset(
            model,
            data.select(range(20)),
            ValuationSpec(targets=GPT2_TARGETS, proj_dim=32, seed=1, proj_factor=8),
            path,
            progress=False,
        )
    with pytest.raises(SpecMismatchError, match="fingerprint"):
        sketch_dataset(make_gpt2(seed=1), data.select(range(20)), SPEC, path, shard_size=8, progress=False)
    with pytest.raises(SpecMismatchError, match="dataset settings"):
        sketch_dataset(model, data, SPEC, path, shard_size=8, progress=False)  # 45 rows, not 20
    shuffled = data.select(list(range(19, -1, -1)))
    with pytest.raises(SpecMismatchError, match="Example 0"):
        sketch_dataset(model, shuffled, SPEC, path, shard_size=8, progress=False)
    fresh = sketch_dataset(model, shuffled, SPEC, path, shard_size=8, progress=False, overwrite=True)
    assert fresh.ids()[0] == example_id(data[19]["input_ids"]).hex()
    # the buyer's fingerprint: another model is refused before anything is written
    with pytest.raises(SpecMismatchError, match="model to sketch with"):
        sketch_dataset(make_gpt2(seed=1), data, SPEC, tmp_path / "new", fingerprint=SPEC.fingerprint(model))
    assert not (tmp_path / "new").exists()
    assert len(sketch_dataset(model, data, SPEC, tmp_path / "new", fingerprint=SPEC.fingerprint(model))) == 45


def test_loading_with_other_spec_or_model_is_refused(tmp_path):
    model = make_gpt2()
    sketch_dataset(model, corpus_dataset(10), SPEC, tmp_path / "s", progress=False)
    SketchStore(tmp_path / "s", spec=SPEC, model=model)  # fine
    with pytest.raises(SpecMismatchError, match="sketch settings"):
        SketchStore(tmp_path / "s", spec=ValuationSpec(targets=GPT2_TARGETS, proj_dim=64, proj_factor=8))
    with pytest.raises(SpecMismatchError, match="fingerprint"):
        SketchStore(tmp_path / "s", model=make_gpt2(seed=3))


def test_tampered_or_truncated_shard_is_detected(tmp_path):
    store = sketch_dataset(make_gpt2(), corpus_dataset(10), SPEC, tmp_path / "s", shard_size=4, progress=False)
    shard = tmp_path / "s" / store.manifest["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptedError, match="checksum"):
        SketchStore(tmp_path / "s").sketches()
    shard.write_bytes(bytes(data[:100]))
    with pytest.raises(StoreCorruptedError, match="truncated or modified"):
        SketchStore(tmp_path / "s").verify()
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(StoreCorruptedError, match="not valid JSON"):
        SketchStore(tmp_path / "s")


def test_bad_datasets_give_clear_errors(tmp_path):
    model = make_gpt2()
    with pytest.raises(ValueError, match="empty"):
        sketch_dataset(model, corpus_dataset().select([]), SPEC, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="no tokens"):
        sketch_dataset(
            model, Dataset.from_list([{"input_ids": [3, 4]}, {"input_ids": []}]), SPEC, tmp_path / "b", progress=False
        )
    with pytest.raises(KeyError, match="corpus_column `nope`"):
        sketch_dataset(model, corpus_dataset(), SPEC, tmp_path / "c", corpus_column="nope", progress=False)
    with pytest.raises(KeyError, match="neither `input_ids` nor a `text` column"):
        sketch_dataset(model, Dataset.from_list([{"body": "x"}]), SPEC, tmp_path / "d", progress=False)
    long = Dataset.from_list([{"input_ids": list(range(1, 80))}])
    with pytest.raises(ValueError, match="Pass max_length=64"):
        sketch_dataset(model, long, SPEC, tmp_path / "e", progress=False)
    store = sketch_dataset(model, long, SPEC, tmp_path / "f", max_length=20, progress=False)
    assert store.ids() == [example_id(list(range(1, 80))).hex()]  # the raw example, not its truncation


def test_text_dataset_with_real_tokenizer_classification(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = make_bert(vocab=tokenizer.vocab_size, labels=2)
    spec = ValuationSpec(
        targets=["classifier", "bert.encoder.layer.1.output.dense"],
        proj_dim=32,
        task="sequence_classification",
        proj_factor=8,
    )
    data = Dataset.from_dict({"text": ["good film", "bad plot, worse acting", "fine"], "label": [1, 0, 1]})
    store = sketch_dataset(model, data, spec, tmp_path / "s", tokenizer=tokenizer, corpus="reviews", progress=False)
    batch = tokenizer(["bad plot, worse acting"], return_tensors="pt")
    direct = GradientSketcher(model, spec).sketch({**batch, "labels": torch.tensor([0])})
    torch.testing.assert_close(store.sketches()[1:2], direct, rtol=1e-5, atol=1e-6)
    assert store.corpora == ["reviews"]
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["source"]["label_column"] == "label"


def test_default_output_dir_is_a_reusable_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIP_HF_CACHE", str(tmp_path / "cache"))
    model, data = make_gpt2(), corpus_dataset(12)
    store = sketch_dataset(model, data, SPEC, progress=False)
    assert store.path.parent == tmp_path / "cache" / "stores" and len(store) == 12
    again = sketch_dataset(model, data, SPEC, progress=False)  # complete: reused, not redone
    assert again.path == store.path and SketchStore(store.path, spec=SPEC).ids() == store.ids()


def test_merged_stores_score_as_one(tmp_path):
    """Two datasets sketched separately, merged: the same rows and sketches, one corpus table;
    stores from another model or unfinished ones are refused."""
    from tip_hf.store import merge_stores

    model, data = make_gpt2(), corpus_dataset()
    a = sketch_dataset(model, data.select(range(0, 20)), SPEC, tmp_path / "a", corpus="news", shard_size=8,
                       progress=False)  # fmt: skip
    b = sketch_dataset(model, data.select(range(20, 45)), SPEC, tmp_path / "b", corpus_column="source", shard_size=8,
                       progress=False)  # fmt: skip
    merged = merge_stores([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert merged.complete and merged.ids() == a.ids() + b.ids()
    torch.testing.assert_close(merged.sketches(), torch.cat([a.sketches(), b.sketches()]))
    assert merged.corpus_labels() == a.corpus_labels() + b.corpus_labels()
    other = sketch_dataset(make_gpt2(seed=1), data.select(range(5)), SPEC, tmp_path / "o", progress=False)
    with pytest.raises(SpecMismatchError, match="fingerprint"):
        merge_stores([tmp_path / "a", other.path], tmp_path / "m2")
    with pytest.raises(TIPError, match="not empty"):
        merge_stores([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
