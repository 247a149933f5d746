"""Per-example release (when the seller's policy allows it, never under DP): the store is cut
into blocks of one ciphertext's slots; blocks are encrypted by rank ``b mod world`` under
``accelerate launch``, or by a process pool (``workers``), and kept in store order."""

from __future__ import annotations

import multiprocessing
import secrets
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..distributed import rank_and_world
from ..store import SketchStore
from ..values import clip_rows
from .commitments import ordered_digest
from .kernel import QueryKernel
from .keys import PublicContext
from .messages import Message
from .policy import ReleasePolicy
from .query import QUERY_KIND

__all__ = ["pow2_at_least", "score_examples"]


def pow2_at_least(x: float) -> int:
    """The smallest e with 2^e >= x: the scale that brings released rows to norm <= 1."""
    return int(np.ceil(np.log2(x))) if x > 0 else 0


def _blocks(store: SketchStore, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Stream blocks of ``<= size`` examples across shards: (sketches ``[n, k]``, ids
    ``[n, 32]`` uint8, corpus codes ``[n]``)."""
    held: list[tuple[torch.Tensor, ...]] = []
    count = 0
    for shard in store.shards():
        held.append((shard.sketches, shard.ids, shard.corpus_codes))
        count += len(shard.sketches)
        while count >= size:
            joined = [torch.cat(parts) for parts in zip(*held, strict=True)]
            yield tuple(part[:size] for part in joined)  # type: ignore[misc]
            held, count = [tuple(part[size:] for part in joined)], count - size
    if count:
        yield tuple(torch.cat(parts) for parts in zip(*held, strict=True))  # type: ignore[misc]


def score_examples(
    kernel: QueryKernel,
    store: SketchStore,
    policy: ReleasePolicy,
    header: dict[str, Any],
    progress: bool,
    workers: int,
    material: tuple[Message, PublicContext],
) -> tuple[list[bytes], dict[str, str]]:
    salt = secrets.token_bytes(32)
    all_ids: list[bytes] = []
    blocks: list[dict[str, Any]] = []
    names = store.corpora
    bar = tqdm(total=len(store), unit="ex", desc="scoring", disable=not progress)

    def jobs() -> Iterator[tuple[np.ndarray, int]]:
        for sketches, ids, codes in _blocks(store, kernel.params.slots):
            rows = clip_rows(sketches.double(), policy.clip_norm).numpy()
            exponent = pow2_at_least(float(np.linalg.norm(rows, axis=1).max(initial=0.0)))
            all_ids.extend(row.tobytes() for row in ids.numpy())
            blocks.append({"count": len(ids), "exponent": exponent, "corpus": [names[c] for c in codes.tolist()]})
            yield rows / 2.0**exponent, len(ids)

    blobs: list[bytes] = []
    rank, world = rank_and_world()
    if world > 1:  # under accelerate launch / torchrun: block b is encrypted by rank b mod world
        mine = []
        for index, (rows, count) in enumerate(jobs()):
            if index % world == rank:
                mine.append((index, kernel.release(rows)))
            bar.update(count)
        gathered: list[list[tuple[int, bytes]] | None] = [None] * world
        torch.distributed.all_gather_object(gathered, mine)
        blobs = [blob for _, blob in sorted(pair for part in gathered for pair in (part or []))]
    elif workers <= 1:
        for rows, count in jobs():
            blobs.append(kernel.release(rows))
            bar.update(count)
    else:
        query, public = material
        init = (query.to_bytes(), public.to_message().to_bytes(), policy.flood_bits)
        with ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_worker_init, initargs=init) as pool:
            pending: deque = deque()
            for rows, count in jobs():
                pending.append((pool.submit(_worker_block, rows), count))
                while len(pending) > 2 * workers:  # bounded: memory stays flat as N grows
                    future, done = pending.popleft()
                    blobs.append(future.result())
                    bar.update(done)
            for future, done in pending:
                blobs.append(future.result())
                bar.update(done)
    bar.close()
    header.update(
        blocks=blocks,
        clip_norm=policy.clip_norm,
        dp=None,
        commitment={"examples": len(store), "ordered": True, "root": ordered_digest(salt, all_ids)},
    )
    return blobs, {"*": salt.hex()}


_WORKER: QueryKernel | None = None


def _mp_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _worker_init(query: bytes, public: bytes, flood_bits: int) -> None:
    global _WORKER
    _WORKER = QueryKernel(Message.from_bytes(query, QUERY_KIND), PublicContext.load(public), flood_bits)


def _worker_block(rows: np.ndarray) -> bytes:
    assert _WORKER is not None
    return _WORKER.release(rows)
