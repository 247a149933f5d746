"""`build_bundle`: the buyer's query without a Trainer equals the one computed by hand from
explicit per-example sketches (F = mean s s^T, g = mean eval sketch, q = (F + lambda I)^-1 g)."""

from __future__ import annotations

import dataclasses

import torch
from datasets import Dataset

from tip_hf import GradientSketcher, ValuationSpec, build_bundle, load_bundle


def make_model():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=3)  # fmt: skip
    return BertForSequenceClassification(config).eval()


def rows(n: int, seed: int) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    return Dataset.from_list(
        [{"input_ids": torch.randint(1, 97, (int(torch.randint(3, 12, (1,), generator=gen)),), generator=gen).tolist(),
          "label": int(torch.randint(0, 3, (1,), generator=gen))} for _ in range(n)]
    )  # fmt: skip


def test_build_bundle_equals_explicit_solve(tmp_path):
    model = make_model()
    spec = ValuationSpec(targets=["classifier", "bert.encoder.layer.0.output.dense"], proj_dim=16,
                         task="sequence_classification", preconditioner="fisher", damping=0.1)  # fmt: skip
    train, evaluation = rows(40, 1), rows(12, 2)
    bundle = build_bundle(model, spec, evaluation, train_dataset=train, batch_size=7, output_dir=tmp_path / "b",
                          progress=False)  # fmt: skip
    sketcher = GradientSketcher(model, spec)

    def one_by_one(data):
        alone = [{"input_ids": torch.tensor([r["input_ids"]]), "labels": torch.tensor([r["label"]])} for r in data]
        return torch.cat([sketcher.sketch(batch) for batch in alone]).double()

    s, e = one_by_one(train), one_by_one(evaluation)
    f = s.T @ s / len(s)
    g = e.mean(0)
    lam = 0.1 * torch.trace(f) / spec.proj_dim
    q = torch.linalg.solve(f + lam * torch.eye(spec.proj_dim, dtype=torch.float64), g)
    torch.testing.assert_close(bundle.curvature, f, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(bundle.eval_gradient, g, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(bundle.query, q, rtol=1e-4, atol=1e-8)
    assert bundle.summary["n_examples"] == 40 and bundle.summary["n_eval_examples"] == 12
    assert bundle.fingerprint == spec.fingerprint(model)
    torch.testing.assert_close(load_bundle(tmp_path / "b").query, bundle.query)
    identity_spec = dataclasses.replace(spec, preconditioner="identity")
    identity = build_bundle(model, identity_spec, evaluation, progress=False)  # no training set needed: q = g
    torch.testing.assert_close(identity.query, g, rtol=1e-5, atol=1e-9)
