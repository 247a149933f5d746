"""Rows of a dataset -> validated examples -> content ids -> padded batches. No model, no store.

Sketching (:func:`tip_hf.sketch_dataset`), the buyer's eval mean (:func:`mean_sketch`) and
delivery checks (:func:`tip_hf.data.example_ids_by_corpus`) all read rows through
:class:`Examples`, so an example's id is made one way only. Ids hash the *raw* example (the
exact text, or all tokens, or the features, plus the label) so they need no tokenizer and
change with any edit of the data. Every row is checked before it is used: a problem names
the row, the column and the fix (:class:`DataError`), and nothing is valued silently wrong.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .errors import ColumnError, DataError
from .ids import IDS_VERSION, dense_example_id, example_id, text_example_id
from .labels import checked_label, is_int, label_tensor
from .loss import IGNORE_INDEX
from .spec import ExampleFormat, ValuationSpec

__all__ = [
    "DEFAULT_CORPUS",
    "IDS_VERSION",
    "ExampleFormat",
    "Examples",
    "chunks",
    "columns",
    "dense_example_id",
    "example_id",
    "is_map_style",
    "text_example_id",
]

DEFAULT_CORPUS = "all"


# -- dataset access ---------------------------------------------------------------------------
def is_map_style(dataset: Any) -> bool:
    return hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")


def chunks(dataset: Any, start: int, size: int) -> Iterator[tuple[int, dict[str, list[Any]]]]:
    """Column-dict chunks of ``size`` rows from row ``start`` (map-style or streaming)."""
    if is_map_style(dataset):
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


def columns(dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:
        features = getattr(dataset, "features", None)
        if features is None:
            first = next(iter(dataset))
            return list(first)
        names = list(features)
    return list(names)


# -- what a row means -------------------------------------------------------------------------
class Examples:
    """Turns rows of a dataset into checked examples with ids, corpus names and batches.

    Args:
        spec: the valuation settings (its ``task``).
        columns: the dataset's column names.
        tokenizer: for text columns.
        fmt: which columns hold what.
        max_positions: the model's position limit (an over-long example is an error unless
            ``max_length`` truncates it).
        num_labels, multi_label: the model's classes (``num_labels == 1``: regression); when
            given, labels are checked against them.
        vocab_size: the model's vocabulary; when given, token ids are checked against it.
        pad_id: the id to pad with (the model's ``config.pad_token_id``; else the tokenizer's,
            else 0): padding is masked, but some heads locate the last token by it.
        tokenise: False when only ids are wanted (:meth:`ids` needs no tokenizer).
    """

    def __init__(
        self,
        spec: ValuationSpec,
        columns: Sequence[str],
        tokenizer: Any = None,
        fmt: ExampleFormat | None = None,
        *,
        max_positions: int | None = None,
        num_labels: int | None = None,
        multi_label: bool = False,
        vocab_size: int | None = None,
        pad_id: int | None = None,
        tokenise: bool = True,
    ) -> None:
        fmt = fmt or ExampleFormat()
        self.spec, self.tokenizer, self.fmt = spec, tokenizer, fmt
        self.max_positions, self.num_labels, self.multi_label = max_positions, num_labels, multi_label
        self.vocab_size = vocab_size
        names = list(columns)
        self.pretokenised = "input_ids" in names and fmt.feature_column is None
        # The model's pad id first: a head that pools "the last non-pad token" (GPT-2's) reads
        # config.pad_token_id, so padding with any other id would make sketches batch-dependent.
        tokenizer_pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad_id if pad_id is not None else int(tokenizer_pad) if tokenizer_pad is not None else 0
        if fmt.feature_column is not None:
            if fmt.feature_column not in names:
                raise ColumnError(
                    f"feature_column `{fmt.feature_column}` is not a column of the dataset ({names}).",
                    fix="Pass feature_column= naming the column of fixed-shape float arrays.",
                    cli_fix="Pass --feature-column naming the column of fixed-shape float arrays.",
                )
            if spec.task != "sequence_classification":
                raise DataError("Dense inputs (`feature_column`) need task='sequence_classification'.")
        elif not self.pretokenised:
            if fmt.text_column not in names:
                raise ColumnError(
                    f"The dataset has neither `input_ids` nor a `{fmt.text_column}` column (columns: {names}).",
                    fix="Pass text_column=... naming the text, or a tokenised dataset.",
                    cli_fix="Pass --text-column naming the text (or --feature-column for dense inputs).",
                )
            if tokenizer is None and tokenise:
                raise DataError(
                    f"The dataset has a `{fmt.text_column}` column but no tokenizer was given.",
                    fix="Pass tokenizer=AutoTokenizer.from_pretrained(...).",
                    cli_fix="Save the tokenizer with the model (tokenizer.save_pretrained) or pass --tokenizer.",
                )
        label_column = fmt.label_column
        if label_column is None:
            candidates = ("labels", "label") if spec.task == "sequence_classification" else ("labels",)
            label_column = next((c for c in candidates if c in names), None)
            if spec.task == "sequence_classification" and label_column is None:
                raise ColumnError(
                    f"`sequence_classification` needs a label column; none of {candidates} in {names}.",
                    fix="Pass label_column=... .",
                    cli_fix="Pass --label-column.",
                )
        elif label_column not in names:
            raise ColumnError(
                f"label_column `{label_column}` is not a column of the dataset ({names}).",
                fix="Pass label_column= naming an existing column.",
                cli_fix="Pass --label-column naming an existing column.",
            )
        if fmt.corpus_column is not None and fmt.corpus_column not in names:
            raise ColumnError(
                f"corpus_column `{fmt.corpus_column}` is not a column of the dataset ({names}).",
                fix="Pass corpus_column= naming an existing column, or corpus= for one name.",
                cli_fix="Pass --corpus-column naming an existing column, or --corpus NAME for one name.",
            )
        if fmt.max_length is not None and max_positions is not None and fmt.max_length > max_positions:
            raise DataError(
                f"max_length {fmt.max_length} is more than the model's {max_positions} positions.",
                fix=f"Pass max_length={max_positions} or less.",
                cli_fix=f"Pass --max-length {max_positions} or less.",
            )
        self.label_column = label_column

    # -- settings (what a store records) ---------------------------------------------------
    def settings(self) -> dict[str, Any]:
        fmt = self.fmt
        return {
            "text_column": None if self.pretokenised or fmt.feature_column else fmt.text_column,
            "label_column": self.label_column,
            "corpus_column": fmt.corpus_column,
            "corpus": fmt.corpus,
            "max_length": fmt.max_length,
            "tokenizer": None if self.tokenizer is None else type(self.tokenizer).__name__,
            "ids": IDS_VERSION,
        } | ({"feature_column": fmt.feature_column} if fmt.feature_column else {})

    # -- per row ---------------------------------------------------------------------------
    def _corpus(self, batch: dict[str, list[Any]], i: int, row: int) -> str:
        column = self.fmt.corpus_column
        if column is None:
            return self.fmt.corpus or DEFAULT_CORPUS
        name = batch[column][i]
        if name is None or (isinstance(name, str) and not name.strip()):
            raise DataError(
                f"Example {row} has no corpus name in column `{column}` ({name!r}).",
                fix=f"Fill in `{column}` for every row, or drop the unnamed rows.",
            )
        return str(name)

    def _label(self, batch: dict[str, list[Any]], i: int, row: int) -> Any:
        if self.label_column is None:
            return None
        return checked_label(
            batch[self.label_column][i], self.spec.task, self.label_column, row, self.num_labels, self.multi_label
        )

    def ids(self, batch: dict[str, list[Any]], start: int) -> list[bytes]:
        """Content ids of a chunk's rows (every row checked; no tokenisation)."""
        return [row["id"] for row in self.raw(batch, start)]

    def raw(self, batch: dict[str, list[Any]], start: int) -> list[dict[str, Any]]:
        """Each row checked, with its raw content, label, corpus name and id (not tokenised)."""
        n = len(next(iter(batch.values()))) if batch else 0
        out = []
        fmt = self.fmt
        for i in range(n):
            row = start + i
            label = self._label(batch, i, row)
            corpus = self._corpus(batch, i, row)
            if fmt.feature_column is not None:
                try:
                    x = torch.as_tensor(batch[fmt.feature_column][i], dtype=torch.float32)
                except (TypeError, ValueError, RuntimeError) as e:
                    raise DataError(
                        f"Example {row}: `{fmt.feature_column}` is not an array of numbers ({e})."
                    ) from None
                if x.numel() == 0:
                    raise DataError(f"Example {row} has an empty `{fmt.feature_column}`; remove empty rows.")
                if not torch.isfinite(x).all():
                    raise DataError(f"Example {row} has NaN/Inf in `{fmt.feature_column}`; impute or drop it first.")
                out.append({"features": x, "label": label, "corpus": corpus, "id": dense_example_id(x, label)})
            elif self.pretokenised:
                ids = batch["input_ids"][i]
                ids = list(ids.tolist() if hasattr(ids, "tolist") else ids or [])
                if not ids:
                    raise DataError(f"Example {row} has no tokens; remove empty rows from the dataset.")
                if not all(is_int(t) and -(2**63) <= t < 2**63 for t in ids):
                    raise DataError(f"Example {row}: `input_ids` must be integers (64-bit token ids).")
                tt = batch["token_type_ids"][i] if "token_type_ids" in batch else None
                tt = None if tt is None else list(tt.tolist() if hasattr(tt, "tolist") else tt)
                if tt is not None and (len(tt) != len(ids) or not all(is_int(t) and 0 <= t < 2**31 for t in tt)):
                    raise DataError(f"Example {row}: `token_type_ids` must be small integers, one per input id.")
                if self.spec.task == "causal_lm" and isinstance(label, list) and len(label) != len(ids):
                    raise DataError(
                        f"Example {row} has {len(label)} token labels for {len(ids)} input ids; causal-LM labels "
                        "must have one entry per input id (-100 to ignore)."
                    )
                raw_id = example_id(ids, label, tt)
                out.append({"input_ids": ids, "token_type_ids": tt, "label": label, "corpus": corpus, "id": raw_id})
            else:
                text = batch[fmt.text_column][i]
                if not isinstance(text, str):
                    raise DataError(
                        f"Example {row}: column `{fmt.text_column}` holds {type(text).__name__}, not text.",
                        fix="Point text_column at a text column.",
                        cli_fix="Point --text-column at a text column.",
                    )
                if not text.strip():
                    raise DataError(
                        f"Example {row} has empty or whitespace-only text in `{fmt.text_column}`: there is no example "
                        "to value.",
                        fix="Drop empty rows first (e.g. dataset.filter(lambda r: r['text'].strip())).",
                        cli_fix="Drop empty rows from the file first.",
                    )
                out.append({"text": text, "label": label, "corpus": corpus, "id": text_example_id(text, label)})
        return out

    def rows(self, batch: dict[str, list[Any]], start: int) -> list[dict[str, Any]]:
        """A chunk's examples, checked and tokenised (truncated to ``max_length``)."""
        raw = self.raw(batch, start)
        if self.fmt.feature_column is not None:
            return raw
        if not self.pretokenised and raw:
            encoded = self.tokenizer([r.pop("text") for r in raw], add_special_tokens=True)
            token_types = encoded.get("token_type_ids")
            for i, r in enumerate(raw):
                r["input_ids"] = list(encoded["input_ids"][i])
                r["token_type_ids"] = None if token_types is None else list(token_types[i])
        max_length = self.fmt.max_length
        limit = max_length or self.max_positions
        for i, r in enumerate(raw):
            ids, row = r["input_ids"], start + i
            if not ids:
                raise DataError(f"Example {row} has no tokens; remove empty rows from the dataset.")
            if self.vocab_size is not None and (min(ids) < 0 or max(ids) >= self.vocab_size):
                bad = next(t for t in ids if t < 0 or t >= self.vocab_size)
                raise DataError(
                    f"Example {row} has token id {bad}, outside the model's vocabulary of {self.vocab_size}.",
                    fix="Tokenise with the tokenizer the model was trained with.",
                )
            label = r["label"]
            if self.spec.task == "causal_lm" and isinstance(label, list) and self.vocab_size is not None:
                bad_labels = [t for t in label if t != IGNORE_INDEX and not 0 <= t < self.vocab_size]
                if bad_labels:
                    raise DataError(f"Example {row} has label token {bad_labels[0]}, outside the vocabulary (or -100).")
            if limit is not None and len(ids) > limit:
                if max_length is None:
                    raise DataError(
                        f"Example {row} has {len(ids)} tokens, more than the model's {limit} positions.",
                        fix=f"Pass max_length={limit} (or less) to truncate, or split long documents.",
                        cli_fix=f"Pass --max-length {limit} (or less) to truncate, or split long documents.",
                    )
                r["input_ids"] = ids[:max_length]
                tt = r["token_type_ids"]
                r["token_type_ids"] = None if tt is None else tt[:max_length]
                r["label"] = label[:max_length] if isinstance(label, list) else label
        return raw

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Right-pad a list of examples into a Trainer-style batch (dense ones: stack them)."""
        feature_column, task = self.fmt.feature_column, self.spec.task
        if feature_column is not None:
            shapes = {tuple(r["features"].shape) for r in rows}
            if len(shapes) != 1:
                raise DataError(f"`{feature_column}` must have one shape across examples, got {sorted(shapes)[:3]}.")
            return {feature_column: torch.stack([r["features"] for r in rows]), "labels": label_tensor(rows)}
        length = max(len(r["input_ids"]) for r in rows)
        n = len(rows)
        input_ids = torch.full((n, length), self.pad_id, dtype=torch.long)
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
            labels = label_tensor(rows, integral=self.num_labels is not None and self.num_labels > 1)
        batch.update(input_ids=input_ids, attention_mask=mask, labels=labels)
        return batch
