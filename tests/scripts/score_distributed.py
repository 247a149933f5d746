"""Run by tests/test_distributed.py under `accelerate launch`: score one store per example and
per corpus; rank 0 saves both results."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import PartialState

from tip_hf.he import ReleasePolicy, score_encrypted


def main(work: str) -> None:
    PartialState()
    root = Path(work)
    policy = ReleasePolicy(allow_example_release=True)
    example = score_encrypted(
        root / "query.tip", root / "store", root / "public_context.tip", "example", policy, progress=False
    )
    corpus = score_encrypted(
        root / "query.tip", root / "store", root / "public_context.tip", "corpus", policy, progress=False
    )
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if rank == 0:
        example.save(root / "example.tip")
        corpus.save(root / "corpus.tip")
    print(f"rank={rank} world={world} blocks={len(example.header['blocks'])}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
