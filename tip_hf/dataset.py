"""`sketch_dataset`: a `datasets.Dataset` in, a resumable :class:`SketchStore` out.

One process writes shards in order into the manifest; several processes (``accelerate
launch``), or a relaunch after a killed rank, go through :mod:`tip_hf.distributed`'s shard
plan. Either way: a lock keeps a second writer out, every row a resumed run skips is checked
against the store's ids, and a run that wrote nothing leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ._version import __version__
from .distributed import ShardPlan, barrier, merge_rank_records, rank_and_world, recorded_entries
from .errors import DataError, SpecMismatchError, TIPError
from .examples import (
    DEFAULT_CORPUS,
    IDS_VERSION,
    ExampleFormat,
    Examples,
    chunks,
    dense_example_id,
    example_id,
    is_map_style,
    text_example_id,
)
from .sketcher import GradientSketcher, mean_sketch, model_examples, sketch_batch
from .spec import BoundSpec, ValuationSpec
from .store import MANIFEST, SketchStore, StoreWriter, read_shard_tensors
from .store_dir import LOCK, main_process_lock, remove_if_empty, remove_store

__all__ = ["dense_example_id", "example_id", "mean_sketch", "sketch_dataset", "text_example_id"]

# kept importable from here: ids and corpus defaults used to live in this module
__all__ += ["DEFAULT_CORPUS", "IDS_VERSION"]

logger = logging.getLogger(__name__)


def _tokenizer_digest(tokenizer: Any) -> str | None:
    """A hash of the tokenizer's vocabulary: a resumed store must be tokenised the same way."""
    vocab = getattr(tokenizer, "get_vocab", None)
    if vocab is None:
        return None
    try:
        items = sorted(vocab().items())
    except Exception:  # a tokenizer without a vocabulary table
        return None
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def sketch_dataset(
    model: nn.Module,
    dataset: Any,
    spec: ValuationSpec | BoundSpec,
    output_dir: str | os.PathLike[str] | None = None,
    *,
    tokenizer: Any = None,
    text_column: str = "text",
    label_column: str | None = None,
    corpus_column: str | None = None,
    corpus: str | None = None,
    batch_size: int = 16,
    shard_size: int = 1024,
    max_length: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    overwrite: bool = False,
    progress: bool = True,
    fingerprint: str | None = None,
    feature_column: str | None = None,
) -> SketchStore:
    """Sketch every example of ``dataset`` into a store at ``output_dir``; resumes by default.

    Args:
        dataset: a ``datasets.Dataset`` (or ``IterableDataset``) that is tokenised
            (``input_ids``) or has ``text_column`` (then pass ``tokenizer``).
        output_dir: where the store goes. Default: ``$TIP_HF_CACHE`` (``~/.cache/tip_hf``)
            ``/stores/<spec fingerprint>-<data hash>``, so re-running resumes or reuses it.
        label_column: labels (classification: default ``label``/``labels``; causal LM: token
            labels with ``-100``, default: the input ids).
        corpus_column: a column naming each example's corpus; or ``corpus``: one name for all.
        batch_size: examples per backward pass (sketches do not depend on it).
        shard_size: examples per shard; the unit of resumption.
        max_length: truncate longer examples to this many tokens. Without it, an example
            longer than the model's positions is an error.
        overwrite: delete an existing store at ``output_dir`` instead of resuming it.
        fingerprint: if given (e.g. from the buyer's ``spec.json``), refuse a model whose
            spec/model fingerprint differs before sketching anything.
        feature_column: dense inputs instead of tokens (tabular features, pixels): a column
            of fixed-shape float arrays, passed to the model as the keyword of that name
            (e.g. ``pixel_values``); classification only.

    Returns:
        The completed :class:`SketchStore`.

    Raises:
        DataError: empty dataset, or a row that cannot be valued (named, with the fix).
        SpecMismatchError: ``output_dir`` holds a store made with other settings, model or
            data (every row a resume would skip is checked).
        StoreBusyError: another process is writing ``output_dir``.
    """
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if type(value) is not int or value < 1:
            raise DataError(
                f"`{name}` must be a positive integer, got {value!r}.",
                cli_fix=f"Pass --{name.replace('_', '-')} N with N >= 1.",
            )
    fmt = ExampleFormat(text_column, label_column, corpus_column, corpus, max_length, feature_column)
    sketcher = GradientSketcher(model, spec, autocast_dtype=autocast_dtype)
    spec = sketcher.spec  # a BoundSpec's spec
    examples = model_examples(sketcher.model, spec, dataset, tokenizer, fmt)
    total = len(dataset) if is_map_style(dataset) else None
    if total == 0:
        raise DataError("The dataset is empty: there is nothing to value.")
    expected, fingerprint = fingerprint, sketcher.bound.fingerprint()
    if expected is not None and fingerprint != expected:
        raise SpecMismatchError(
            "The spec/model fingerprint of the model to sketch with",
            expected,
            fingerprint,
            "Sketch with exactly the model the buyer published (same weights, config and adapters).",
        )
    source = {**examples.settings(), "num_rows": total, "shard_size": shard_size}
    if tokenizer is not None and source["text_column"] is not None:
        source["tokenizer_vocab"] = _tokenizer_digest(tokenizer)
    path = Path(output_dir) if output_dir is not None else _default_dir(fingerprint, source, dataset)
    header = {
        "tip_hf_version": __version__,
        "spec": spec.to_dict(),
        "fingerprint": fingerprint,
        "projection": sketcher.projection.describe(),
        "proj_dim": spec.proj_dim,
        "source": source,
    }
    job = _Job(sketcher, examples, dataset, path, header, total, batch_size, shard_size, progress)
    rank, world = rank_and_world()
    with main_process_lock(path, rank, world) as created:
        try:
            return job.run(overwrite, rank, world)
        except BaseException:
            if rank == 0:
                remove_if_empty(path, created)
            raise


