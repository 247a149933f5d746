"""Run by tests/test_distributed.py, alone or under `accelerate launch`: sketch one dataset
into a store (map-style or streaming). TIP_TEST_CRASH_RANK / TIP_TEST_CRASH_AFTER kill one
rank (os._exit) on its (n+1)-th backward pass, as a preempted node would die."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import make_bert

from tip_hf import GradientSketcher, ValuationSpec, sketch_dataset

N_ROWS, SHARD_SIZE = 50, 8


def rows() -> list[dict]:
    gen = torch.Generator().manual_seed(5)
    out = []
    for i in range(N_ROWS):
        length = int(torch.randint(3, 20, (1,), generator=gen))
        ids = torch.randint(1, 97, (length,), generator=gen).tolist()
        out.append({"input_ids": ids, "label": i % 3, "corpus": ["news", "forum", "books"][(i // 7) % 3]})
    return out


def main(out: str, streaming: bool) -> None:
    PartialState()  # joins the process group `accelerate launch` set up (gloo on CPU)
    dist = torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
    crash_rank = int(os.environ.get("TIP_TEST_CRASH_RANK", "-1"))
    crash_after = int(os.environ.get("TIP_TEST_CRASH_AFTER", "-1"))
    calls = {"n": 0}
    original = GradientSketcher.sketch

    def counted(self, batch):
        calls["n"] += 1
        if rank == crash_rank and calls["n"] > crash_after:
            os._exit(17)
        return original(self, batch)

    GradientSketcher.sketch = counted
    model = make_bert(seed=0)
    spec = ValuationSpec(
        targets=["classifier", "bert.encoder.layer.*.output.dense"], proj_dim=64, task="sequence_classification"
    )
    data = Dataset.from_list(rows())
    if streaming:
        data = data.to_iterable_dataset()
    store = sketch_dataset(
        model, data, spec, out, corpus_column="corpus", shard_size=SHARD_SIZE, batch_size=SHARD_SIZE, progress=False
    )
    print(
        f"rank={rank} world={world} sketched_shards={calls['n']} examples={len(store)} complete={store.complete}",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1], "--streaming" in sys.argv)
