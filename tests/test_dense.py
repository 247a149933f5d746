"""Dense (non-token) inputs: an MLP on feature vectors, sketched exactly like a transformer.

Reference: brute-force autograd gradients of each example alone, projected with the explicit
matrix; the real Trainer + TIPCallback on the same MLP records the same sketches.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from helpers import MLP, flat_grad, tiny_training_args
from test_callback import match
from transformers import Trainer

from tip_hf import (
    GradientSketcher,
    SketchStore,
    SpecMismatchError,
    TIPCallback,
    TIPError,
    ValuationSpec,
    sketch_dataset,
)
from tip_hf.dataset import mean_sketch

TARGETS = ["hidden", "classifier"]
CLS = "sequence_classification"


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


def reference(model: MLP, sketcher: GradientSketcher, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = [p for _, p in sketcher.target_parameters()]
    matrix = sketcher.projection_matrix()
    return torch.stack(
        [
            flat_grad(F.cross_entropy(model(xi[None]).logits, yi[None]), params) @ matrix
            for xi, yi in zip(x, y, strict=True)
        ]
    )


@pytest.mark.parametrize("proj_dim", [32, 16 * 12 + 3 * 16])  # compressed, and k = D (exact)
def test_dense_sketches_equal_brute_force(proj_dim):
    torch.manual_seed(0)
    model = MLP()
    sketcher = GradientSketcher(model, ValuationSpec(targets=TARGETS, task=CLS, proj_dim=proj_dim, seed=3))
    x, y = data(7)
    sketches = sketcher.sketch({"features": x, "labels": y})
    ref = reference(model, sketcher, x, y)
    scale = ref.abs().max().item()
    torch.testing.assert_close(sketches.double(), ref, rtol=1e-5, atol=1e-5 * scale)
    alone = torch.cat([sketcher.sketch({"features": x[i : i + 1], "labels": y[i : i + 1]}) for i in range(7)])
    torch.testing.assert_close(alone, sketches, rtol=1e-5, atol=1e-6 * scale)
    if proj_dim == 16 * 12 + 3 * 16:  # k = D: the sketch keeps the whole gradient's norm
        grads = reference(model, sketcher, x, y) @ torch.linalg.pinv(sketcher.projection_matrix())
        torch.testing.assert_close(sketches.double().norm(dim=1), grads.norm(dim=1), rtol=1e-4, atol=1e-8)


def test_sketch_dataset_with_feature_column(tmp_path):
    torch.manual_seed(0)
    model = MLP()
    spec = ValuationSpec(targets=TARGETS, task=CLS, proj_dim=24, seed=1)
    x, y = data(10)
    rows = {"features": x.tolist(), "label": y.tolist(), "corpus": ["a"] * 6 + ["b"] * 4}
    rows["features"][9], rows["label"][9] = rows["features"][2], rows["label"][2]  # a duplicate in corpus b
    store = sketch_dataset(
        model,
        Dataset.from_dict(rows),
        spec,
        tmp_path / "store",
        feature_column="features",
        corpus_column="corpus",
        batch_size=3,
        shard_size=4,
        progress=False,
    )
    assert isinstance(store, SketchStore) and len(store) == 10 and store.corpora == ["a", "b"]
    x[9], y[9] = x[2], y[2]
    direct = GradientSketcher(model, spec).sketch({"features": x, "labels": y})
    torch.testing.assert_close(store.sketches(), direct, rtol=1e-5, atol=1e-6)
    ids = store.ids()
    assert ids[9] == ids[2] and len(set(ids)) == 9  # content hashes: the duplicate is recognised
    total, count, loss = mean_sketch(model, Dataset.from_dict(rows), spec, feature_column="features", progress=False)
    torch.testing.assert_close(total, direct.double().sum(0), rtol=1e-5, atol=1e-5)
    assert count == 10 and loss == pytest.approx(F.cross_entropy(model(x).logits, y).item(), rel=1e-5)
    # resuming with the same rows is a no-op; a changed row is refused
    settings = {"feature_column": "features", "corpus_column": "corpus", "shard_size": 4, "progress": False}
    again = sketch_dataset(model, Dataset.from_dict(rows), spec, tmp_path / "store", **settings)
    assert again.ids() == ids
    rows["features"][4][0] += 1.0  # first row of the second shard
    with pytest.raises(SpecMismatchError, match="Example 4"):
        sketch_dataset(model, Dataset.from_dict(rows), spec, tmp_path / "store", **settings)


def test_dense_bad_input_is_named(tmp_path):
    model = MLP()
    spec = ValuationSpec(targets=TARGETS, task=CLS, proj_dim=8, seed=0)
    x, y = data(3)
    with pytest.raises(KeyError, match="feature_column `pixels`"):
        sketch_dataset(model, Dataset.from_dict({"features": x.tolist(), "label": y.tolist()}), spec,
                       tmp_path / "a", feature_column="pixels", progress=False)  # fmt: skip
    bad = x.tolist()
    bad[1][4] = float("nan")
    with pytest.raises(ValueError, match=r"Example 1 has NaN/Inf in `features`"):
        sketch_dataset(model, Dataset.from_dict({"features": bad, "label": y.tolist()}), spec, tmp_path / "b",
                       feature_column="features", progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"need task=.sequence_classification"):
        sketch_dataset(model, Dataset.from_dict({"features": x.tolist(), "label": y.tolist()}),
                       ValuationSpec(targets=TARGETS, proj_dim=8, task="causal_lm"), tmp_path / "c",
                       feature_column="features", progress=False)  # fmt: skip
    with pytest.raises(KeyError, match="labels"):
        GradientSketcher(model, spec).sketch({"features": x})


def test_callback_on_mlp_records_sketcher_sketches(tmp_path):
    torch.manual_seed(0)
    model = MLP()
    spec = ValuationSpec(targets=TARGETS, task=CLS, proj_dim=40, seed=2, preconditioner="fisher")
    x, y = data(16, seed=1)
    train_rows = Dataset.from_dict({"features": x.tolist(), "labels": y.tolist()})
    ex, ey = data(5, seed=2)
    callback = TIPCallback(
        spec,
        eval_dataset=Dataset.from_dict({"features": ex.tolist(), "labels": ey.tolist()}),
        output_dir=tmp_path / "bundle",
        record_sketches=True,
        feature_column="features",
    )
    args = tiny_training_args(tmp_path / "run", gradient_accumulation_steps=2, learning_rate=0.0)
    Trainer(model=model, args=args, train_dataset=train_rows, callbacks=[callback]).train()
    sketcher = GradientSketcher(model, spec)
    match(torch.cat(callback.sketches), sketcher.sketch({"features": x, "labels": y}).cpu())
    g = sketcher.sketch({"features": ex, "labels": ey}).double().mean(0)
    s = sketcher.sketch({"features": x, "labels": y}).double()
    f = s.T @ s / len(s)
    lam = spec.damping * torch.trace(f) / spec.proj_dim
    q = torch.linalg.solve(f + lam * torch.eye(spec.proj_dim, dtype=torch.float64), g)
    torch.testing.assert_close(callback.bundle.query.double(), q, rtol=1e-4, atol=1e-6 * q.abs().max().item())


def test_label_formats_give_the_same_sketches_and_ids(tmp_path):
    """[N, 1] regression targets, numpy-formatted datasets and a float64 model: no batch-mate
    leakage, one id per content whatever the dataset's format."""
    torch.manual_seed(0)
    model = MLP(classes=1)  # one output: squared error
    spec = ValuationSpec(targets=TARGETS, task=CLS, proj_dim=16, seed=4)
    x = torch.randn(6, 12)
    y = torch.randn(6)
    rows = {"features": x.tolist(), "label": [[v] for v in y.tolist()]}  # one-item lists -> [N, 1]
    total, _, loss = mean_sketch(
        model, Dataset.from_dict(rows), spec, feature_column="features", batch_size=6, progress=False
    )
    alone = [
        mean_sketch(model, Dataset.from_dict({k: v[i : i + 1] for k, v in rows.items()}), spec,
                    feature_column="features", progress=False)[0]
        for i in range(6)
    ]  # fmt: skip
    torch.testing.assert_close(total, torch.stack(alone).sum(0), rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(F.mse_loss(model(x).logits.squeeze(-1), y).item(), rel=1e-5)
    params = [p for _, p in GradientSketcher(model, spec).target_parameters()]
    matrix = GradientSketcher(model, spec).projection_matrix()
    ref = sum(flat_grad((model(x[i : i + 1]).logits.squeeze() - y[i]) ** 2, params) @ matrix for i in range(6))
    torch.testing.assert_close(total, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())

    labels = torch.randint(0, 3, (6,))
    plain = Dataset.from_dict({"features": x.tolist(), "label": labels.tolist()})
    cls_spec = ValuationSpec(targets=TARGETS, task=CLS, proj_dim=16, seed=4)
    common = {"feature_column": "features", "progress": False}
    a = sketch_dataset(MLP(), plain, cls_spec, tmp_path / "plain", **common)
    b = sketch_dataset(MLP(), plain.with_format("numpy"), cls_spec, tmp_path / "numpy", **common)
    assert a.ids() == b.ids()
    from tip_hf.data import example_ids_by_corpus

    ids = example_ids_by_corpus(plain, cls_spec, feature_column="features")
    assert [i.hex() for i in ids["all"]] == a.ids()  # the buyer can verify a dense delivery

    double = MLP().double()
    s64 = GradientSketcher(double, cls_spec).sketch({"features": x, "labels": labels})  # float32 in, float64 model
    assert s64.shape == (6, 16) and torch.isfinite(s64).all()


def test_callback_names_a_wrong_feature_column(tmp_path):
    x, y = data(8)
    callback = TIPCallback(ValuationSpec(targets=TARGETS, task=CLS, proj_dim=8), feature_column="pixel_values")
    args = tiny_training_args(tmp_path / "run")
    trainer = Trainer(
        model=MLP(), args=args, train_dataset=Dataset.from_dict({"features": x.tolist(), "labels": y.tolist()}),
        callbacks=[callback],
    )  # fmt: skip
    with pytest.raises(TIPError, match="feature_column='pixel_values'"):
        trainer.train()
