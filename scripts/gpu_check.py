"""Check tip_hf's GPU paths on whatever GPU is here, in a few minutes, and print a table.

1. CUDA sketches equal CPU sketches (GPT-2 Conv1D, BERT classification, LoRA; padding present).
2. Batch invariance on the GPU: an example sketched alone equals it inside a padded batch.
3. bf16 autocast sketches vs float32 sketches (cosine, relative error).
4. Throughput at real shapes (random weights): GPT-2 small (12 x 768, vocab 50,257) and
   BERT base (12 x 768), float32 and bf16 autocast, all linear modules and LoRA r=8: a
   training step vs a tip_hf sketch pass (k = 4096), and their ratio (sketch ex/s / step ex/s).

    python scripts/gpu_check.py [--json results.json]
    python scripts/gpu_check.py --smoke     # no GPU: the throughput table at tiny shapes on the CPU
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from tip_hf import GradientSketcher, ValuationSpec

GPT2_ALL = ["transformer.h.*.attn.c_attn", "transformer.h.*.attn.c_proj", "transformer.h.*.mlp.*"]
BERT_ALL = ["bert.encoder.layer.*.attention.self.*", "bert.encoder.layer.*.*.dense", "classifier"]


def gpt2(layers: int = 2, width: int = 64, vocab: int = 97, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=vocab, n_positions=1024)
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    return GPT2LMHeadModel(cfg).eval()


def bert(layers: int = 2, width: int = 64, vocab: int = 97, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        num_hidden_layers=layers,
        hidden_size=width,
        num_attention_heads=4,
        intermediate_size=4 * width,
        vocab_size=vocab,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg).eval()


def padded_batch(n: int, length: int, vocab: int, seed: int = 0, labels: int | None = None) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 3, length + 1, (n,), generator=gen)
    lengths[0] = length
    ids = torch.randint(1, vocab, (n, length), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    batch = {"input_ids": ids * mask, "attention_mask": mask}
    if labels:
        batch["labels"] = torch.randint(0, labels, (n,), generator=gen)
    return batch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm(dim=1) / b.double().norm(dim=1)).max().item()


def exactness_rows() -> list[dict[str, object]]:
    rows = []
    cases = [
        ("GPT-2 2x64, all Conv1D", gpt2, GPT2_ALL, "causal_lm", None),
        ("BERT 2x64 classification", bert, BERT_ALL, "sequence_classification", 3),
        ("GPT-2 2x64 + LoRA r=4", lambda: _lora(gpt2()), "lora", "causal_lm", None),
    ]
    for name, make, targets, task, labels in cases:
        spec = ValuationSpec(targets=targets, proj_dim=256, task=task)
        batch = padded_batch(8, 32, 97, labels=labels)
        cpu = GradientSketcher(make(), spec).sketch(batch)
        gpu_sketcher = GradientSketcher(make().cuda(), spec)
        gpu = gpu_sketcher.sketch({k: v.cuda() for k, v in batch.items()}).cpu()
        alone = torch.cat(
            [gpu_sketcher.sketch({k: v[i : i + 1].cuda() for k, v in batch.items()}).cpu() for i in range(8)]
        )
        bf16 = GradientSketcher(make().cuda(), spec, autocast_dtype=torch.bfloat16)
        low = bf16.sketch({k: v.cuda() for k, v in batch.items()}).cpu()
        cosine = torch.nn.functional.cosine_similarity(low.double(), gpu.double(), dim=1).min().item()
        rows.append(
            {
                "model": name,
                "cuda_vs_cpu_rel_err": rel_err(gpu, cpu),
                "alone_vs_batch_rel_err": rel_err(alone, gpu),
                "bf16_vs_fp32_rel_err": rel_err(low, gpu),
                "bf16_vs_fp32_min_cosine": cosine,
            }
        )
    return rows


def _lora(model: torch.nn.Module, r: int = 4, modules: Sequence[str] = ("c_attn", "c_fc")) -> torch.nn.Module:
    """LoRA on ``modules`` (frozen base), B random so that every factor has a gradient."""
    torch.manual_seed(1)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(modules), lora_dropout=0.0)
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model.eval()


def timed(fn, device: torch.device, warmup: int = 2, iters: int = 5) -> float:
    """Seconds per call, after ``warmup`` calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def throughput_rows(device: torch.device, smoke: bool = False) -> list[dict[str, object]]:
    """Training step vs sketch pass (k = 4096) per model x precision x full / LoRA."""
    rows = []
    if smoke:  # tiny shapes: checks that the script runs, not how fast
        shapes = [
            ("GPT-2 2x64, seq 32, batch 4", lambda: gpt2(2, 64, 97), GPT2_ALL, "causal_lm", 4, 32, None),
            ("BERT 2x64, seq 32, batch 4", lambda: bert(2, 64, 97), BERT_ALL, "sequence_classification", 4, 32, 3),
        ]
    else:
        shapes = [
            (
                "GPT-2 small 12x768, seq 512, batch 16",
                lambda: gpt2(12, 768, 50257),
                GPT2_ALL,
                "causal_lm",
                16,
                512,
                None,
            ),
            (
                "BERT base 12x768, seq 128, batch 64",
                lambda: bert(12, 768, 30522),
                BERT_ALL,
                "sequence_classification",
                64,
                128,
                3,
            ),
        ]
    lora_modules = {
        "causal_lm": ["c_attn", "c_proj", "c_fc"],
        "sequence_classification": ["query", "key", "value", "dense"],
    }
    for name, make, targets, task, n, length, labels in shapes:
        batch = {k: v.to(device) for k, v in padded_batch(n, length, 97 if smoke else 1000, labels=labels).items()}
        if task == "causal_lm":
            batch_train = {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}
        else:
            batch_train = batch
        for weights in ("all linear", "LoRA r=8"):
            model = make() if weights == "all linear" else _lora(make(), r=8, modules=lora_modules[task])
            model = model.to(device)
            spec = ValuationSpec(targets=targets if weights == "all linear" else "lora", proj_dim=4096, task=task)
            for dtype in (None, torch.bfloat16):

                def train_step(dtype=dtype, model=model, batch_train=batch_train) -> None:
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        loss = model(**batch_train).loss
                    loss.backward()
                    model.zero_grad(set_to_none=True)

                sketcher = GradientSketcher(model, spec, autocast_dtype=dtype)
                t_train = timed(train_step, device)
                t_sketch = timed(lambda s=sketcher, b=batch: s.sketch(b), device)
                peak = float("nan")
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    sketcher.sketch(batch)
                    peak = torch.cuda.max_memory_allocated() / 2**30
                rows.append(
                    {
                        "shape": name,
                        "weights": weights,
                        "precision": "bf16 autocast" if dtype else "float32",
                        "train_step_ex_per_s": n / t_train,
                        "sketch_k4096_ex_per_s": n / t_sketch,
                        "sketch_vs_train": t_train / t_sketch,
                        "sketch_peak_gib": peak,
                    }
                )
                print(table(rows[-1:], header=len(rows) == 1), flush=True)
            del model, sketcher
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def table(rows: list[dict[str, object]], header: bool = True) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] if header else []
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, throughput table only")
    args = parser.parse_args()
    if args.smoke:
        print(f"gpu_check --smoke: CPU, tiny shapes, torch {torch.__version__} (speeds mean nothing here)\n")
        throughput_rows(torch.device("cpu"), smoke=True)
        return
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False).")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}\n", flush=True)
    exact = exactness_rows()
    print(table(exact) + "\n", flush=True)
    speed = throughput_rows(torch.device("cuda"))
    print("\nsketch_vs_train = sketch ex/s / training-step ex/s:\n")
    print(table([{k: r[k] for k in ("shape", "weights", "precision", "sketch_vs_train")} for r in speed]), flush=True)
    ok = all(r["cuda_vs_cpu_rel_err"] < 1e-4 and r["alone_vs_batch_rel_err"] < 1e-4 for r in exact)
    ok &= all(r["bf16_vs_fp32_min_cosine"] > 0.99 for r in exact)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "exactness": exact, "throughput": speed}, f, indent=2)
    print("\nGPU check:", "PASS" if ok else "FAIL (see the table)")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
