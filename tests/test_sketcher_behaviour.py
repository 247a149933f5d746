"""How the sketcher treats the model and bad input: no side effects, clear errors, fp32 hooks."""

from __future__ import annotations

import pytest
import torch
from helpers import GPT2_TARGETS, make_gpt2, random_batch

from tip_hf import GradientSketcher, NonFiniteGradientError, ValuationSpec
from tip_hf.errors import DataError


def sketcher(model=None, **kwargs):
    return GradientSketcher(
        model or make_gpt2(), ValuationSpec(targets=GPT2_TARGETS, proj_dim=64, proj_factor=8), **kwargs
    )


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


def test_no_side_effects_on_model():
    model = make_gpt2().train()
    for p in model.parameters():
        p.requires_grad_(False)
    s = sketcher(model)
    out = s.sketch(random_batch(3, 8))
    assert out.shape == (3, 64) and out.abs().sum() > 0
    assert model.training
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert hook_count(model) == 0


def test_hooks_removed_on_exception():
    model = make_gpt2()
    s = sketcher(model)
    with pytest.raises(KeyError, match="input_ids"):
        s.sketch({"attention_mask": torch.ones(2, 3)})
    bad = random_batch(2, 8)
    bad["input_ids"] = bad["input_ids"] + 1000  # out of vocabulary: refused before the forward pass
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        s.sketch(bad)
    assert hook_count(model) == 0

    def explode(*_):
        raise RuntimeError("boom inside the forward pass")

    handle = model.transformer.h[1].register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        s.sketch(random_batch(2, 8))
    handle.remove()
    assert hook_count(model) == 0
    assert s.sketch(random_batch(2, 8)).shape == (2, 64)


def test_nan_weights_raise_clear_error():
    model = make_gpt2()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteGradientError, match="NaN or Inf"):
        sketcher(model).sketch(random_batch(2, 8))


def test_overlong_sequence_is_refused():
    with pytest.raises(ValueError, match="more than the model's 64 positions"):
        sketcher().sketch({"input_ids": torch.ones(1, 65, dtype=torch.long)})


def test_example_without_targets_gives_zero_sketch(caplog):
    batch = {"input_ids": torch.tensor([[5, 0, 0], [5, 6, 7]]), "attention_mask": torch.tensor([[1, 0, 0], [1, 1, 1]])}
    out = sketcher().sketch(batch)
    assert out[0].abs().sum() == 0 and out[1].abs().sum() > 0
    assert "no target token" in caplog.text


def test_bf16_autocast_keeps_fp32_hooks():
    model = make_gpt2()
    batch = random_batch(4, 12)
    exact = sketcher(model).sketch(batch)
    mixed = sketcher(model, autocast_dtype=torch.bfloat16).sketch(batch)
    assert mixed.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(exact, mixed, dim=1)
    assert cos.min().item() > 0.98, cos


def test_empty_batch():
    assert sketcher().sketch({"input_ids": torch.zeros(0, 5, dtype=torch.long)}).shape == (0, 64)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    model = make_gpt2()
    batch = random_batch(8, 16)
    cpu = sketcher(model).sketch(batch)
    gpu = sketcher(make_gpt2().cuda()).sketch({k: v.cuda() for k, v in batch.items()}).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4 * cpu.abs().max().item())


def gpt2_classifier(pad: int | None):
    """GPT-2 sequence classifier: it pools the last token that is not ``config.pad_token_id``."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=97, num_labels=3,
                        eos_token_id=96, pad_token_id=pad, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2ForSequenceClassification(config).eval()


def test_pretokenised_rows_are_padded_with_the_models_pad_id(tmp_path):
    """No tokenizer: padding with id 0 (a real token here) would move GPT-2's pooled token onto
    padding, so a sketch would depend on its batch-mates. Padded with config.pad_token_id, batch
    size 1 and 6 agree, for stores and for the eval mean."""
    from datasets import Dataset

    from tip_hf import sketch_dataset
    from tip_hf.sketcher import mean_sketch, model_examples
    from tip_hf.spec import ExampleFormat

    model = gpt2_classifier(pad=96)
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 12, (6,), generator=gen).tolist()
    rows = [
        {"input_ids": torch.randint(1, 96, (n,), generator=gen).tolist(), "label": i % 3} for i, n in enumerate(lengths)
    ]
    data = Dataset.from_list(rows)
    spec = ValuationSpec(targets=["transformer.h.*.mlp.*", "score"], proj_dim=64, proj_factor=8,
                         task="sequence_classification")  # fmt: skip
    one = sketch_dataset(model, data, spec, tmp_path / "one", batch_size=1, progress=False).sketches().double()
    six = sketch_dataset(model, data, spec, tmp_path / "six", batch_size=6, progress=False).sketches().double()
    assert ((one - six).norm(dim=1) / one.norm(dim=1)).max().item() < 1e-5
    (sum1, n1, loss1), (sum6, n6, loss6) = (
        mean_sketch(model, data, spec, batch_size=b, progress=False) for b in (1, 6)
    )
    assert n1 == n6 == 6 and loss6 == pytest.approx(loss1, rel=1e-6)
    assert ((sum1 - sum6).norm() / sum1.norm()).item() < 1e-5

    class Tokenizer:  # a tokenizer whose pad id is not the model's: the model's is what it reads
        pad_token_id = 5

    examples = model_examples(model, spec, data, Tokenizer(), ExampleFormat())
    assert examples.pad_id == 96
    assert model_examples(gpt2_classifier(pad=None), spec, data, Tokenizer(), ExampleFormat()).pad_id == 5
    assert model_examples(gpt2_classifier(pad=None), spec, data, None, ExampleFormat()).pad_id == 0
