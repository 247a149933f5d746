"""Scale-out: wall time and peak memory of sketching and encrypted scoring as N grows, one
process vs two (`accelerate launch --multi_gpu --num_processes 2`, gloo on a CPU machine).

Tiny BERT (2 x 32, 3 labels), sequences of 8-24 tokens, 10 corpora, k = 64, shards of 1024.
Scoring: per-example release (every candidate gets an encrypted value) and per-corpus
release. Each configuration runs in fresh processes; peak RSS is the largest process's.

    python scripts/bench_scale.py                 # N = 1k, 10k, 100k
    python scripts/bench_scale.py --sizes 1000 10000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

K = 64


def _model() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=0,
    )
    return BertForSequenceClassification(config).eval()


def _dataset(n: int):
    from datasets import Dataset

    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(8, 25, (n,), generator=gen).tolist()
    ids = torch.randint(1, 97, (n, 24), generator=gen)
    return Dataset.from_dict(
        {
            "input_ids": [ids[i, : lengths[i]].tolist() for i in range(n)],
            "label": [i % 3 for i in range(n)],
            "corpus": [f"corpus-{i % 10}" for i in range(n)],
        }
    )


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(task: str, n: int, work: Path) -> None:
    """One process's share of a configuration; prints a JSON line."""
    from accelerate import PartialState

    from tip_hf import ValuationSpec, sketch_dataset
    from tip_hf.distributed import rank_and_world
    from tip_hf.he import ReleasePolicy, score_encrypted

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        PartialState()
    rank, world = rank_and_world()
    data = _dataset(n) if task == "sketch" else None
    start = time.perf_counter()
    if task == "sketch":
        spec = ValuationSpec(
            targets=["bert.encoder.layer.*.output.dense", "classifier"], proj_dim=K, task="sequence_classification"
        )
        sketch_dataset(
            _model(),
            data,
            spec,
            work / f"store-{world}",
            corpus_column="corpus",
            batch_size=256,
            shard_size=1024,
            progress=False,
        )
    else:
        store = work / "store-1"
        policy = ReleasePolicy(allow_example_release=True)
        score_encrypted(
            work / "query.tip", store, work / "keys" / "public_context.tip", task.split("-")[1], policy, progress=False
        )
    print(json.dumps({"rank": rank, "seconds": time.perf_counter() - start, "peak_mb": _peak_mb()}), flush=True)


def run(task: str, n: int, work: Path, processes: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // processes)), "HF_HUB_OFFLINE": "1"}
    script = [str(Path(__file__).resolve()), "--worker", task, "--n", str(n), "--work", str(work)]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
        with socket.socket() as probe:  # a free port: the previous launch may still hold the default
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        command = [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            port,
            *script,
        ]
    begin = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - begin
    if out.returncode != 0:
        raise SystemExit(f"{task} N={n} x{processes} failed:\n{out.stderr[-3000:]}")
    lines = [json.loads(m) for m in re.findall(r'\{"rank".*?\}', out.stdout)]  # ranks may share a line
    return {"work_s": max(r["seconds"] for r in lines), "wall_s": wall, "peak_mb": max(r["peak_mb"] for r in lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.n, Path(args.work))
        return
    from tip_hf import SketchStore
    from tip_hf.he import BuyerKeys, encrypt_query
    from tip_hf.he.params import COLUMNS

    print(f"tiny BERT 2x32, k={K}, shards of 1024, {os.cpu_count()} CPU cores, torch {torch.__version__}")
    print("work s = the slowest process's time inside tip_hf (wall s adds interpreter + launcher start-up)\n")
    print("| N | step | processes | work s | wall s | us / example | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"tip-scale-{n}-"))
        try:
            for processes in (1, 2):
                r = run("sketch", n, work, processes)
                print(
                    f"| {n:,} | sketch | {processes} | {r['work_s']:.1f} | {r['wall_s']:.1f} | "
                    f"{1e6 * r['work_s'] / n:.0f} | {r['peak_mb']:.0f} |",
                    flush=True,
                )
            a, b = SketchStore(work / "store-1"), SketchStore(work / "store-2")
            assert a.ids() == b.ids(), "two processes gave another store"
            keys = BuyerKeys.generate()
            keys.save(work / "keys")
            q = torch.randn(K, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
            # a column query: the per-example release multiplies without rotating
            encrypt_query(q, keys, a.spec, fingerprint=a.fingerprint, layout=COLUMNS).save(work / "query.tip")
            for task in ("score-example", "score-corpus"):
                for processes in (1, 2):
                    r = run(task, n, work, processes)
                    print(
                        f"| {n:,} | {task} | {processes} | {r['work_s']:.1f} | {r['wall_s']:.1f} | "
                        f"{1e6 * r['work_s'] / n:.0f} | {r['peak_mb']:.0f} |",
                        flush=True,
                    )
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
