"""A store folder's life: an exclusive lock while one run writes it, and removal of what an
overwritten or failed run leaves (a run that wrote no shard leaves nothing behind)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .distributed import RECORD_PREFIX, recorded_entries
from .errors import StoreBusyError, TIPError
from .store import MANIFEST
from .store_files import read_manifest

__all__ = ["LOCK", "main_process_lock", "remove_if_empty", "remove_store"]

LOCK = ".lock"


@contextlib.contextmanager
def main_process_lock(path: Path, rank: int, world: int) -> Iterator[bool]:
    """An exclusive lock on the store directory, held by the main process for the whole run:
    a second ``sketch_dataset`` into the same directory is refused rather than mixing shards.
    Yields whether this run created the directory."""
    if rank != 0:
        yield False
        return
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield created
        return
    lock = path / LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise StoreBusyError(
                f"'{path}' is being written by another process (pid {holder}).",
                fix="Wait for it to finish (it resumes from the same folder), or write to another output_dir.",
                cli_fix="Wait for it to finish, or pass another --out.",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield created
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove_if_empty(path: Path, created: bool) -> None:
    """After a failed run: a store that holds no shard is removed (with any shard file a run
    interrupted before recording it), so a rerun starts clean. A store this code cannot read
    is left alone: it is not ours to clean."""
    try:
        manifest = read_manifest(path / MANIFEST) if (path / MANIFEST).is_file() else None
        if manifest is not None and (manifest["shards"] or manifest["complete"] or recorded_entries(path)):
            return  # whole shards were kept: a rerun resumes from them
    except TIPError:
        return
    with contextlib.suppress(OSError):
        if manifest is not None:
            _unlink_store_files(path)
        else:  # only an interrupted first manifest write can be ours here
            for child in path.glob(".manifest*"):
                child.unlink()
        if created and path.is_dir() and not any(p.name != LOCK for p in path.iterdir()):
            shutil.rmtree(path)


def remove_store(path: Path) -> None:
    """``overwrite``: delete a sketch store's files, and only those of a real sketch store."""
    refuse = TIPError(
        f"'{path}' is not a sketch store (no valid {MANIFEST}); refusing to delete anything in it.",
        fix="overwrite=True replaces only sketch stores: choose another output_dir.",
        cli_fix="--overwrite replaces only sketch stores: choose another --out.",
    )
    if (path / MANIFEST).is_file():
        try:
            read_manifest(path / MANIFEST)
        except TIPError:
            raise refuse from None
    elif path.is_dir() and any(p.name != LOCK for p in path.iterdir()):
        raise refuse
    else:
        return
    _unlink_store_files(path)


def _unlink_store_files(path: Path) -> None:
    """The files a sketch store consists of (manifest, shards, rank records, their temporaries)."""
    for child in path.iterdir():
        if child.name == MANIFEST or child.name.startswith(("shard-", ".shard-", ".manifest", RECORD_PREFIX)):
            child.unlink()
