"""TIPCallback inside a real transformers.Trainer run: its per-example sketches equal
GradientSketcher's for the same examples and weights, whatever the Trainer's loss scaling."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from helpers import GPT2_TARGETS, make_bert, make_gpt2, tiny_training_args
from transformers import Trainer

from tip_hf import GradientSketcher, ValuationSpec
from tip_hf.bundle import load_bundle
from tip_hf.callback import TIPCallback


def lm_rows(n: int, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(4, 16, (1,), generator=gen))
        rows.append({"input_ids": torch.randint(1, 97, (length,), generator=gen).tolist()})
    return rows


def collate_lm(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Right padding, labels -100 on padding (what DataCollatorForLanguageModeling yields)."""
    length = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def collate_cls(rows: list[dict]) -> dict[str, torch.Tensor]:
    batch = collate_lm(rows)
    batch["labels"] = torch.tensor([r["label"] for r in rows])
    return batch


def train(model, rows, collate, spec, tmp_path, accumulation: int, eval_rows=None, **training_args):
    """A learning-rate-0 Trainer run (weights stay put) with a recording TIPCallback."""
    args = tiny_training_args(
        tmp_path / "run",
        gradient_accumulation_steps=accumulation,
        learning_rate=0.0,
        dataloader_num_workers=0,
        seed=0,
        **training_args,
    )
    callback = TIPCallback(
        spec,
        eval_dataset=eval_rows and Dataset.from_list(eval_rows),
        output_dir=tmp_path / "bundle",
        record_sketches=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collate, callbacks=[callback]
    )
    trainer.train()
    return callback


def match(recorded: torch.Tensor, reference: torch.Tensor) -> None:
    """Every recorded sketch equals exactly one reference sketch (the Trainer shuffles)."""
    assert recorded.shape == reference.shape
    dist = torch.cdist(recorded.double(), reference.double())
    nearest = dist.argmin(1)
    assert sorted(nearest.tolist()) == list(range(len(reference)))
    err = (recorded - reference[nearest]).norm(dim=1) / reference[nearest].norm(dim=1)
    assert err.max().item() < 1e-4, err.max().item()


@pytest.mark.parametrize("accumulation", [1, 4])
def test_callback_sketches_equal_sketcher_causal_lm(tmp_path, accumulation):
    torch.manual_seed(0)
    model = make_gpt2()
    spec = ValuationSpec(targets=GPT2_TARGETS, proj_dim=64, proj_factor=8)
    rows = lm_rows(32)
    callback = train(model, rows, collate_lm, spec, tmp_path, accumulation, eval_rows=lm_rows(8, seed=1))
    recorded = torch.cat(callback.sketches)
    reference = torch.cat([GradientSketcher(model, spec).sketch(collate_lm([r])) for r in rows])
    match(recorded, reference)
    # the bundle: F from the training sketches, q = mean eval sketch (identity preconditioner)
    bundle = load_bundle(tmp_path / "bundle", fingerprint=spec.fingerprint(model))
    expected_f = reference.double().T @ reference.double() / len(rows)
    torch.testing.assert_close(bundle.curvature, expected_f, rtol=1e-3, atol=1e-3 * expected_f.abs().max().item())
    eval_sketches = torch.cat([GradientSketcher(model, spec).sketch(collate_lm([r])) for r in lm_rows(8, seed=1)])
    torch.testing.assert_close(bundle.query, eval_sketches.double().mean(0), rtol=1e-4, atol=1e-6)
    assert bundle.summary["n_examples"] == 32 and bundle.summary["eigenvalue_max"] > 0
    with torch.no_grad():  # eval loss: each example's own token-mean loss, averaged
        own = [model(**collate_lm([r])).loss.item() for r in lm_rows(8, seed=1)]
    assert bundle.summary["eval_loss"] == pytest.approx(sum(own) / len(own), rel=1e-5)


def test_callback_sketches_equal_sketcher_classification(tmp_path):
    model = make_bert()
    spec = ValuationSpec(
        targets=["bert.encoder.layer.*.output.dense", "classifier"],
        proj_dim=64,
        proj_factor=8,
        task="sequence_classification",
        preconditioner="fisher",
    )
    rows = [dict(r, label=i % 3) for i, r in enumerate(lm_rows(16, seed=2))]
    callback = train(model, rows, collate_cls, spec, tmp_path, 2, eval_rows=rows[:6])
    recorded = torch.cat(callback.sketches)
    sketcher = GradientSketcher(model, spec)
    reference = torch.cat([sketcher.sketch(collate_cls([r])) for r in rows])
    match(recorded, reference)
    bundle = load_bundle(tmp_path / "bundle")
    f = bundle.curvature
    lam = spec.damping * torch.trace(f) / 64
    g = torch.cat([sketcher.sketch(collate_cls([r])) for r in rows[:6]]).double().mean(0)
    expected = torch.linalg.solve(f + lam * torch.eye(64, dtype=torch.float64), g)
    # eval sketches batched vs one at a time differ by float32 rounding, which the solve amplifies
    torch.testing.assert_close(bundle.query, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_tip_trainer_helpers(tmp_path):
    from tip_hf import TIPTrainer

    model = make_gpt2()
    spec = ValuationSpec(targets=GPT2_TARGETS, proj_dim=32, proj_factor=8)
    rows = lm_rows(16)
    args = tiny_training_args(tmp_path / "run", learning_rate=1e-3, logging_strategy="steps")
    trainer = TIPTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=collate_lm,
        tip_spec=spec,
        tip_eval_dataset=Dataset.from_list(lm_rows(6, seed=3)),
    )
    trainer.train()
    assert (tmp_path / "run" / "tip_bundle" / "query.safetensors").is_file()
    q = trainer.build_query()
    candidates = Dataset.from_list([dict(r, source=f"c{i % 2}") for i, r in enumerate(lm_rows(10, seed=4))])
    store = trainer.sketch(candidates, tmp_path / "store", corpus_column="source", progress=False)
    values = trainer.plaintext_values(store)
    sketches = store.sketches().double()
    torch.testing.assert_close(torch.from_numpy(values.per_example), sketches @ q)
    assert values["c0"]["count"] == 5


