"""Sketching one store from several processes (``accelerate launch`` / ``torchrun``).

No cluster code of our own: ranks come from ``torch.distributed`` (which ``accelerate
launch`` initialises through ``Accelerator()`` / ``PartialState()``). The dataset is cut into
shards of ``shard_size`` consecutive rows; shard ``j`` belongs to rank ``j mod world``. Each
rank writes its shard files (``shard-<j>.safetensors``, the same names one process would
use) and records them in its own ``.rank-<r>.json``; nothing is shared while sketching.
After a barrier the main process merges: it orders shards by ``j``, checks that no row is
missing or repeated, maps each shard's local corpus codes to one table and writes the
manifest. A killed run is resumed by launching again, with any number of processes: shards
already recorded (by any rank, or in the manifest) are not redone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import StoreCorruptedError
from .store import MANIFEST
from .store_files import atomic_write, check_shard_entry, read_shard_tensors, write_shard

__all__ = ["rank_and_world", "barrier", "ShardPlan", "merge_rank_records", "recorded_entries"]

RECORD_PREFIX = ".rank-"


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def recorded_entries(path: Path) -> list[dict[str, Any]]:
    """Shard entries that ranks recorded but no merge has put in the manifest yet."""
    entries = []
    for record in sorted(path.glob(f"{RECORD_PREFIX}*.json")):
        entries.extend(_read_record(record))
    return entries


def _read_record(record: Path) -> list[dict[str, Any]]:
    """The shard entries of one rank's record, each checked like a manifest entry."""
    try:
        data = json.loads(record.read_bytes().decode())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise StoreCorruptedError(f"'{record}' is not valid JSON; delete it to redo its shards.") from e
    shards = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(shards, list):
        raise StoreCorruptedError(f"'{record}' is not a rank record (no `shards` list); delete it to redo its shards.")
    return [check_shard_entry(entry, record) for entry in shards]


class ShardPlan:
    """The shards this rank still has to sketch, and where it records them."""

    def __init__(self, path: Path, manifest: dict[str, Any], rank: int, world: int, shard_size: int) -> None:
        self.path, self.manifest, self.rank, self.world = path, manifest, rank, world
        self.shard_size = shard_size
        done = [*manifest["shards"], *recorded_entries(path)]
        self.done_entries = [e for e in done if (path / e["file"]).is_file()]
        self.done = {int(e["start"]) for e in self.done_entries}
        self.record_path = path / f"{RECORD_PREFIX}{rank}.json"
        self.mine: list[dict[str, Any]] = _read_record(self.record_path) if self.record_path.is_file() else []

    def wanted(self, index: int) -> bool:
        return index % self.world == self.rank and index * self.shard_size not in self.done

    def indices(self, total: int) -> Iterator[int]:
        """Shard indices of this rank still to do, for a dataset of ``total`` rows."""
        return (j for j in range((total + self.shard_size - 1) // self.shard_size) if self.wanted(j))

    def write(
        self,
        index: int,
        sketches: torch.Tensor,
        ids: torch.Tensor,
        corpus: list[str],
        fingerprint: str,
        losses: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Write shard ``index`` with shard-local corpus codes and record it (atomically)."""
        table: dict[str, int] = {}
        codes = torch.tensor([table.setdefault(name, len(table)) for name in corpus], dtype=torch.int32)
        entry = write_shard(self.path, index, index * self.shard_size, fingerprint, sketches, ids, codes, losses)
        entry["corpora"] = list(table)  # local code -> name; the merge maps them to one table
        self.mine.append(entry)
        atomic_write(self.record_path, (json.dumps({"shards": self.mine}, indent=1) + "\n").encode())
        return entry


def merge_rank_records(path: Path, manifest: dict[str, Any], total: int | None) -> dict[str, Any]:
    """Main process, after every rank finished: one manifest from the per-rank records."""
    by_start = {int(e["start"]): e for e in manifest["shards"]}
    for entry in recorded_entries(path):
        by_start.setdefault(int(entry["start"]), entry)
    shards, expected = [], 0
    for start in sorted(by_start):
        if start != expected:
            raise StoreCorruptedError(
                f"Rows {expected}..{start - 1} of '{path}' were never sketched (a rank died?): "
                "launch the same command again to finish them."
            )
        shards.append(by_start[start])
        expected = start + int(by_start[start]["count"])
    if total is not None and expected != total:
        raise StoreCorruptedError(f"'{path}' holds {expected} of {total} rows: launch again to finish them.")
    corpora: list[str] = list(manifest["corpora"])
    codes = {name: i for i, name in enumerate(corpora)}
    merged = []
    for entry in shards:
        local = entry.pop("corpora", None)
        if local is not None:  # written by a rank: map its local codes to the store's table
            mapping = [codes.setdefault(name, len(codes)) for name in local]
            if mapping != list(range(len(local))):
                tensors = read_shard_tensors(path, {**entry, "corpora": local})  # codes checked < len(local)
                remapped = torch.tensor(mapping, dtype=torch.int32)[tensors["corpus"].long()]
                index = int(entry["file"].split("-")[1].split(".")[0])
                entry = write_shard(
                    path,
                    index,
                    int(entry["start"]),
                    manifest["fingerprint"],
                    tensors["sketches"],
                    tensors["ids"],
                    remapped,
                    tensors.get("losses"),
                )
        merged.append(entry)
    corpora = sorted(codes, key=codes.__getitem__)
    manifest.update(shards=merged, corpora=corpora, num_examples=expected, complete=True)
    atomic_write(path / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    for record in path.glob(f"{RECORD_PREFIX}*.json"):
        record.unlink()
    return manifest
