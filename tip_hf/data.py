"""Load a seller's (or buyer's) examples from the Hub or from local files, one way for both.

``load_corpus(source)`` accepts:

* a Hub dataset name (``"imdb"``, ``"user/corpus"``), through ``datasets.load_dataset``
  (``streaming=True`` for corpora larger than memory);
* a directory written by ``Dataset.save_to_disk``;
* parquet / json / jsonl / csv files (one file, a glob, or a directory of them);
* a directory of ``.txt`` files: each file is one corpus (named after the file), each
  blank-line-separated paragraph one example (column ``text``, corpus column ``corpus``).

Offline with nothing cached gives :class:`DataSourceError` naming the fix, not a traceback.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from .errors import DataSourceError
from .examples import ExampleFormat, Examples, chunks, columns
from .spec import ValuationSpec

__all__ = ["DataSourceError", "TXT_CORPUS_COLUMN", "load_corpus", "example_ids_by_corpus"]

TXT_CORPUS_COLUMN = "corpus"
_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def load_corpus(
    source: str | os.PathLike[str],
    *,
    config: str | None = None,
    split: str | None = None,
    streaming: bool = False,
) -> Any:
    """A ``datasets.Dataset`` (or ``IterableDataset`` when streaming) from a Hub name or a
    local path; see the module docstring for the accepted forms.

    ``split`` picks a split of a Hub dataset or of a saved ``DatasetDict`` (default
    ``"train"``); files and folders have no splits, so a ``split`` there is an error rather
    than silently ignored (point at the split's own file instead)."""
    import datasets

    path = Path(source)
    saved = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
    if path.is_dir() and any((path / name).is_file() for name in saved):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            wanted = split or "train"
            if wanted not in loaded:
                raise DataSourceError(
                    f"'{path}' has splits {sorted(loaded)}, not {wanted!r}.",
                    fix="Pass split= one of them.",
                    cli_fix="Pass --split with one of them.",
                )
            loaded = loaded[wanted]
        elif split is not None:
            raise _no_splits(source, split)
        return loaded.to_iterable_dataset() if streaming else _non_empty(loaded, source)
    local = path.exists() or any(ch in str(source) for ch in "*?[")
    if local and split is not None:
        raise _no_splits(source, split)
    if path.is_dir() and sorted(path.glob("*.txt")):
        others = sorted({p.suffix.lower() for p in path.iterdir() if p.suffix.lower() in _FILE_BUILDERS})
        if others:
            raise DataSourceError(
                f"'{source}' mixes .txt files with {', '.join(others)} files; their rows would be read differently.",
                fix="Point at a folder of one type (or one file).",
            )
        return _non_empty(_txt_folder(path), source)
    files = _data_files(source)
    if files:
        builders = {_FILE_BUILDERS[Path(f).suffix.lower()] for f in files}
        if len(builders) > 1:
            raise DataSourceError(f"'{source}' mixes file types {sorted(builders)}; point at one type.")
        builder = builders.pop()
        if all(Path(f).stat().st_size == 0 for f in files):
            raise DataSourceError(f"The dataset '{source}' is empty: nothing to value.")
        try:
            loaded = datasets.load_dataset(builder, data_files=files, split="train", streaming=streaming)
        except Exception as err:  # the builders raise ValueError, StopIteration, ArrowInvalid, ...
            if "no data" in str(err):  # 'Instruction "train" corresponds to no data!' (header-only csv)
                raise DataSourceError(f"The dataset '{source}' is empty: nothing to value.") from None
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataSourceError(f"Could not read '{source}' as {builder}: {reason}") from None
        return loaded if streaming else _non_empty(loaded, source)
    if path.exists() or str(source).startswith((".", "/", "~")) or os.sep + os.sep in str(source):
        raise DataSourceError(
            f"'{source}' is not a dataset: expected a save_to_disk directory, parquet/json/jsonl/csv "
            "files, or a folder of .txt files (one corpus per file)."
        )
    return _from_hub(str(source), config, split or "train", streaming)


def _no_splits(source: object, split: str) -> DataSourceError:
    return DataSourceError(
        f"'{source}' is a local file or folder, which has no splits, but split {split!r} was asked for.",
        fix="Leave split unset and point at the split's own file (e.g. data/test.jsonl).",
        cli_fix="Leave out --split and point --dataset at the split's own file (e.g. data/test.jsonl).",
    )


def _data_files(source: str | os.PathLike[str]) -> list[str]:
    path = Path(source)
    if path.is_dir():
        candidates = [str(p) for p in sorted(path.iterdir())]
    elif any(ch in str(source) for ch in "*?["):
        candidates = sorted(glob.glob(str(source)))
    elif path.is_file():
        candidates = [str(path)]
    else:
        return []
    files = [f for f in candidates if Path(f).suffix.lower() in _FILE_BUILDERS]
    if path.is_file() and not files:
        raise DataSourceError(f"'{source}': unsupported file type; use parquet, json, jsonl, csv or .txt in a folder.")
    return files


def _txt_folder(path: Path) -> Any:
    import datasets

    rows: dict[str, list[str]] = {"text": [], TXT_CORPUS_COLUMN: []}
    for file in sorted(path.glob("*.txt")):
        raw = file.read_bytes()
        try:
            text = raw.decode("utf-8-sig").replace("\r\n", "\n")
        except UnicodeDecodeError as e:
            raise DataSourceError(
                f"'{file}' is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); its examples would "
                "be valued with replacement characters.",
                fix=f"Convert it first, e.g. `iconv -f latin1 -t utf-8 '{file.name}'`.",
            ) from None
        for paragraph in text.split("\n\n"):
            paragraph = " ".join(paragraph.split())
            if paragraph:
                rows["text"].append(paragraph)
                rows[TXT_CORPUS_COLUMN].append(file.stem)
    return datasets.Dataset.from_dict(rows)


def _from_hub(name: str, config: str | None, split: str, streaming: bool) -> Any:
    from .hub import hub_offline, offline_unless_reachable

    user_offline = hub_offline()
    unreachable = not user_offline and offline_unless_reachable()
    import datasets

    try:
        loaded = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as err:  # datasets raises many types for "not reachable / not cached"
        if unreachable:
            why = "the Hub is not reachable from this machine and it is not in the local cache"
        elif user_offline:
            why = "HF_HUB_OFFLINE is set and it is not in the local cache"
        else:
            why = type(err).__name__
        raise DataSourceError(
            f"Could not load dataset {name!r} (config={config!r}, split={split!r}) from the Hugging Face Hub: "
            f"{why}: {str(err).splitlines()[0] if str(err) else ''} -- download it once with network access "
            "(it is then cached), or pass a local path (save_to_disk dir, parquet/json/csv, folder of .txt)."
        ) from err
    return loaded if streaming else _non_empty(loaded, name)


def _non_empty(dataset: Any, source: object) -> Any:
    if len(dataset) == 0:
        raise DataSourceError(f"The dataset '{source}' is empty: nothing to value.")
    return dataset


def example_ids_by_corpus(
    dataset: Any,
    spec: ValuationSpec,
    *,
    tokenizer: Any = None,
    text_column: str = "text",
    label_column: str | None = None,
    corpus_column: str | None = None,
    corpus: str | None = None,
    max_length: int | None = None,
    batch_size: int = 256,
    feature_column: str | None = None,
) -> dict[str, list[bytes]]:
    """Example ids (:mod:`tip_hf.examples`) per corpus, in dataset order, made
    exactly as :func:`sketch_dataset` makes them: what a buyer checks a delivery against the
    seller's commitment with (:func:`tip_hf.he.verify_commitment`). Needs no model."""
    fmt = ExampleFormat(text_column, label_column, corpus_column, corpus, max_length, feature_column)
    examples = Examples(spec, columns(dataset), tokenizer, fmt, tokenise=False)
    out: dict[str, list[bytes]] = {}
    for lo, chunk in chunks(dataset, 0, batch_size):
        for row in examples.raw(chunk, lo):
            out.setdefault(str(row["corpus"]), []).append(bytes(row["id"]))
    return out
