"""Sketches equal projection_matrix() applied to brute-force autograd gradients of each
example alone -- for GPT-2 (Conv1D), BERT (Linear), LoRA on both, and the real MiniLM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import BERT_TARGETS, GPT2_TARGETS, add_lora, flat_grad, make_bert, make_gpt2, minilm_dir, random_batch

from tip_hf import GradientSketcher, ValuationSpec


def reference_lm(model, sketcher, batch) -> torch.Tensor:
    """g_i from HF's own loss on example i alone (no padding), projected explicitly."""
    params = [p for _, p in sketcher.target_parameters()]
    for p in params:
        p.requires_grad_(True)
    matrix = sketcher.projection_matrix()
    rows = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        x = ids[mask.bool()][None]
        rows.append(flat_grad(model(input_ids=x, labels=x).loss, params) @ matrix)
    return torch.stack(rows)


def reference_cls(model, sketcher, batch, labels) -> torch.Tensor:
    params = [p for _, p in sketcher.target_parameters()]
    for p in params:
        p.requires_grad_(True)
    matrix = sketcher.projection_matrix()
    rows = []
    for ids, mask, label in zip(batch["input_ids"], batch["attention_mask"], labels, strict=True):
        x = ids[mask.bool()][None]
        logits = model(input_ids=x).logits
        rows.append(flat_grad(F.cross_entropy(logits, label[None]), params) @ matrix)
    return torch.stack(rows)


def assert_sketch_close(sketch: torch.Tensor, reference: torch.Tensor) -> None:
    assert sketch.dtype == torch.float32
    scale = reference.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(sketch.double(), reference, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("factor", [8, 1000])  # projected sides, and exact (identity) sides
def test_gpt2_conv1d_exact(factor):
    model = make_gpt2()
    spec = ValuationSpec(targets=GPT2_TARGETS, proj_dim=96, seed=1, proj_factor=factor, proj_blocks=2)
    sketcher = GradientSketcher(model, spec)
    batch = random_batch(5, 12)
    assert_sketch_close(sketcher.sketch(batch), reference_lm(model, sketcher, batch))


def test_gpt2_custom_labels_exact():
    """labels with -100 on a prompt: only the completion tokens count."""
    model = make_gpt2()
    spec = ValuationSpec(targets=GPT2_TARGETS, proj_dim=64, proj_factor=8)
    sketcher = GradientSketcher(model, spec)
    batch = random_batch(3, 10, min_length=10)
    labels = batch["input_ids"].clone()
    labels[:, :4] = -100
    sketch = sketcher.sketch({**batch, "labels": labels})
    params = [p for _, p in sketcher.target_parameters()]
    matrix = sketcher.projection_matrix()
    for i in range(3):
        ref = flat_grad(model(input_ids=batch["input_ids"][i : i + 1], labels=labels[i : i + 1]).loss, params) @ matrix
        assert_sketch_close(sketch[i : i + 1], ref[None])


def test_bert_linear_classification_exact():
    model = make_bert()
    spec = ValuationSpec(targets=BERT_TARGETS, proj_dim=80, seed=2, task="sequence_classification", proj_factor=8)
    sketcher = GradientSketcher(model, spec)
    batch = random_batch(6, 11, seed=3)
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    assert_sketch_close(sketcher.sketch({**batch, "labels": labels}), reference_cls(model, sketcher, batch, labels))


def test_gpt2_lora_exact():
    model = add_lora(make_gpt2(), ["c_attn", "c_fc"])
    spec = ValuationSpec(targets="lora", proj_dim=64, seed=4, proj_factor=8)
    sketcher = GradientSketcher(model, spec)
    names = [t.name for t, _ in sketcher.targets]
    assert len(names) == 8 and all(".lora_A." in n or ".lora_B." in n for n in names)
    batch = random_batch(4, 9, seed=5)
    assert_sketch_close(sketcher.sketch(batch), reference_lm(model, sketcher, batch))


def test_bert_lora_exact():
    model = add_lora(make_bert(), ["query", "value"])
    spec = ValuationSpec(targets="lora", proj_dim=64, seed=5, task="sequence_classification", proj_factor=8)
    sketcher = GradientSketcher(model, spec)
    batch = random_batch(4, 9, seed=6)
    labels = torch.tensor([2, 0, 1, 1])
    assert_sketch_close(sketcher.sketch({**batch, "labels": labels}), reference_cls(model, sketcher, batch, labels))


def test_real_minilm_bert_exact():
    """The real pretrained all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide), real tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    spec = ValuationSpec(
        targets=["encoder.layer.5.attention.self.query", "encoder.layer.5.output.dense", "classifier"],
        proj_dim=256,
        task="sequence_classification",
        proj_factor=16,
    )
    sketcher = GradientSketcher(model, spec)
    texts = ["A gripping, beautifully shot film.", "Dull and far too long.", "I would watch it again tomorrow!"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    labels = torch.tensor([1, 0, 1])
    sketch = sketcher.sketch({**batch, "labels": labels})
    params = [p for _, p in sketcher.target_parameters()]
    for p in params:
        p.requires_grad_(True)
    matrix = sketcher.projection_matrix()
    for i, text in enumerate(texts):
        alone = tokenizer(text, return_tensors="pt")
        ref = flat_grad(F.cross_entropy(model(**alone).logits, labels[i : i + 1]), params) @ matrix
        assert_sketch_close(sketch[i : i + 1], ref[None])


def test_projection_matches_explicit_gradients():
    """`KroneckerProjection.project` (explicit weight gradients) is the same map as the hooks."""
    model = make_gpt2()
    sketcher = GradientSketcher(model, ValuationSpec(targets=GPT2_TARGETS, proj_dim=64, proj_factor=8))
    params = sketcher.target_parameters()
    batch = random_batch(1, 8)
    grads = torch.autograd.grad(model(**batch, labels=batch["input_ids"]).loss, [p for _, p in params])
    explicit = {t.name: g[None] for (t, _), g in zip(sketcher.targets, grads, strict=True)}
    flat = torch.cat([g.flatten() for g in grads]).double()
    torch.testing.assert_close(
        sketcher.projection.project(explicit).double(),
        (flat @ sketcher.projection_matrix())[None],
        rtol=1e-4,
        atol=1e-6,
    )


def test_token_cross_entropy_gradient_matches_autograd():
    """The per-example loss's own backward (in-place softmax - onehot) equals autograd's
    log_softmax + nll_loss, ignored tokens included; a second backward is refused."""
    from tip_hf.loss import per_example_loss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=gen) * 4
    labels = torch.randint(0, 11, (3, 6), generator=gen)
    labels[0, :2] = labels[2, 3:] = -100
    ours = logits.clone().requires_grad_(True)
    losses, counts = per_example_loss(ours, labels, "causal_lm")
    weights = torch.tensor([0.5, -1.0, 2.0])
    (losses * weights).sum().backward(retain_graph=True)
    reference = logits.clone().requires_grad_(True)
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)
    token = F.cross_entropy(reference.flatten(0, 1), targets.flatten(), reduction="none").view(3, 6)
    ref_losses = token.sum(1) / counts
    (ref_losses * weights).sum().backward()
    torch.testing.assert_close(losses, ref_losses)
    torch.testing.assert_close(ours.grad, reference.grad, rtol=1e-6, atol=1e-7)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        losses.sum().backward()