def test_callback_with_peft_lora(tmp_path):
    from helpers import add_lora

    model = add_lora(make_gpt2(), ["c_attn", "c_fc"])
    spec = ValuationSpec(targets="lora", proj_dim=64)
    rows = lm_rows(16, seed=5)
    callback = train(model, rows, collate_lm, spec, tmp_path, 2)
    reference = torch.cat([GradientSketcher(model, spec).sketch(collate_lm([r])) for r in rows])
    match(torch.cat(callback.sketches), reference)
    assert callback.bundle is None  # no eval_dataset: curvature only, no query


@pytest.mark.parametrize("reentrant", [True, False])
def test_callback_with_gradient_checkpointing(tmp_path, reentrant):
    """Checkpointed blocks run their forward twice; each example is still counted once."""
    model = make_gpt2()
    spec = ValuationSpec(targets=GPT2_TARGETS, proj_dim=64, proj_factor=8)
    rows = lm_rows(12, seed=6)
    callback = train(
        model,
        rows,
        collate_lm,
        spec,
        tmp_path,
        1,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": reentrant},
    )
    model.gradient_checkpointing_disable()
    reference = torch.cat([GradientSketcher(model, spec).sketch(collate_lm([r])) for r in rows])
    match(torch.cat(callback.sketches), reference)


def test_callback_under_bf16_autocast(tmp_path):
    """bf16 mixed precision: hooks still accumulate in float32; sketches track the fp32 ones."""
    model = make_gpt2()
    spec = ValuationSpec(targets=GPT2_TARGETS, proj_dim=64, proj_factor=8)
    rows = lm_rows(12, seed=7)
    callback = train(model, rows, collate_lm, spec, tmp_path, 1, bf16=True)
    recorded = torch.cat(callback.sketches)
    assert recorded.dtype == torch.float32
    reference = torch.cat([GradientSketcher(model, spec).sketch(collate_lm([r])) for r in rows])
    cos = torch.nn.functional.cosine_similarity(recorded[:, None], reference[None], dim=-1)
    assert cos.max(1).values.min().item() > 0.98
    assert sorted(cos.argmax(1).tolist()) == list(range(len(rows)))


def test_unsupported_settings_fail_loudly(tmp_path):
    from tip_hf import TIPError

    spec = ValuationSpec(targets=GPT2_TARGETS, proj_dim=16, proj_factor=8)
    for bad in ({"torch_compile": True}, {"label_smoothing_factor": 0.1}):
        with pytest.raises(TIPError, match=r"torch\.compile|label_smoothing_factor"):
            train(make_gpt2(), lm_rows(4), collate_lm, spec, tmp_path, 1, **bad)


def curvature_of(sketches: torch.Tensor) -> torch.Tensor:
    s = sketches.double()
    return s.T @ s / len(s)


def cls_spec(**overrides) -> ValuationSpec:
    settings = {"targets": ["bert.encoder.layer.*.output.dense", "classifier"], "proj_dim": 64, "proj_factor": 8}
    return ValuationSpec(task="sequence_classification", preconditioner="fisher", **{**settings, **overrides})