class _Job:
    """One call of :func:`sketch_dataset`: open or check the store, sketch what is missing."""

    def __init__(
        self,
        sketcher: GradientSketcher,
        examples: Examples,
        dataset: Any,
        path: Path,
        header: dict[str, Any],
        total: int | None,
        batch_size: int,
        shard_size: int,
        progress: bool,
    ) -> None:
        self.sketcher, self.examples, self.dataset, self.path, self.header = sketcher, examples, dataset, path, header
        self.total, self.batch_size, self.shard_size, self.progress = total, batch_size, shard_size, progress

    def run(self, overwrite: bool, rank: int, world: int) -> SketchStore:
        error: BaseException | None = None
        writer = None
        if rank == 0:
            try:
                if overwrite:
                    remove_store(self.path)
                writer = self._open_writer()
            except BaseException as e:  # every rank must learn that the main process refused
                error = e
        if world > 1:
            flag = [None if error is None else f"{type(error).__name__}: {error}"]
            torch.distributed.broadcast_object_list(flag, src=0)
            if error is None and flag[0] is not None:
                raise TIPError(f"The main process refused to sketch: {flag[0]}")
        if error is not None:
            raise error
        manifest = SketchStore(self.path).manifest
        if manifest["complete"]:
            logger.info("Store %s is already complete; nothing to do.", self.path)
            return SketchStore(self.path)
        if world > 1 or recorded_entries(self.path):  # several ranks, or a relaunch after them
            return self._sketch_planned(manifest, rank, world)
        assert writer is not None
        return self._sketch_in_order(writer)

    def _bar(self, initial: int, rank: int = 0, world: int = 1) -> Any:
        where = f" (rank {rank}/{world})" if world > 1 else ""
        return tqdm(
            total=self.total,
            initial=initial,
            unit="ex",
            desc=f"sketching -> {self.path.name}{where}",
            disable=not self.progress or rank != 0,
        )

    def _sketch_rows(self, rows: list[dict[str, Any]], bar: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sketches ``[n, k]`` (CPU), ids ``[n, 32]`` and losses ``[n]`` of one shard's rows,
        ``batch_size`` at a time."""
        parts, losses = [], []
        for b in range(0, len(rows), self.batch_size):
            batch = rows[b : b + self.batch_size]
            parts.append(sketch_batch(self.sketcher, self.examples, batch))
            losses.append(self.sketcher.last_losses.float().reshape(-1))
            bar.update(len(batch))
        ids = torch.tensor([list(r["id"]) for r in rows], dtype=torch.uint8)
        return torch.cat(parts), ids, torch.cat(losses)

    def _sketch_in_order(self, writer: StoreWriter) -> SketchStore:
        with self._bar(writer.next_start) as bar:
            for lo, chunk in chunks(self.dataset, writer.next_start, self.shard_size):
                rows = self.examples.rows(chunk, lo)
                sketches, ids, losses = self._sketch_rows(rows, bar)
                codes = torch.tensor([writer.corpus_code(r["corpus"]) for r in rows], dtype=torch.int32)
                writer.append(sketches, ids, codes, losses)
        if writer.next_start == 0:
            raise DataError("The dataset is empty: there is nothing to value.")
        writer.finish()
        return SketchStore(self.path)

    def _sketch_planned(self, manifest: dict[str, Any], rank: int, world: int) -> SketchStore:
        """Rank ``r`` sketches shards ``j = r, r + world, ...``; the main process merges (see
        :mod:`tip_hf.distributed`). Same ids, sketches and order as one process."""
        dataset, size = self.dataset, self.shard_size
        plan = ShardPlan(self.path, manifest, rank, world, size)
        if is_map_style(dataset):
            todo: Iterator[tuple[int, dict[str, list[Any]]]] = (
                (j * size, dataset[j * size : (j + 1) * size]) for j in plan.indices(len(dataset))
            )
        else:  # a stream: every rank reads it all and sketches only its own shards
            todo = ((lo, chunk) for lo, chunk in chunks(dataset, 0, size) if plan.wanted(lo // size))
        rows_seen = 0
        with self._bar(sum(int(e["count"]) for e in plan.done_entries), rank, world) as bar:
            for lo, chunk in todo:
                rows = self.examples.rows(chunk, lo)
                sketches, ids, losses = self._sketch_rows(rows, bar)
                plan.write(lo // size, sketches, ids, [r["corpus"] for r in rows], self.header["fingerprint"], losses)
                rows_seen = max(rows_seen, lo + len(rows))
        total = self.total
        if total is None:  # a stream's length: the furthest row any rank saw
            if world > 1:
                seen = torch.tensor([rows_seen], dtype=torch.int64)
                if torch.distributed.get_backend() == "nccl":
                    seen = seen.cuda()
                torch.distributed.all_reduce(seen, op=torch.distributed.ReduceOp.MAX)
                rows_seen = int(seen.item())
            total = max(rows_seen, max((int(e["start"]) + int(e["count"]) for e in plan.done_entries), default=0))
        barrier()
        if rank == 0:
            if total == 0:
                raise DataError("The dataset is empty: there is nothing to value.")
            merge_rank_records(self.path, SketchStore(self.path).manifest, total)
        barrier()
        return SketchStore(self.path)

    def _open_writer(self) -> StoreWriter:
        path, header = self.path, self.header
        fix = f"Pick a new output_dir, or pass overwrite=True to discard the store at '{path}'."
        cli_fix = f"Pick a new --out, or pass --overwrite to discard the store at '{path}'."
        if not (path / MANIFEST).is_file():
            self._check_done_rows([], fix, cli_fix)  # every row checked before the first backward pass
            if path.is_dir() and any(p.name not in (".gitkeep", LOCK) for p in path.iterdir()):
                raise TIPError(
                    f"'{path}' exists, is not empty and holds no sketch store.",
                    fix="Choose a new output_dir.",
                    cli_fix="Choose a new --out directory.",
                )
            return StoreWriter.create(path, header)
        manifest = SketchStore(path).manifest
        for key, what in (
            ("fingerprint", "The spec/model fingerprint"),
            ("source", "The dataset settings"),
            ("projection", "The projection"),
        ):
            if manifest[key] != header[key]:
                raise SpecMismatchError(
                    f"{what} of the existing store at '{path}'", header[key], manifest[key], fix, cli_fix=cli_fix
                )
        recorded = [e for e in recorded_entries(path) if (path / e["file"]).is_file()]  # a deleted shard: redone
        self._check_done_rows([*manifest["shards"], *recorded], fix, cli_fix)
        return StoreWriter(path, manifest)

    def _check_done_rows(self, entries: list[dict[str, Any]], fix: str, cli_fix: str) -> None:
        """Every row a resume skips must be the row that was sketched: recompute its content id
        (a hash of the raw example, no model) and compare it with the shard's. A map-style
        dataset is read whole here, so a bad row fails before any backward pass."""
        entries = sorted(entries, key=lambda e: int(e["start"]))
        end = max((int(e["start"]) + int(e["count"]) for e in entries), default=0)
        if not is_map_style(self.dataset) and not end:
            return
        if self.total is not None and end > self.total:
            raise SpecMismatchError(
                f"The number of rows of the dataset for the existing store at '{self.path}'",
                f">= {end} (rows already sketched)",
                self.total,
                fix,
                cli_fix=cli_fix,
            )
        ids: list[bytes] = []
        for lo, chunk in chunks(self.dataset, 0, self.shard_size):
            ids.extend(self.examples.ids(chunk, lo))
            if len(ids) >= end and not is_map_style(self.dataset):
                break  # a stream is checked as far as it was sketched; the rest as it is read
        for entry in entries:
            start, count = int(entry["start"]), int(entry["count"])
            stored = read_shard_tensors(self.path, entry)["ids"].numpy()
            for offset in range(count):
                index = start + offset
                if index >= len(ids) or ids[index] != stored[offset].tobytes():
                    raise SpecMismatchError(
                        f"Example {index} of the existing store at '{self.path}'",
                        "the row that was sketched",
                        "missing from the dataset"
                        if index >= len(ids)
                        else "a different example (edited, inserted or removed rows)",
                        fix,
                        cli_fix=cli_fix,
                    )


def _default_dir(fingerprint: str, source: dict[str, Any], dataset: Any) -> Path:
    root = Path(os.environ.get("TIP_HF_CACHE", "~/.cache/tip_hf")).expanduser() / "stores"
    data = hashlib.sha256(repr((sorted(source.items()), getattr(dataset, "_fingerprint", None))).encode())
    return root / f"{fingerprint[:16]}-{data.hexdigest()[:16]}"
