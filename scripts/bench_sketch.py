"""Sketching throughput, side by side in one run: ours vs a training step vs the baselines.

Methods (examples/s, higher is better; peak memory of each method in a fresh process):

(a) plain forward+backward training step (all weights; and LoRA-only for the LoRA rows),
(b) tip_hf GradientSketcher at k=1024 and 4096, all 16 linear (Conv1D) modules, and LoRA,
(c) LESS/TRAK-style: batch-of-one backward, flattened gradient, dense Rademacher projection
    regenerated chunk by chunk per call (TRAK's CPU BasicProjector), and the same without
    the projection (a lower bound on its cost),
(d) torch.func vmap per-example gradients + the same dense projection,
(e) EleutherAI bergson 2.5.1's build pass (per-module p x p Kronecker, p*p*16 = k), when
    ``import bergson`` works in this interpreter (``scripts/bench_sketch.sh`` makes a venv).

Methods run interleaved batch by batch for ``--rounds`` rounds and each reports the median
of its per-batch examples/s, because a shared 2-core machine drifts by 2-3x within minutes.
Peak memory is measured afterwards, each method in a fresh process (``peak_memory_mb``).

    python scripts/bench_sketch.py                 # CPU: GPT-2 4x256, seq 128, batch 16
    python scripts/bench_sketch.py --gpt2-small --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tip_hf import GradientSketcher, ValuationSpec

ALL_LINEAR = ["transformer.h.*.attn.c_attn", "transformer.h.*.attn.c_proj", "transformer.h.*.mlp.*"]


def peak_memory_mb(fn: Callable[[dict[str, torch.Tensor]], object], batches, device: torch.device) -> float:
    """Peak memory of ``fn`` over ``batches`` above what the process held just before, after
    a warm-up call. CUDA: the allocator's peak. CPU: the kernel's resident-set high-water mark
    (``VmHWM``), reset through ``/proc/self/clear_refs`` so every byte counts, however short
    lived; run it in a fresh process (see :func:`fresh_process_peaks`), because memory an
    earlier method left in the allocator would be reused without showing up."""
    fn(batches[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for batch in batches:
            fn(batch)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    for batch in batches:
        fn(batch)
    return (_status_kb("VmHWM") - base) / 1024


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def fresh_process_peaks(names: list[str]) -> dict[str, float]:
    """Each method's :func:`peak_memory_mb` measured in its own fresh interpreter."""
    peaks = {}
    for name in names:
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--memory-of", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        peaks[name] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
    return peaks


