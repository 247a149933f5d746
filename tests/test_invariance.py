"""A sketch depends on its example only: not on batch mates, batch size, padding length or side."""

from __future__ import annotations

import pytest
import torch
from helpers import BERT_TARGETS, GPT2_TARGETS, add_lora, make_bert, make_gpt2

from tip_hf import GradientSketcher, ValuationSpec


def examples(n: int, vocab: int = 97, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (int(torch.randint(3, 20, (1,), generator=gen)),), generator=gen) for _ in range(n)]


def pad(seqs: list[torch.Tensor], side: str, extra: int = 0) -> dict[str, torch.Tensor]:
    length = max(len(s) for s in seqs) + extra
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        span = slice(0, len(s)) if side == "right" else slice(length - len(s), length)
        ids[i, span], mask[i, span] = s, 1
    return {"input_ids": ids, "attention_mask": mask}


def sketch_all(sketcher, seqs, batch_size, side, labels=None, extra=0) -> torch.Tensor:
    out = []
    for lo in range(0, len(seqs), batch_size):
        batch = pad(seqs[lo : lo + batch_size], side, extra)
        if labels is not None:
            batch["labels"] = labels[lo : lo + batch_size]
        out.append(sketcher.sketch(batch))
    return torch.cat(out)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """atol 1e-5 relative to each sketch's norm."""
    err = (a - b).norm(dim=1) / a.norm(dim=1)
    assert err.max().item() < 1e-5, err.max().item()


CASES = {
    "gpt2": lambda: (make_gpt2(), ValuationSpec(targets=GPT2_TARGETS, proj_dim=128, proj_factor=8), False),
    "gpt2-lora": lambda: (add_lora(make_gpt2(), ["c_attn"]), ValuationSpec(targets="lora", proj_dim=64), False),
    "bert": lambda: (
        make_bert(),
        ValuationSpec(targets=BERT_TARGETS, proj_dim=128, proj_factor=8, task="sequence_classification"),
        True,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batch_and_padding_invariance(case):
    model, spec, classification = CASES[case]()
    sketcher = GradientSketcher(model, spec)
    seqs = examples(32)
    labels = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(1)) if classification else None
    alone = sketch_all(sketcher, seqs, 1, "right", labels)
    for batch_size in (7, 32):
        for side in ("right", "left"):
            assert_same(alone, sketch_all(sketcher, seqs, batch_size, side, labels))
    # extra padding columns beyond the longest example
    assert_same(alone, sketch_all(sketcher, seqs, 7, "left", labels, extra=5))


def test_example_in_mixed_batch():
    """The same example next to very different batch mates gives the same sketch."""
    model = make_gpt2()
    sketcher = GradientSketcher(model, ValuationSpec(targets=GPT2_TARGETS, proj_dim=64, proj_factor=8))
    target = torch.arange(1, 9)
    alone = sketcher.sketch(pad([target], "right"))
    mates = [torch.full((30,), 5), torch.arange(40, 42), torch.randint(1, 97, (17,))]
    for side in ("right", "left"):
        mixed = sketcher.sketch(pad([mates[0], target, *mates[1:]], side))
        assert_same(alone, mixed[1:2])
