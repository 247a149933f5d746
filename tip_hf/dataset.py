"""`sketch_dataset`: a `datasets.Dataset` in, a resumable :class:`SketchStore` out."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ._version import __version__
from .distributed import RECORD_PREFIX, ShardPlan, barrier, merge_rank_records, rank_and_world
from .errors import SpecMismatchError, TIPError
from .loss import IGNORE_INDEX
from .sketcher import GradientSketcher, _max_positions
from .spec import ValuationSpec
from .store import MANIFEST, SketchStore, StoreWriter

__all__ = ["dense_example_id", "example_id", "mean_sketch", "sketch_dataset", "text_example_id"]

logger = logging.getLogger(__name__)

DEFAULT_CORPUS = "all"


IDS_VERSION = "raw/2"  # ids hash the raw example (text or all tokens/features, label), never truncated tokens


def text_example_id(text: str, label: Any = None) -> bytes:
    """SHA-256 content hash (32 bytes) of a raw text example: its exact UTF-8 text (before any
    tokenisation or truncation, so case, accents and text past ``max_length`` count) and its
    label. What the seller commits to and the buyer checks a delivery with."""
    h = hashlib.sha256(b"tip_hf-text-example/2")
    h.update(b"text" + len(text.encode()).to_bytes(8, "little") + text.encode())
    if label is not None:
        h.update(b"label" + repr(label if not isinstance(label, list) else [int(x) for x in label]).encode())
    return h.digest()


def example_id(input_ids: Sequence[int], label: Any = None, token_type_ids: Sequence[int] | None = None) -> bytes:
    """SHA-256 content hash (32 bytes) of a pre-tokenised example: *all* its token ids (before
    truncation), its label (class id or label token ids) and token type ids, if any."""
    h = hashlib.sha256(b"tip_hf-example/1")
    h.update(b"ids" + torch.tensor(list(input_ids), dtype=torch.int64).numpy().astype("<i8").tobytes())
    if token_type_ids is not None:
        h.update(b"tt" + torch.tensor(list(token_type_ids), dtype=torch.int64).numpy().astype("<i8").tobytes())
    if label is not None:
        h.update(b"label" + repr(label if not isinstance(label, list) else [int(x) for x in label]).encode())
    return h.digest()


def _plain_label(label: Any) -> Any:
    """A label as plain Python (numpy/torch scalars and arrays, tuples -> int/float/list; -0.0 -> 0.0),
    so ids and batch dtypes do not depend on the dataset's format."""
    if hasattr(label, "tolist"):
        label = label.tolist()
    if isinstance(label, tuple):
        label = list(label)
    if isinstance(label, float):
        return label + 0.0
    if isinstance(label, list):
        return [v + 0.0 if isinstance(v, float) else v for v in label]
    return label


def _label_dtype(values: list[Any]) -> torch.dtype:
    """float32 when any label is a float (regression) or a list (multi-label targets), else long."""
    return torch.float32 if any(isinstance(v, float | list) for v in values) else torch.long


def dense_example_id(features: torch.Tensor, label: Any = None) -> bytes:
    """SHA-256 content hash of a dense example: its shape, its ``float32`` values, its label."""
    x = torch.as_tensor(features, dtype=torch.float32).contiguous()
    h = hashlib.sha256(b"tip_hf-dense-example/1")
    h.update(b"shape" + repr(tuple(x.shape)).encode())
    h.update(b"x" + x.numpy().astype("<f4").tobytes())
    if label is not None:
        h.update(b"label" + repr(label if not isinstance(label, list) else [float(v) for v in label]).encode())
    return h.digest()