def test_saturated_batches_are_skipped_not_fatal(tmp_path, caplog):
    """p(label) == 1 in float32 for every example of a batch leaves nothing to read the loss
    scale from: the batch is skipped (one warning), counted in summary.json, training goes on;
    F holds the other batches' sketches, exactly."""
    import json

    model = make_bert()
    with torch.no_grad():
        model.classifier.bias[0] = 1e4  # class 0: p = 1 exactly; class 1: p = 0, a finite gradient
    spec = cls_spec()
    rows = [dict(r, label=i % 2) for i, r in enumerate(lm_rows(8, seed=8))]
    with caplog.at_level("WARNING", logger="tip_hf"):
        callback = train(model, rows, collate_cls, spec, tmp_path, 1, eval_rows=rows, per_device_train_batch_size=1)
    assert caplog.text.count("saturated") == 1
    summary = json.loads((tmp_path / "bundle" / "summary.json").read_text())
    assert summary["skipped_batches"] == {"saturated": 4, "non_finite": 0}
    assert summary["n_examples"] == 4 == callback.curvature.count
    sketcher = GradientSketcher(model, spec)
    reference = torch.cat([sketcher.sketch(collate_cls([r])) for r in rows[1::2]])
    match(torch.cat(callback.sketches), reference)
    expected = curvature_of(reference)
    torch.testing.assert_close(callback.curvature.matrix, expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())
    # every batch saturated: nothing for the 'fisher' query to solve with; training still completes
    caplog.clear()
    with caplog.at_level("WARNING", logger="tip_hf"):
        callback = train(
            model, rows[::2], collate_cls, spec, tmp_path / "all", 1, eval_rows=rows, per_device_train_batch_size=1
        )
    assert callback.skipped == {"saturated": 4, "non_finite": 0} and callback.bundle is None
    assert "no bundle is written" in caplog.text and not (tmp_path / "all" / "bundle").exists()


class FrozenSGD(torch.optim.SGD):
    """Leaves the weights alone even when a gradient is NaN (lr=0 SGD would write 0 * NaN)."""

    def step(self, closure=None):
        return None


def test_non_finite_batch_is_skipped_not_fatal(tmp_path, caplog):
    import json

    from helpers import MLP

    torch.manual_seed(0)
    model = MLP()
    spec = ValuationSpec(targets=["hidden", "classifier"], task="sequence_classification", proj_dim=16)
    x, y = torch.randn(6, 12), torch.arange(6) % 3
    x[2, 0] = float("nan")
    eval_rows = Dataset.from_dict({"features": x[3:].tolist(), "labels": y[3:].tolist()})
    callback = TIPCallback(spec, eval_rows, tmp_path / "bundle", feature_column="features", record_sketches=True)
    args = tiny_training_args(tmp_path / "run", per_device_train_batch_size=1)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"features": x.tolist(), "labels": y.tolist()}),
        callbacks=[callback],
        optimizers=(FrozenSGD(model.parameters(), lr=0.0), None),
    )
    with caplog.at_level("WARNING", logger="tip_hf"):
        trainer.train()
    assert "NaN" in caplog.text
    summary = json.loads((tmp_path / "bundle" / "summary.json").read_text())
    assert summary["skipped_batches"] == {"saturated": 0, "non_finite": 1}
    assert summary["n_examples"] == 5 and torch.isfinite(callback.curvature.matrix).all()


def float_collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    batch = collate_lm(rows)
    batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.float32)
    return batch


@pytest.mark.parametrize("head", ["regression", "multi_label_classification"])
def test_callback_on_regression_and_multi_label_heads(tmp_path, head):
    """Per-loss normaliser: MSE (one output) and BCE (multi-label) batches give the sketcher's
    sketches, and F equals the brute-force mean of s s^T."""
    gen = torch.Generator().manual_seed(9)
    if head == "regression":
        model = make_bert(labels=1)
        labels = torch.randn(12, generator=gen).tolist()
    else:
        model = make_bert(labels=3)
        model.config.problem_type = head
        labels = (torch.rand(12, 3, generator=gen) > 0.5).float().tolist()
    rows = [dict(r, label=label) for r, label in zip(lm_rows(12, seed=9), labels, strict=True)]
    callback = train(model, rows, float_collate, cls_spec(), tmp_path, 2, eval_rows=rows[:4])
    sketcher = GradientSketcher(model, cls_spec())
    reference = torch.cat([sketcher.sketch(float_collate([r])) for r in rows])
    match(torch.cat(callback.sketches), reference)
    bundle = load_bundle(tmp_path / "bundle")
    expected = curvature_of(reference)
    torch.testing.assert_close(bundle.curvature, expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())
    assert bundle.summary["skipped_batches"] == {"saturated": 0, "non_finite": 0}


def test_multi_output_regression_is_refused(tmp_path):
    from tip_hf import TIPError

    model = make_bert(labels=2)
    model.config.problem_type = "regression"
    rows = [dict(r, label=[0.5, -1.0]) for r in lm_rows(4)]
    with pytest.raises(TIPError, match="regression"):
        train(model, rows, float_collate, cls_spec(), tmp_path, 1)


def test_left_padded_training_batches_warn(tmp_path, caplog):
    def collate_left(rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate_lm([dict(input_ids=r["input_ids"][::-1]) for r in rows])
        return {key: value.flip(1) for key, value in batch.items()}

    spec = ValuationSpec(targets=GPT2_TARGETS, proj_dim=16, proj_factor=8)
    with caplog.at_level("WARNING", logger="tip_hf"):
        train(make_gpt2(), lm_rows(8, seed=10), collate_left, spec, tmp_path, 1)
    assert caplog.text.count("left-padded") == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="tip_hf"):
        train(make_gpt2(), lm_rows(8, seed=10), collate_lm, spec, tmp_path, 1)
    assert "left-padded" not in caplog.text
