"""A sketch store's files: shards and manifests written atomically, and every file read back
from an untrusted store checked: every manifest field, shard entry, file name and
tensor a store reads is checked here, so a damaged or hostile store raises
:class:`StoreCorruptedError` (or :class:`SpecMismatchError` for another projection version)
instead of an exception from deep inside json, safetensors or torch."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .errors import SpecMismatchError, StoreCorruptedError
from .json_depth import MAX_JSON_DEPTH, too_deep
from .projection import PROJECTION_VERSION
from .spec import ValuationSpec

__all__ = ["MANIFEST", "STORE_FORMAT", "ID_BYTES", "check_shard_entry", "read_manifest", "manifest_spec", "load_shard",
           "check_tensors", "sha256"]  # fmt: skip

STORE_FORMAT = "tip_hf.sketch_store/1"
MANIFEST = "manifest.json"
ID_BYTES = 32
_SHARD_NAME = re.compile(r"shard-[0-9]{5,9}\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_ROWS = 2**48  # bound on any count or start in a manifest (len() must fit an index)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _damaged(where: Path, problem: str) -> StoreCorruptedError:
    return StoreCorruptedError(f"'{where}' {problem}; the store is damaged.")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


def _is_int(value: object, low: int = 0, high: int = _MAX_ROWS) -> bool:
    return type(value) is int and low <= value <= high


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, every field the store reads checked; else StoreCorruptedError."""
    try:
        manifest = json.loads(path.read_bytes().decode())
    except UnicodeDecodeError as e:
        raise _damaged(path, f"is not UTF-8 text ({_first_line(e)})") from e
    except RecursionError as e:
        raise _damaged(path, f"nests deeper than {MAX_JSON_DEPTH} levels") from e
    except ValueError as e:  # JSONDecodeError, or an integer of more than 4300 digits
        raise StoreCorruptedError(f"'{path}' is not valid JSON ({_first_line(e)}); the store is damaged.") from e
    if not isinstance(manifest, dict):
        raise _damaged(path, f"is a JSON {type(manifest).__name__}, not a sketch store manifest (an object)")
    if manifest.get("format") != STORE_FORMAT:
        found = manifest.get("format")
        shown = repr(found)[:80] if isinstance(found, str | None) else type(found).__name__
        raise StoreCorruptedError(f"'{path}' has format {shown}, expected {STORE_FORMAT!r}.")
    if too_deep(manifest):
        raise _damaged(path, f"nests deeper than {MAX_JSON_DEPTH} levels")
    for key, kind in (
        ("fingerprint", str),
        ("spec", dict),
        ("proj_dim", int),
        ("corpora", list),
        ("shards", list),
        ("complete", bool),
        ("source", dict),
        ("projection", dict),
    ):
        if key not in manifest:
            raise _damaged(path, f"lacks the `{key}` field")
        value = manifest[key]
        if not isinstance(value, kind) or (kind is int and not _is_int(value, 1)):
            raise _damaged(
                path, f"has a malformed `{key}` field (expected {'a positive int' if kind is int else kind.__name__})"
            )
    corpora = manifest["corpora"]
    if not all(isinstance(name, str) for name in corpora) or len(set(corpora)) != len(corpora):
        raise _damaged(path, "has a malformed `corpora` field (expected distinct corpus names)")
    shards = [check_shard_entry(entry, path) for entry in manifest["shards"]]
    if len({entry["file"] for entry in shards}) != len(shards):
        raise _damaged(path, "lists a shard file twice")
    if sum(entry["count"] for entry in shards) > _MAX_ROWS:
        raise _damaged(path, "declares more examples than a store can hold")
    return manifest


def check_shard_entry(entry: object, where: Path) -> dict[str, Any]:
    """One shard entry of a manifest (or of a rank's record, read from ``where``), checked:
    a plain ``shard-<index>.safetensors`` file name (so it stays inside the store directory),
    its SHA-256, ``start`` and ``count``, and the optional shard-local ``corpora`` table."""
    if not isinstance(entry, dict):
        raise _damaged(where, "has a shard entry that is not an object")
    file = entry.get("file")
    if not isinstance(file, str) or not _SHARD_NAME.fullmatch(file):
        shown = repr(file)[:80] if isinstance(file, str) else type(file).__name__
        raise _damaged(where, f"names a shard file {shown}, not shard-<index>.safetensors in the store directory")
    if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
        raise _damaged(where, f"has no valid SHA-256 for shard {file}")
    for key in ("start", "count"):
        if not _is_int(entry.get(key)):
            raise _damaged(where, f"has a malformed `{key}` for shard {file} (expected an int in 0..2^48)")
    corpora = entry.get("corpora")
    if corpora is not None and (not isinstance(corpora, list) or not all(isinstance(c, str) for c in corpora)):
        raise _damaged(where, f"has a malformed `corpora` table for shard {file}")
    return entry