class DenseRademacher:
    """D x k Rademacher/sqrt(k) projection regenerated in row chunks on every call from a
    seeded generator (TRAK's BasicProjector on CPU): never stored, so memory stays bounded."""

    def __init__(self, dim: int, k: int, device: torch.device, chunk: int = 32768) -> None:
        self.dim, self.k, self.device, self.chunk = dim, k, device, chunk

    def __call__(self, grads: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(grads.shape[0], self.k, device=self.device)
        gen = torch.Generator(device=self.device)
        for i, start in enumerate(range(0, self.dim, self.chunk)):
            gen.manual_seed(i)
            rows = min(self.chunk, self.dim - start)
            block = torch.randint(0, 2, (rows, self.k), generator=gen, device=self.device, dtype=torch.float32)
            out += grads[:, start : start + rows] @ (2 * block - 1)
        return out / self.k**0.5


def lm_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss


def time_call(fn: Callable[[dict[str, torch.Tensor]], object], batch: dict[str, torch.Tensor], device) -> float:
    """Examples/s of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch["input_ids"].shape[0] / (time.perf_counter() - t0)


def build(args, device: torch.device) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    layers, width, heads = (12, 768, 12) if args.gpt2_small else (args.layers, args.width, 4)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=args.seq, vocab_size=50257)
    return GPT2LMHeadModel(config).to(device).eval()


def make_lora(model):
    from peft import LoraConfig, get_peft_model

    with contextlib.redirect_stderr(open(os.devnull, "w")):
        lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"]))
    return lora.eval()


def bergson_method(model, p: int, batch_size: int, seq: int):
    """bergson's per-rank build worker on an in-memory model (its `build()` loads from the Hub)."""
    from bergson.collection import collect_gradients
    from bergson.config.config import IndexConfig
    from bergson.data import allocate_batches
    from bergson.utils.worker_utils import processor_for
    from datasets import Dataset

    tmp = tempfile.mkdtemp(prefix="bergson-")
    state = {"i": 0, "processor": None}

    def run(batch):
        state["i"] += 1
        cfg = IndexConfig(
            run_path=os.path.join(tmp, f"run{state['i']}"),
            precision="fp32",
            projection_dim=p,
            token_batch_size=batch_size * seq,
            max_batch_size=batch_size,
        )
        state["processor"] = state["processor"] or processor_for(cfg)
        rows = batch["input_ids"].tolist()
        ds = Dataset.from_dict({"input_ids": rows, "length": [len(r) for r in rows]})
        flags = {n: q.requires_grad for n, q in model.named_parameters()}
        model.requires_grad_(False)  # as bergson's setup_model_and_peft
        model.get_input_embeddings().requires_grad_(True)
        try:
            collect_gradients(
                model,
                ds,
                state["processor"],
                cfg,
                batches=allocate_batches([len(r) for r in rows], cfg.token_batch_size, max_batch_size=batch_size),
            )
        finally:
            for n, q in model.named_parameters():
                q.requires_grad_(flags[n])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per method and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--gpt2-small", action="store_true", help="12 x 768 (GPT-2 small shape), for a GPU")
    parser.add_argument("--skip-slow-baselines", action="store_true", help="skip (c) and (d)")
    parser.add_argument("--skip-memory", action="store_true", help="no peak-memory column (saves a process per method)")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: one method's peak, in this process
    args = parser.parse_args()
    device = torch.device(args.device)

    model = build(args, device)
    gen = torch.Generator().manual_seed(1)
    batches = [
        {"input_ids": torch.randint(0, 50257, (args.batch_size, args.seq), generator=gen).to(device)}
        for _ in range(args.batches)
    ]
    one = [{"input_ids": batches[0]["input_ids"][:2]}]  # slow baselines: two examples (+ warm-up)
    params = [m.weight for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    dim = sum(p.numel() for p in params)

    def plain(batch):
        model.zero_grad(set_to_none=True)
        lm_loss(model, batch).backward()

    methods: dict[str, tuple[Callable, list]] = {"(a) training step, all weights": (plain, batches)}
    for k in args.dims:
        sketcher = GradientSketcher(model, ValuationSpec(targets=ALL_LINEAR, proj_dim=k))
        methods[f"(b) tip_hf all-linear k={k}"] = (sketcher.sketch, batches)
    try:
        import bergson  # noqa: F401

        for k in args.dims:
            p = round((k / 16) ** 0.5)
            if 16 * p * p == k:
                methods[f"(e) bergson build p={p} (k={k})"] = (
                    bergson_method(model, p, args.batch_size, args.seq),
                    batches,
                )
    except ImportError:
        print("(e) bergson: not importable here -- run scripts/bench_sketch.sh for the side-by-side venv")
    if not args.skip_slow_baselines:
        for k in args.dims[:1]:
            projector = DenseRademacher(dim, k, device)

            def batch_of_one(batch, projector=projector):
                for i in range(batch["input_ids"].shape[0]):
                    g = torch.autograd.grad(lm_loss(model, {"input_ids": batch["input_ids"][i : i + 1]}), params)
                    projector(torch.cat([x.flatten() for x in g])[None])

            def batch_of_one_no_projection(batch):
                for i in range(batch["input_ids"].shape[0]):
                    torch.autograd.grad(lm_loss(model, {"input_ids": batch["input_ids"][i : i + 1]}), params)

            def vmapped(batch, projector=projector):
                from torch.func import functional_call, grad, vmap

                names = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
                frozen = {n: p.detach() for n, p in model.named_parameters()}

                def loss_one(weights, ids):
                    state = {**frozen, **{f"{n}.weight": w for n, w in zip(names, weights, strict=True)}}
                    return functional_call(model, state, (ids[None],), {"labels": ids[None]}).loss

                g = vmap(grad(loss_one), in_dims=(None, 0))(tuple(p.detach() for p in params), batch["input_ids"])
                projector(torch.cat([x.flatten(1) for x in g], 1))

            methods[f"(c) batch-of-one + dense projection k={k}"] = (batch_of_one, one)
            methods["(c') batch-of-one backward only (no projection)"] = (batch_of_one_no_projection, one)
            methods[f"(d) vmap per-example grads + dense projection k={k}"] = (vmapped, one)

    lora = make_lora(build(args, device))

    def plain_lora(batch):
        lora.zero_grad(set_to_none=True)
        lm_loss(lora, batch).backward()

    methods["(a) training step, LoRA r=8"] = (plain_lora, batches)
    for k in args.dims:
        methods[f"(b) tip_hf LoRA k={k}"] = (
            GradientSketcher(lora, ValuationSpec(targets="lora", proj_dim=k)).sketch,
            batches,
        )

    if args.memory_of:
        fn, data = methods[args.memory_of]
        print(json.dumps({"peak_mb": peak_memory_mb(fn, data, device)}))
        return
    for fn, data in methods.values():
        fn(data[0])  # warm-up: allocations, projection factors
    results: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for i in range(args.batches):  # interleaved batch by batch: drift hits every method alike
            for name, (fn, data) in methods.items():
                if i < len(data):
                    results[name].append(time_call(fn, data[i], device))
    peaks = {} if args.skip_memory else fresh_process_peaks(list(methods))

    shape = "GPT-2 small 12x768" if args.gpt2_small else f"GPT-2 {args.layers}x{args.width}"
    print(
        f"\n{shape}, seq {args.seq}, batch {args.batch_size}, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; D = {dim:,} ({len(params)} Conv1D weights); "
        f"median of {args.rounds} rounds x {args.batches} batches, interleaved\n"
    )
    ref_full = statistics.median(results["(a) training step, all weights"])
    ref_lora = statistics.median(results["(a) training step, LoRA r=8"])
    what = "CUDA allocator peak" if device.type == "cuda" else "peak RSS (VmHWM)"
    if peaks:
        print(f"peak MB: {what} above the process before the method, each method in a fresh process\n")
    print(f"{'method':<52}{'ex/s':>9}{'vs (a)':>9}{'peak MB':>10}")
    for name, runs in results.items():
        rate = statistics.median(runs)
        ref = ref_lora if "LoRA" in name else ref_full
        peak = f"{peaks[name]:>10.0f}" if name in peaks else f"{'-':>10}"
        print(f"{name:<52}{rate:>9.2f}{rate / ref:>8.2f}x{peak}")


if __name__ == "__main__":
    main()