class _Examples:
    """Turns rows of a dataset into tokenised examples with ids and corpus labels."""

    def __init__(
        self,
        spec: ValuationSpec,
        columns: Sequence[str],
        tokenizer: Any,
        text_column: str,
        label_column: str | None,
        corpus_column: str | None,
        corpus: str | None,
        max_length: int | None,
        max_positions: int | None,
        feature_column: str | None = None,
    ) -> None:
        self.spec, self.tokenizer = spec, tokenizer
        self.text_column, self.corpus_column, self.corpus = text_column, corpus_column, corpus
        self.max_length, self.max_positions = max_length, max_positions
        self.feature_column = feature_column
        self.pretokenised = "input_ids" in columns
        if feature_column is not None:
            if feature_column not in columns:
                raise KeyError(f"feature_column `{feature_column}` is not a column of the dataset ({list(columns)}).")
            if spec.task != "sequence_classification":
                raise ValueError("Dense inputs (`feature_column`) need task='sequence_classification'.")
        elif not self.pretokenised:
            if text_column not in columns:
                raise KeyError(
                    f"The dataset has neither `input_ids` nor a `{text_column}` column "
                    f"(columns: {list(columns)}). Pass text_column=... or a tokenised dataset."
                )
            if tokenizer is None:
                raise ValueError(
                    f"The dataset has a `{text_column}` column but no tokenizer was given: "
                    "pass tokenizer=AutoTokenizer.from_pretrained(...)."
                )
        if label_column is None:
            candidates = ("labels", "label") if spec.task == "sequence_classification" else ("labels",)
            label_column = next((c for c in candidates if c in columns), None)
            if spec.task == "sequence_classification" and label_column is None:
                raise KeyError(
                    f"`sequence_classification` needs a label column; none of {candidates} "
                    f"in {list(columns)}. Pass label_column=...."
                )
        elif label_column not in columns:
            raise KeyError(f"label_column `{label_column}` is not a column of the dataset ({list(columns)}).")
        if corpus_column is not None and corpus_column not in columns:
            raise KeyError(f"corpus_column `{corpus_column}` is not a column of the dataset ({list(columns)}).")
        self.label_column = label_column

    def settings(self) -> dict[str, Any]:
        return {
            "text_column": None if self.pretokenised or self.feature_column else self.text_column,
            "label_column": self.label_column,
            "corpus_column": self.corpus_column,
            "corpus": self.corpus,
            "max_length": self.max_length,
            "tokenizer": None if self.tokenizer is None else type(self.tokenizer).__name__,
            "ids": IDS_VERSION,
        } | ({"feature_column": self.feature_column} if self.feature_column else {})

    def _dense_rows(self, batch: dict[str, list[Any]], start: int) -> list[dict[str, Any]]:
        rows = []
        for i, value in enumerate(batch[self.feature_column]):  # type: ignore[index]
            x = torch.as_tensor(value, dtype=torch.float32)
            if x.numel() == 0:
                raise ValueError(f"Example {start + i} has an empty `{self.feature_column}`; remove empty rows.")
            if not torch.isfinite(x).all():
                raise ValueError(
                    f"Example {start + i} has NaN/Inf in `{self.feature_column}`; impute or drop it first."
                )
            label = _plain_label(batch[self.label_column][i]) if self.label_column else None
            corpus = str(batch[self.corpus_column][i]) if self.corpus_column else (self.corpus or DEFAULT_CORPUS)
            rows.append({"features": x, "label": label, "corpus": corpus, "id": dense_example_id(x, label)})
        return rows

    def rows(self, batch: dict[str, list[Any]], start: int) -> list[dict[str, Any]]:
        if self.feature_column is not None:
            return self._dense_rows(batch, start)
        n = len(next(iter(batch.values())))
        if self.pretokenised:
            input_ids = [list(x) for x in batch["input_ids"]]
        else:
            texts = batch[self.text_column]
            bad = [start + i for i, t in enumerate(texts) if not isinstance(t, str)]
            if bad:
                raise TypeError(f"Column `{self.text_column}` holds non-text values at rows {bad[:5]}.")
            input_ids = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        token_types = batch.get("token_type_ids")
        rows = []
        for i in range(n):
            ids = input_ids[i]
            tt = list(token_types[i]) if token_types is not None else None
            label = _plain_label(batch[self.label_column][i]) if self.label_column else None
            raw_id = example_id(ids, label, tt) if self.pretokenised else text_example_id(texts[i], label)
            limit = self.max_length or self.max_positions
            if limit is not None and len(ids) > limit:
                if self.max_length is None:
                    raise ValueError(
                        f"Example {start + i} has {len(ids)} tokens, more than the model's {limit} positions. "
                        f"Pass max_length={limit} (or less) to truncate, or split long documents."
                    )
                ids, tt = ids[: self.max_length], None if tt is None else tt[: self.max_length]
                label = label[: self.max_length] if isinstance(label, list) else label
            if len(ids) == 0:
                raise ValueError(f"Example {start + i} has no tokens; remove empty rows from the dataset.")
            corpus = str(batch[self.corpus_column][i]) if self.corpus_column else (self.corpus or DEFAULT_CORPUS)
            rows.append({"input_ids": ids, "token_type_ids": tt, "label": label, "corpus": corpus, "id": raw_id})
        return rows

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Right-pad a list of examples into a Trainer-style batch (dense ones: stack them)."""
        feature_column, task = self.feature_column, self.spec.task
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        pad_id = 0 if pad_id is None else int(pad_id)
        if feature_column is not None:
            shapes = {tuple(r["features"].shape) for r in rows}
            if len(shapes) != 1:
                raise ValueError(f"`{feature_column}` must have one shape across examples, got {sorted(shapes)[:3]}.")
            values = [r["label"] for r in rows]
            labels = torch.tensor(values, dtype=_label_dtype(values))
            return {feature_column: torch.stack([r["features"] for r in rows]), "labels": labels}
        length = max(len(r["input_ids"]) for r in rows)
        n = len(rows)
        input_ids = torch.full((n, length), pad_id, dtype=torch.long)
        mask = torch.zeros(n, length, dtype=torch.long)
        batch: dict[str, torch.Tensor] = {}
        for i, r in enumerate(rows):
            input_ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        if rows[0]["token_type_ids"] is not None:
            tt = torch.zeros(n, length, dtype=torch.long)
            for i, r in enumerate(rows):
                tt[i, : len(r["token_type_ids"])] = torch.tensor(r["token_type_ids"])
            batch["token_type_ids"] = tt
        if task == "causal_lm":
            labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
            for i, r in enumerate(rows):
                row = r["label"] if r["label"] is not None else r["input_ids"]
                labels[i, : len(row)] = torch.tensor(row)
        else:
            values = [r["label"] for r in rows]
            labels = torch.tensor(values, dtype=_label_dtype(values))
        batch.update(input_ids=input_ids, attention_mask=mask, labels=labels)
        return batch


def _sketch_rows(
    sketcher: GradientSketcher, examples: _Examples, rows: list[dict[str, Any]], batch_size: int, bar: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sketches ``[n, k]`` (CPU) and ids ``[n, 32]`` of one shard's rows, ``batch_size`` at a time."""
    parts = []
    for b in range(0, len(rows), batch_size):
        batch = rows[b : b + batch_size]
        parts.append(sketcher.sketch(examples.collate(batch)).cpu())
        bar.update(len(batch))
    return torch.cat(parts), torch.tensor([list(r["id"]) for r in rows], dtype=torch.uint8)


