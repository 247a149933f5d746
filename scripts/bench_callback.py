"""Trainer throughput with and without the TIP callback, side by side in one run.

Same model (GPT-2 4x256 by default, random weights), same data and seed; each configuration
trains ``--steps`` optimizer steps, configurations interleaved for ``--rounds`` rounds,
median reported. The callback accumulates the k x k curvature from every training example
(all 16 linear modules, k=4096 by default); the end-of-training query solve (one pass over
a small eval set) is timed separately. When bergson is importable (``scripts/bench_sketch.sh``
makes such a venv) its GradientCollectorCallback runs too, with and without its normaliser.

    python scripts/bench_callback.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from tip_hf import TIPCallback, ValuationSpec
from tip_hf.curvature import CurvatureAccumulator

ALL_LINEAR = ["transformer.h.*.attn.c_attn", "transformer.h.*.attn.c_proj", "transformer.h.*.mlp.*"]


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([r["input_ids"] for r in rows])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def bergson_callbacks(normalizer: bool) -> Callable:
    """bergson 2.5.1's GradientCollectorCallback: every Linear/Conv1D of ``model.base_model``
    projected to 16x16 (16 modules -> 4096 dims); ``use_optimizer_state`` is its Adam
    normaliser. It needs ``prepare_for_gradient_collection(trainer)`` before training."""
    from pathlib import Path

    from bergson.huggingface import GradientCollectorCallback, prepare_for_gradient_collection

    def make(model, tmp):
        return [
            GradientCollectorCallback(path=Path(tmp) / "bergson", projection_dim=16, use_optimizer_state=normalizer)
        ]

    make.prepare = prepare_for_gradient_collection  # type: ignore[attr-defined]
    return make


def per_batch(callback: TIPCallback) -> TIPCallback:
    """The previous callback: a float64 rank-B update of the k x k sum at every micro-batch."""
    callback.curvature = CurvatureAccumulator(callback.spec.proj_dim, flush_rows=1)
    return callback


def curvature_update_cost(k: int, examples: int = 512) -> None:
    """The k x k update alone, per example: one float64 GEMM per 512 buffered sketches (ours)
    vs a rank-B update at every micro-batch of B (previous), for small and larger micro-batches."""
    print(f"\ncurvature update alone, k={k}, ms per example (buffered / per micro-batch):")
    for batch in (1, 4, 16):
        parts = [torch.randn(batch, k) for _ in range(examples // batch)]
        times = []
        for flush in (CurvatureAccumulator(k).flush_rows, 1):
            accumulator = CurvatureAccumulator(k, flush_rows=flush)
            start = time.perf_counter()
            for part in parts:
                accumulator.add(part)
            accumulator.flush()
            times.append((time.perf_counter() - start) / examples * 1e3)
        print(f"  micro-batch {batch:>2}: {times[0]:.2f} / {times[1]:.2f}  ({times[1] / times[0]:.1f}x)")


def run(args, data: Dataset, callbacks: Callable[[torch.nn.Module, str], list]) -> float:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=4, n_positions=args.seq, vocab_size=50257)
    model = GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=1,  # the data is exactly `steps` batches (bergson flushes at epoch end)
            learning_rate=1e-4,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            logging_strategy="no",
            dataloader_num_workers=0,
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model, args=targs, train_dataset=data, data_collator=collate, callbacks=callbacks(model, tmp)
        )
        if hasattr(callbacks, "prepare"):
            callbacks.prepare(trainer)
        start = time.perf_counter()
        trainer.train()
        return args.steps * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--proj-dim", type=int, default=4096)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    gen = torch.Generator().manual_seed(1)
    n = args.steps * args.batch_size
    data = Dataset.from_dict({"input_ids": torch.randint(0, 50257, (n, args.seq), generator=gen).tolist()})
    spec = ValuationSpec(targets=ALL_LINEAR, proj_dim=args.proj_dim)
    configs: dict[str, Callable] = {
        "Trainer": lambda model, tmp: [],
        f"Trainer + TIPCallback (k={args.proj_dim}, curvature)": lambda model, tmp: [
            TIPCallback(spec, eval_dataset=None, output_dir=tmp)
        ],
        "  previous: F updated every micro-batch": lambda model, tmp: [per_batch(TIPCallback(spec, output_dir=tmp))],
    }
    try:
        import bergson  # noqa: F401

        configs["Trainer + bergson GradientCollectorCallback (defaults, 16x16)"] = bergson_callbacks(True)
        configs["Trainer + bergson (no Adam normaliser)"] = bergson_callbacks(False)
    except ImportError as e:
        print(f"bergson: not importable here ({e}); ./scripts/bench_sketch.sh builds a venv that has it")
    rates: dict[str, list[float]] = {name: [] for name in configs}
    for make in configs.values():  # warm-up round, not counted
        run(args, data, make)
    for _ in range(args.rounds):
        for name, make in configs.items():
            rates[name].append(run(args, data, make))
    base = statistics.median(rates["Trainer"])
    print(
        f"\nGPT-2 {args.layers}x{args.width}, seq {args.seq}, batch {args.batch_size}, CPU "
        f"{torch.get_num_threads()} threads, {args.steps} steps x {args.rounds} rounds (median)\n"
    )
    print(f"{'configuration':<58}{'ex/s':>8}{'overhead':>10}")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:<58}{rate:>8.2f}{100 * (base / rate - 1):>9.1f}%")

    curvature_update_cost(args.proj_dim)

    # the end-of-training query: sketch an eval set of 64 examples and solve
    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=4, n_positions=args.seq, vocab_size=50257)
    model = GPT2LMHeadModel(config)
    callback = TIPCallback(spec, eval_dataset=data.select(range(min(64, n))))
    callback._model = model
    callback.curvature.add(torch.randn(128, args.proj_dim))
    start = time.perf_counter()
    callback.build_bundle()
    print(f"\nend of training: query from 64 eval examples + solve: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
