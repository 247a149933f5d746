"""`SketchStore`: sketches on disk as safetensors shards plus a JSON manifest.

Layout of a store directory::

    manifest.json               settings, fingerprint, corpora, one entry per shard
    shard-00000.safetensors     sketches [n, k] float32, ids [n, 32] uint8, corpus [n] int32

Every shard's SHA-256 is in the manifest and is checked when the shard is read; the
manifest's fields and types, shard file names (plain ``shard-<index>.safetensors`` names
inside the store directory) and every shard's tensors (names, dtypes, shapes, corpus codes)
are checked too, so a damaged or hostile store raises :class:`StoreCorruptedError`. Shards and
the manifest are written to a temporary file and renamed, so a store interrupted at any
point holds only whole shards, and the manifest names exactly those. Example ids are
SHA-256 content hashes of the tokens the sketch was computed from (see
:func:`tip_hf.dataset.example_id`); corpus labels are strings, stored as codes into
``manifest["corpora"]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._version import __version__
from .errors import SpecMismatchError, StoreCorruptedError, TIPError
from .spec import ValuationSpec
from .store_files import (
    MANIFEST,
    STORE_FORMAT,
    atomic_write,
    check_tensors,
    load_shard,
    manifest_spec,
    read_manifest,
    read_shard_tensors,
    write_shard,
)

__all__ = ["MANIFEST", "SketchStore", "Shard", "STORE_FORMAT", "merge_stores", "read_shard_tensors", "write_shard"]


@dataclass(frozen=True)
class Shard:
    """One shard: examples ``start .. start + len(sketches)`` of the source, in order."""

    start: int
    sketches: torch.Tensor  # [n, k] float32
    ids: torch.Tensor  # [n, 32] uint8 (SHA-256 content hashes)
    corpus_codes: torch.Tensor  # [n] int32 codes into SketchStore.corpora (the corpus names)
    losses: torch.Tensor | None = None  # [n] float32 per-example losses (None in stores before 0.3)

    @property
    def corpus(self) -> torch.Tensor:
        """Deprecated: :attr:`corpus_codes`."""
        warnings.warn("Shard.corpus is now Shard.corpus_codes", DeprecationWarning, stacklevel=2)
        return self.corpus_codes

    def id_strings(self) -> list[str]:
        return [bytes(row).hex() for row in self.ids.tolist()]


class SketchStore:
    """Read access to a sketch store (streaming, shard by shard).

    Args:
        path: the store directory.
        spec: if given, refuse a store made with other sketch settings.
        fingerprint: if given, refuse a store whose spec/model fingerprint differs.
        model: if given (with ``spec`` or the store's own spec), compute the fingerprint.

    Raises:
        FileNotFoundError: no manifest.
        StoreCorruptedError: the manifest is not a tip_hf store manifest.
        SpecMismatchError: settings or fingerprint differ from what was asked for.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        spec: ValuationSpec | None = None,
        fingerprint: str | None = None,
        model: nn.Module | None = None,
    ) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"No sketch store at '{self.path}' ({MANIFEST} missing). Create one with "
                "tip_hf.sketch_dataset(model, dataset, spec, output_dir=...)."
            )
        self.manifest: dict[str, Any] = read_manifest(manifest_path)
        self.spec = manifest_spec(self.manifest, manifest_path)
        self.check(spec=spec, fingerprint=fingerprint, model=model)

    @classmethod
    def from_arrays(
        cls,
        path: str | os.PathLike[str],
        sketches: torch.Tensor,
        corpus_labels: list[str],
        spec: ValuationSpec,
        fingerprint: str,
        *,
        ids: list[bytes] | None = None,
        shard_size: int = 4096,
        source: dict[str, Any] | None = None,
        losses: torch.Tensor | None = None,
    ) -> SketchStore:
        """Write sketches you already have (``[N, k]``) as a store: for sketches from another
        pipeline, for tests and benchmarks. ``ids`` default to hashes of the row index;
        ``losses`` (``[N]``, optional) are the examples' losses the recipe predictor weighs by."""
        sketches = torch.as_tensor(sketches, dtype=torch.float32)
        if sketches.dim() != 2 or sketches.shape[1] != spec.proj_dim or len(corpus_labels) != len(sketches):
            raise ValueError(
                f"Expected sketches [N, {spec.proj_dim}] and N corpus labels, got "
                f"{tuple(sketches.shape)} and {len(corpus_labels)} labels."
            )
        if not bool(torch.isfinite(sketches).all()):
            raise ValueError("The sketches hold NaN or Inf; a store holds finite sketches only.")
        header = {
            "tip_hf_version": __version__,
            "spec": spec.to_dict(),
            "fingerprint": fingerprint,
            "projection": {},
            "proj_dim": spec.proj_dim,
            "source": source or {"from_arrays": True},
        }
        writer = StoreWriter.create(Path(path), header)
        for lo in range(0, len(sketches), shard_size):
            rows = range(lo, min(lo + shard_size, len(sketches)))
            digests = [ids[i] if ids is not None else hashlib.sha256(b"row%d" % i).digest() for i in rows]
            writer.append(
                sketches[lo : lo + shard_size],
                torch.tensor([list(d) for d in digests], dtype=torch.uint8),
                torch.tensor([writer.corpus_code(str(corpus_labels[i])) for i in rows], dtype=torch.int32),
                None if losses is None else torch.as_tensor(losses)[lo : lo + shard_size],
            )
        writer.finish()
        return cls(path)

    # -- identity ------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def proj_dim(self) -> int:
        return self.manifest["proj_dim"]

    @property
    def gradient_dim(self) -> int:
        """D, the gradient coordinates the sketches project (``proj_dim`` when the manifest
        does not say, as in stores written ``from_arrays``): Adam's step in the predictor."""
        return int((self.manifest.get("projection") or {}).get("input_dim") or self.proj_dim)

    @property
    def corpora(self) -> list[str]:
        return list(self.manifest["corpora"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def __len__(self) -> int:
        return sum(s["count"] for s in self.manifest["shards"])

    def __repr__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return (
            f"SketchStore('{self.path}', examples={len(self)}, k={self.proj_dim}, "
            f"corpora={len(self.corpora)}, {state}, fingerprint={self.fingerprint[:12]})"
        )

    def check(
        self,
        *,
        spec: ValuationSpec | None = None,
        fingerprint: str | None = None,
        model: nn.Module | None = None,
    ) -> None:
        """Raise :class:`SpecMismatchError` unless the store matches the given spec/model."""
        if spec is not None and spec.sketch_settings() != self.spec.sketch_settings():
            raise SpecMismatchError(
                f"The sketch settings of store '{self.path}'",
                spec.sketch_settings(),
                self.spec.sketch_settings(),
                "Sketches made with different settings are not comparable: re-sketch with this spec.",
            )
        if model is not None:
            fingerprint = (spec or self.spec).fingerprint(model)
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise SpecMismatchError(
                f"The spec/model fingerprint of store '{self.path}'",
                fingerprint,
                self.fingerprint,
                "The store was sketched with other model weights or settings; re-sketch with this "
                "model, or load the model the store was made with.",
            )

    # -- reading -------------------------------------------------------------------------
    def _read_shard(self, entry: dict[str, Any]) -> Shard:
        path = self.path / entry["file"]
        tensors = load_shard(path, entry)
        check_tensors(path, tensors, entry["count"], self.proj_dim, len(self.manifest["corpora"]))
        return Shard(entry["start"], tensors["sketches"], tensors["ids"], tensors["corpus"], tensors.get("losses"))

    def shards(self) -> Iterator[Shard]:
        """Stream the shards in order, each checked against its checksum."""
        for entry in self.manifest["shards"]:
            yield self._read_shard(entry)

    def verify(self) -> None:
        """Read every shard once and check checksums, shapes and contiguity."""
        expected = 0
        for shard in self.shards():
            if shard.start != expected:
                raise StoreCorruptedError(
                    f"Store '{self.path}' has a gap: shard starts at {shard.start}, expected {expected}."
                )
            expected += len(shard.sketches)

    def sketches(self) -> torch.Tensor:
        """All sketches ``[N, k]`` (loads the whole store; prefer :meth:`shards` for big ones)."""
        parts = [s.sketches for s in self.shards()]
        return torch.cat(parts) if parts else torch.zeros(0, self.proj_dim)

    def ids(self) -> list[str]:
        """Content hash (hex) of every example, in order."""
        return [i for s in self.shards() for i in s.id_strings()]

    def corpus_codes(self) -> torch.Tensor:
        """``[N]`` int32: index into :attr:`corpora` of every example."""
        parts = [s.corpus_codes for s in self.shards()]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int32)

    def corpus_labels(self) -> list[str]:
        names = self.corpora
        return [names[c] for c in self.corpus_codes().tolist()]


class StoreWriter:
    """Creates or resumes a store; used by :func:`tip_hf.sketch_dataset`."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._codes: dict[str, int] = {}

    @classmethod
    def create(cls, path: Path, header: dict[str, Any]) -> StoreWriter:
        path.mkdir(parents=True, exist_ok=True)
        manifest = {"format": STORE_FORMAT, **header, "corpora": [], "shards": [], "complete": False}
        writer = cls(path, manifest)
        writer._save_manifest()
        return writer

    @property
    def next_start(self) -> int:
        shards = self.manifest["shards"]
        return int(shards[-1]["start"]) + int(shards[-1]["count"]) if shards else 0

    def corpus_code(self, label: str) -> int:
        """Code of a corpus label, appending new labels to ``manifest["corpora"]`` (O(1))."""
        corpora: list[str] = self.manifest["corpora"]
        if len(self._codes) != len(corpora):  # a resumed manifest: index it once
            self._codes = {name: i for i, name in enumerate(corpora)}
        if label not in self._codes:
            self._codes[label] = len(corpora)
            corpora.append(label)
        return self._codes[label]

    def append(
        self, sketches: torch.Tensor, ids: torch.Tensor, corpus: torch.Tensor, losses: torch.Tensor | None = None
    ) -> None:
        """Write one shard atomically, then record it in the manifest."""
        entry = write_shard(
            self.path,
            len(self.manifest["shards"]),
            self.next_start,
            self.manifest["fingerprint"],
            sketches,
            ids,
            corpus,
            losses,
        )
        self.manifest["shards"].append(entry)
        self.manifest["num_examples"] = self.next_start
        self._save_manifest()

    def finish(self) -> None:
        self.manifest["complete"] = True
        self._save_manifest()

    def _save_manifest(self) -> None:
        atomic_write(self.path / MANIFEST, (json.dumps(self.manifest, indent=1, sort_keys=True) + "\n").encode())


def merge_stores(
    sources: list[str | os.PathLike[str]], output_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> SketchStore:
    """One store from several finished stores sketched with the same spec and model (the
    seller's corpora from different datasets), so one ``score`` values them all: shards are
    copied in order, corpus codes mapped to one table (corpora of the same name are joined).

    Raises:
        SpecMismatchError: the stores were made with different spec/model fingerprints.
        StoreCorruptedError: a source is incomplete or damaged (checksums are verified).
    """
    if len(sources) < 2:
        raise TIPError("Merging needs at least two stores.", cli_fix="Pass two or more store folders.")
    resolved = [Path(p).resolve() for p in sources]
    if len(set(resolved)) != len(resolved):
        raise TIPError("A store is listed twice: its examples would count twice.", fix="List each store once.")
    out = Path(output_dir)
    if out.resolve() in resolved:
        raise TIPError(
            f"The output '{out}' is one of the stores to merge; merging into it would destroy it.",
            fix="Choose a new output_dir.",
            cli_fix="Choose a new --out.",
        )
    stores = [SketchStore(path) for path in sources]
    first = stores[0]
    for store in stores:
        if not store.complete:
            raise StoreCorruptedError(
                f"Store '{store.path}' is not finished; run its `tip sketch` again to finish it, then merge."
            )
        for key, what in (("fingerprint", "The spec/model fingerprint"), ("projection", "The projection")):
            if store.manifest[key] != first.manifest[key]:
                raise SpecMismatchError(
                    f"{what} of store '{store.path}'",
                    first.manifest[key],
                    store.manifest[key],
                    "Only stores sketched with the same spec and model can be merged.",
                )
    if out.exists() and any(out.iterdir()):
        if not overwrite or not (out / MANIFEST).is_file():
            raise TIPError(
                f"'{out}' exists and is not empty.",
                fix="Choose a new output_dir (or overwrite=True to replace a store there).",
                cli_fix="Choose a new --out (or --overwrite to replace a store there).",
            )
        from .store_dir import remove_store  # store_dir imports this module

        remove_store(out)  # only a sketch store is replaced
    header = {key: first.manifest[key] for key in ("tip_hf_version", "spec", "fingerprint", "projection", "proj_dim")}
    header["source"] = {"merged": [{"path": store.path.name, **store.manifest["source"]} for store in stores]}
    writer = StoreWriter.create(out, header)
    for store in stores:
        names = store.corpora
        for shard in store.shards():  # checksummed as read
            codes = torch.tensor([writer.corpus_code(names[c]) for c in shard.corpus_codes.tolist()], dtype=torch.int32)
            writer.append(shard.sketches, shard.ids, codes, shard.losses)
    writer.finish()
    return SketchStore(out)