def _chunks(dataset: Any, start: int, size: int) -> Iterator[tuple[int, dict[str, list[Any]]]]:
    """Column-dict chunks of ``size`` rows from row ``start`` (map-style or streaming)."""
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        for lo in range(start, len(dataset), size):
            yield lo, dataset[lo : lo + size]
        return
    iterator = iter(dataset.skip(start) if hasattr(dataset, "skip") else dataset)
    lo = start
    while True:
        rows = [row for _, row in zip(range(size), iterator, strict=False)]
        if not rows:
            return
        yield lo, {key: [row[key] for row in rows] for key in rows[0]}
        lo += len(rows)


def _columns(dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:
        features = getattr(dataset, "features", None)
        if features is None:
            first = next(iter(dataset))
            return list(first)
        names = list(features)
    return list(names)


def _setup(
    model: nn.Module,
    dataset: Any,
    spec: ValuationSpec,
    tokenizer: Any,
    text_column: str,
    label_column: str | None,
    corpus_column: str | None,
    corpus: str | None,
    max_length: int | None,
    autocast_dtype: torch.dtype | None,
    feature_column: str | None = None,
) -> tuple[GradientSketcher, _Examples]:
    sketcher = GradientSketcher(model, spec, autocast_dtype=autocast_dtype)
    examples = _Examples(
        spec,
        _columns(dataset),
        tokenizer,
        text_column,
        label_column,
        corpus_column,
        corpus,
        max_length,
        _max_positions(sketcher.model),
        feature_column,
    )
    return sketcher, examples


def sketch_dataset(
    model: nn.Module,
    dataset: Any,
    spec: ValuationSpec,
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
        SpecMismatchError: ``output_dir`` holds a store made with other settings, model or data.
        ValueError: empty dataset, empty or over-long example.
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"`batch_size` and `shard_size` must be >= 1, got {batch_size}, {shard_size}.")
    sketcher, examples = _setup(
        model,
        dataset,
        spec,
        tokenizer,
        text_column,
        label_column,
        corpus_column,
        corpus,
        max_length,
        autocast_dtype,
        feature_column,
    )
    total = len(dataset) if hasattr(dataset, "__len__") else None
    if total == 0:
        raise ValueError("The dataset is empty: there is nothing to value.")
    expected, fingerprint = fingerprint, spec.fingerprint(sketcher.model)
    if expected is not None and fingerprint != expected:
        raise SpecMismatchError(
            "The spec/model fingerprint of the model to sketch with",
            expected,
            fingerprint,
            "Sketch with exactly the model the buyer published (same weights, config and adapters).",
        )
    source = {**examples.settings(), "num_rows": total, "shard_size": shard_size}
    path = Path(output_dir) if output_dir is not None else _default_dir(fingerprint, source, dataset)
    header = {
        "tip_hf_version": __version__,
        "spec": spec.to_dict(),
        "fingerprint": fingerprint,
        "projection": sketcher.projection.describe(),
        "proj_dim": spec.proj_dim,
        "source": source,
    }
    rank, world = rank_and_world()
    if world > 1:
        return _sketch_distributed(
            sketcher, examples, dataset, path, header, total, batch_size, shard_size, overwrite, progress, rank, world
        )
    if overwrite and path.exists():
        _remove_store(path)
    writer = _open_writer(path, header, examples, dataset)
    if writer.manifest["complete"]:
        logger.info("Store %s is already complete; nothing to do.", path)
        return SketchStore(path)
    start = writer.next_start
    bar = tqdm(total=total, initial=start, unit="ex", desc=f"sketching -> {path.name}", disable=not progress)
    try:
        for lo, chunk in _chunks(dataset, start, shard_size):
            rows = examples.rows(chunk, lo)
            sketches, ids = _sketch_rows(sketcher, examples, rows, batch_size, bar)
            codes = torch.tensor([writer.corpus_code(r["corpus"]) for r in rows], dtype=torch.int32)
            writer.append(sketches, ids, codes)
    finally:
        bar.close()
    if writer.next_start == 0:
        raise ValueError("The dataset is empty: there is nothing to value.")
    writer.finish()
    return SketchStore(path)


def _sketch_distributed(
    sketcher: GradientSketcher,
    examples: _Examples,
    dataset: Any,
    path: Path,
    header: dict[str, Any],
    total: int | None,
    batch_size: int,
    shard_size: int,
    overwrite: bool,
    progress: bool,
    rank: int,
    world: int,
) -> SketchStore:
    """Rank ``r`` sketches shards ``j = r, r + world, ...``; the main process merges (see
    :mod:`tip_hf.distributed`). Same ids, sketches and order as one process."""
    if rank == 0:
        if overwrite and path.exists():
            _remove_store(path)
        _open_writer(path, header, examples, dataset)  # creates, or checks settings and data
    barrier()
    manifest = SketchStore(path).manifest
    if manifest["complete"]:
        return SketchStore(path)
    plan = ShardPlan(path, manifest, rank, world, shard_size)
    map_style = hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
    if map_style:
        chunks: Iterator[tuple[int, dict[str, list[Any]]]] = (
            (j * shard_size, dataset[j * shard_size : (j + 1) * shard_size]) for j in plan.indices(len(dataset))
        )
    else:  # a stream: every rank reads it all and sketches only its own shards
        chunks = ((lo, chunk) for lo, chunk in _chunks(dataset, 0, shard_size) if plan.wanted(lo // shard_size))
    rows_seen = 0
    desc = f"sketching -> {path.name} (rank {rank}/{world})"
    with tqdm(unit="ex", desc=desc, disable=not progress or rank != 0) as bar:
        for lo, chunk in chunks:
            rows = examples.rows(chunk, lo)
            sketches, ids = _sketch_rows(sketcher, examples, rows, batch_size, bar)
            plan.write(lo // shard_size, sketches, ids, [r["corpus"] for r in rows], header["fingerprint"])
            rows_seen = max(rows_seen, lo + len(rows))
    if total is None:  # a stream's length: the furthest row any rank saw
        seen = torch.tensor([rows_seen], dtype=torch.int64)
        if torch.distributed.get_backend() == "nccl":
            seen = seen.cuda()
        torch.distributed.all_reduce(seen, op=torch.distributed.ReduceOp.MAX)
        total = int(seen.item())
    barrier()
    if rank == 0:
        if total == 0:
            raise ValueError("The dataset is empty: there is nothing to value.")
        merge_rank_records(path, SketchStore(path).manifest, total)
    barrier()
    return SketchStore(path)


def _default_dir(fingerprint: str, source: dict[str, Any], dataset: Any) -> Path:
    root = Path(os.environ.get("TIP_HF_CACHE", "~/.cache/tip_hf")).expanduser() / "stores"
    data = hashlib.sha256(repr((sorted(source.items()), getattr(dataset, "_fingerprint", None))).encode())
    return root / f"{fingerprint[:16]}-{data.hexdigest()[:16]}"


def _remove_store(path: Path) -> None:
    if not (path / MANIFEST).is_file():
        if path.is_dir() and any(path.iterdir()):
            raise TIPError(f"overwrite=True but '{path}' is not a sketch store; refusing to delete it.")
        return
    for child in path.iterdir():
        if child.name == MANIFEST or child.name.startswith(("shard-", ".shard-", ".manifest", RECORD_PREFIX)):
            child.unlink()
    if not any(path.iterdir()):
        shutil.rmtree(path)


def _open_writer(path: Path, header: dict[str, Any], examples: _Examples, dataset: Any) -> StoreWriter:
    if not (path / MANIFEST).is_file():
        if path.is_dir() and any(p.name != ".gitkeep" for p in path.iterdir()):
            raise TIPError(f"'{path}' exists, is not empty and holds no sketch store; choose a new output_dir.")
        return StoreWriter.create(path, header)
    store = SketchStore(path)
    manifest = store.manifest
    fix = f"Pick a new output_dir, or pass overwrite=True to discard the store at '{path}'."
    for key, what in (
        ("fingerprint", "The spec/model fingerprint"),
        ("source", "The dataset settings"),
        ("projection", "The projection"),
    ):
        if manifest[key] != header[key]:
            raise SpecMismatchError(f"{what} of the existing store at '{path}'", header[key], manifest[key], fix)
    # The data must be the same rows too: recompute the first and last id of every shard
    # (map-style datasets; a streaming dataset would have to be re-read from the start).
    map_style = hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
    for entry, shard in zip(manifest["shards"] if map_style else [], store.shards(), strict=False):
        for offset in (0, int(entry["count"]) - 1):
            index = int(entry["start"]) + offset
            row = next(_chunks(dataset, index, 1))[1]
            if examples.rows(row, index)[0]["id"] != bytes(shard.ids[offset].tolist()):
                raise SpecMismatchError(
                    f"Example {index} of the existing store at '{path}'",
                    "the dataset's row",
                    "a different example",
                    fix,
                )
    return StoreWriter(path, manifest)


def mean_sketch(
    model: nn.Module,
    dataset: Any,
    spec: ValuationSpec,
    *,
    tokenizer: Any = None,
    text_column: str = "text",
    label_column: str | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    feature_column: str | None = None,
) -> tuple[torch.Tensor, int, float]:
    """``(sum of sketches [k] float64, count, mean loss)`` over a dataset, nothing written to
    disk: the buyer's eval gradient ``g = sum / count`` and eval loss (same examples handling
    as :func:`sketch_dataset`; the loss is each example's own mean loss, averaged)."""
    sketcher, examples = _setup(
        model,
        dataset,
        spec,
        tokenizer,
        text_column,
        label_column,
        None,
        None,
        max_length,
        autocast_dtype,
        feature_column,
    )
    total, count, loss_sum = torch.zeros(spec.proj_dim, dtype=torch.float64), 0, 0.0
    size = len(dataset) if hasattr(dataset, "__len__") else None
    with tqdm(total=size, unit="ex", desc="sketching eval set", disable=not progress) as bar:
        for lo, chunk in _chunks(dataset, 0, batch_size):
            rows = examples.rows(chunk, lo)
            sketches = sketcher.sketch(examples.collate(rows))
            total += sketches.double().sum(0).cpu()
            loss_sum += float(sketcher.last_losses.double().sum())
            count += len(rows)
            bar.update(len(rows))
    if count == 0:
        raise ValueError("The evaluation dataset is empty.")
    return total, count, loss_sum / count