def manifest_spec(manifest: dict[str, Any], path: Path) -> ValuationSpec:
    version = manifest["spec"].get("projection_version", PROJECTION_VERSION)
    if isinstance(version, str) and version != PROJECTION_VERSION:
        raise SpecMismatchError(
            f"The projection version of store '{path.parent}'",
            PROJECTION_VERSION,
            version[:80],
            "Install the tip_hf version that made the store, or re-sketch with this one.",
        )
    try:
        spec = ValuationSpec.from_dict(manifest["spec"])
    except (TypeError, ValueError, RecursionError) as e:
        raise _damaged(path, f"holds an invalid spec ({_first_line(e)})") from e
    if spec.proj_dim != manifest["proj_dim"]:
        raise _damaged(path, f"says proj_dim {manifest['proj_dim']} but its spec says {spec.proj_dim}")
    return spec


def load_shard(path: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Read one shard file and check its checksum; the tensors, not yet their shapes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise StoreCorruptedError(f"Shard '{path}' listed in the manifest is missing.") from e
    except OSError as e:
        raise StoreCorruptedError(f"Shard '{path}' cannot be read ({_first_line(e)}).") from e
    if sha256(data) != entry["sha256"]:
        raise StoreCorruptedError(
            f"Shard '{path}' does not match its checksum in the manifest: it was truncated or "
            "modified. Delete it and its manifest entry and resume sketching to redo it."
        )
    try:
        return load_safetensors(data)
    except Exception as e:  # SafetensorError, or what torch raises on a dtype or buffer it cannot take
        raise StoreCorruptedError(f"Shard '{path}' is not a valid safetensors file ({_first_line(e)}).") from e


def check_tensors(
    path: Path, tensors: dict[str, torch.Tensor], count: int, proj_dim: int | None, corpora: int | None
) -> None:
    """Names, dtypes and shapes of a shard's tensors, finite sketches, corpus codes in range."""
    for name, dtype in (("sketches", torch.float32), ("ids", torch.uint8), ("corpus", torch.int32)):
        if name not in tensors:
            raise StoreCorruptedError(f"Shard '{path}' lacks the `{name}` tensor.")
        if tensors[name].dtype != dtype:
            raise StoreCorruptedError(f"Shard '{path}' has `{name}` of dtype {tensors[name].dtype}, expected {dtype}.")
    sketches, ids, corpus = tensors["sketches"], tensors["ids"], tensors["corpus"]
    if sketches.dim() != 2 or len(sketches) != count or (proj_dim is not None and sketches.shape[1] != proj_dim):
        raise StoreCorruptedError(
            f"Shard '{path}' has shape {tuple(sketches.shape)}, manifest says ({count}, {proj_dim or 'k'})."
        )
    if tuple(ids.shape) != (count, ID_BYTES) or tuple(corpus.shape) != (count,):
        raise StoreCorruptedError(
            f"Shard '{path}' has ids {tuple(ids.shape)} and corpus codes {tuple(corpus.shape)}, expected "
            f"({count}, {ID_BYTES}) and ({count},)."
        )
    if not bool(torch.isfinite(sketches).all()):
        raise StoreCorruptedError(f"Shard '{path}' holds non-finite sketch values.")
    losses = tensors.get("losses")  # optional: stores from before 0.3 have none
    if losses is not None and (
        losses.dtype != torch.float32 or tuple(losses.shape) != (count,) or not bool(torch.isfinite(losses).all())
    ):
        raise StoreCorruptedError(f"Shard '{path}' has a malformed `losses` tensor (expected {count} finite float32).")
    if count and (int(corpus.min()) < 0 or (corpora is not None and int(corpus.max()) >= corpora)):
        raise StoreCorruptedError(
            f"Shard '{path}' has corpus codes {int(corpus.min())}..{int(corpus.max())}, outside the "
            f"manifest's {corpora} corpora."
        )


# -- writing and reading shard files -------------------------------------------------------
def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_shard(
    path: Path,
    index: int,
    start: int,
    fingerprint: str,
    sketches: torch.Tensor,
    ids: torch.Tensor,
    corpus: torch.Tensor,
    losses: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Write ``shard-<index>.safetensors`` atomically; return its manifest entry. ``losses``:
    each example's loss, which the recipe-aware predictor turns into curvature weights."""
    name = f"shard-{index:05d}.safetensors"
    tensors = {
        "sketches": sketches.detach().to("cpu", torch.float32).contiguous(),
        "ids": ids.to(torch.uint8).contiguous(),
        "corpus": corpus.to(torch.int32).contiguous(),
    }
    if losses is not None:
        tensors["losses"] = losses.detach().to("cpu", torch.float32).reshape(-1).contiguous()
    data = save_safetensors(
        tensors,
        metadata={"start": str(start), "fingerprint": fingerprint},
    )
    atomic_write(path / name, data)
    return {"file": name, "start": start, "count": len(sketches), "sha256": sha256(data)}


def read_shard_tensors(path: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The raw tensors of one shard, checksum verified and checked against ``entry`` (its
    count, and its own ``corpora`` table if it has one, as a rank's record entries do)."""
    entry = check_shard_entry(entry, path / MANIFEST)
    corpora = entry.get("corpora")
    file = path / entry["file"]
    tensors = load_shard(file, entry)
    check_tensors(file, tensors, entry["count"], None, None if corpora is None else len(corpora))
    return tensors
