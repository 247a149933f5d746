"""What every `tip` command shares: the typer app, one-line errors, argument types, loading
the buyer's spec and model, and the data format checked before a model is loaded."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

app = typer.Typer(
    name="tip",
    help="Private data valuation (TIP): sketch, encrypt, score and reveal, one file at a time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


class Release(str, Enum):
    corpus = "corpus"
    example = "example"


def one_line(err: BaseException) -> str:
    from ..errors import TIPError

    text = err.for_cli() if isinstance(err, TIPError) else str(err)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if isinstance(err, KeyError) and not isinstance(err, TIPError) and text[:1] in "'\"" and text[-1:] in "'\"":
        text = text[1:-1]
    return f"{type(err).__name__}: {text}" if not text.startswith(type(err).__name__) else text


# what an interrupted command kept, and how to go on
INTERRUPTED = {
    "sketch": "whole shards written so far are kept; run the same command again to resume from them",
    "verify": "nothing was written; run the command again",
    "score": "no answer was written and no query was charged; run the command again",
}


def friendly(command: str) -> Callable[[F], F]:
    """Turn the errors a user can cause into one line on stderr and exit code 1."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            from ..errors import TIPError

            try:
                return fn(*args, **kwargs)
            except (TIPError, OSError, KeyError, ValueError, TypeError, PermissionError) as err:
                typer.echo(f"tip {command}: error: {one_line(err)}", err=True)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                kept = INTERRUPTED.get(command, "nothing was written; run the command again")
                typer.echo(f"\ntip {command}: interrupted: {kept}.", err=True)
                raise typer.Exit(130) from None

        return run  # type: ignore[return-value]

    return wrap


def need(path: Path, what: str, fix: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} '{path}' does not exist ({fix}).")
    return path


def device_and_main() -> tuple[Any, bool]:
    """Join the process group when run under ``accelerate launch`` / ``torchrun``; this
    process's device and whether it is the main process (the one that prints)."""

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState()  # initialises torch.distributed from the launcher's environment
        from ..distributed import rank_and_world

        rank, world = rank_and_world()
        typer.echo(f"tip: process rank {rank}/{world} on {state.device}", err=True)  # one line per process
        return state.device, rank == 0
    if any(key.startswith("ACCELERATE_") for key in os.environ):
        typer.echo(
            "tip: running as ONE process under accelerate launch; for N processes pass --multi_gpu "
            "--num_processes N (on a CPU-only machine too: N gloo processes).",
            err=True,
        )
    return torch.device("cuda" if torch.cuda.is_available() else "cpu"), True


def read_spec(path: Path) -> tuple[Any, str | None]:
    """A bundle's ``spec.json`` (spec + fingerprint) or a bare spec JSON."""
    from ..spec import ValuationSpec

    need(path, "spec file", "the buyer's bundle/spec.json")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(
            f"The spec file '{path}' is not UTF-8 text (byte {err.start}); pass the buyer's bundle/spec.json."
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"The spec file '{path}' is not valid JSON ({err.msg} at line {err.lineno}).") from None
    if isinstance(data, dict) and "spec" in data:
        return ValuationSpec.from_dict(data["spec"]), data.get("fingerprint")
    return ValuationSpec.from_dict(data), None


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def load_model(
    name: str, task: str, tokenizer_name: str | None = None, *, needs_tokenizer: bool = True
) -> tuple[Any, Any]:
    """A model + tokenizer from a local directory or the Hub (peft adapter dirs too).

    A local model directory must hold the tokenizer too (or ``--tokenizer`` names one):
    transformers would otherwise fall back to some other tokenizer and value other tokens."""
    local = Path(name)
    source = tokenizer_name or name
    if not local.exists() or (tokenizer_name and not Path(tokenizer_name).exists()):
        from ..hub import offline_unless_reachable

        offline_unless_reachable()
    if needs_tokenizer and Path(source).is_dir() and not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"'{source}' holds no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...): the examples would be "
            "tokenised by a fallback tokenizer, not the model's. The buyer should save the tokenizer with the model "
            "(tokenizer.save_pretrained(dir)); or pass --tokenizer DIR_OR_HUB_ID."
        )
    import transformers

    if (local / "adapter_config.json").is_file():
        import peft

        cls = peft.AutoPeftModelForCausalLM if task == "causal_lm" else peft.AutoPeftModelForSequenceClassification
    else:
        cls = (
            transformers.AutoModelForCausalLM
            if task == "causal_lm"
            else transformers.AutoModelForSequenceClassification
        )
    try:
        model = cls.from_pretrained(name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source) if needs_tokenizer else None
    except (OSError, ValueError) as err:
        raise OSError(
            f"Could not load model {name!r}: {str(err).splitlines()[0]} -- pass a local directory written by "
            "save_pretrained, or a Hub id that is cached (or reachable)."
        ) from None
    if tokenizer is not None and tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out; any id will do
    return model.eval(), tokenizer


DatasetArg = Annotated[
    str, typer.Option("--dataset", help="Hub name, save_to_disk dir, parquet/json/csv, or .txt dir.")
]
ConfigArg = Annotated[str | None, typer.Option("--config", help="Hub dataset configuration.")]
SplitArg = Annotated[
    str | None, typer.Option("--split", help="Split of a Hub dataset or saved DatasetDict (default train).")
]
TextArg = Annotated[str, typer.Option("--text-column", help="Column holding the text (if not tokenised).")]
LabelArg = Annotated[str | None, typer.Option("--label-column", help="Label column (default: label/labels).")]
CorpusColArg = Annotated[
    str | None, typer.Option("--corpus-column", help="Column naming each example's corpus (.txt dirs: 'corpus').")
]
CorpusArg = Annotated[str | None, typer.Option("--corpus", help="One corpus name for the whole dataset.")]
MaxLenArg = Annotated[
    int | None, typer.Option("--max-length", min=1, help="Truncate examples to this many tokens (>= 1).")
]
FeatureArg = Annotated[
    str | None, typer.Option("--feature-column", help="Column of fixed-shape float arrays (dense models, no text).")
]
TokenizerArg = Annotated[
    str | None, typer.Option("--tokenizer", help="Tokenizer dir or Hub id (default: the one saved with --model).")
]


def data_format(data: Any, spec: Any, **settings: Any) -> Any:
    """The example format, its column and row errors raised before a model is loaded (the
    settings and the first rows; sketch_dataset checks every row before its first backward)."""
    from ..examples import ExampleFormat, Examples, chunks, columns

    fmt = ExampleFormat(**settings)
    examples = Examples(spec, columns(data), None, fmt, tokenise=False)
    for lo, chunk in chunks(data, 0, 256):
        examples.ids(chunk, lo)
        break
    return fmt


def corpus_column_of(dataset: Any, corpus_column: str | None, corpus: str | None) -> str | None:
    from ..data import TXT_CORPUS_COLUMN
    from ..examples import columns

    if corpus_column is None and corpus is None and TXT_CORPUS_COLUMN in columns(dataset):
        return TXT_CORPUS_COLUMN
    return corpus_column


def load_data(dataset: str, **kwargs: Any) -> Any:
    from ..data import load_corpus

    return load_corpus(dataset, **kwargs)


def formatted_data(
    dataset: str,
    spec: Any,
    *,
    config: str | None,
    split: str | None,
    streaming: bool = False,
    only_corpus: str | None = None,
    **columns: Any,
) -> tuple[Any, Any]:
    """The dataset and its :class:`ExampleFormat`, checked before any model is loaded.
    ``only_corpus``: the corpus name to assume when none is given (a one-corpus delivery)."""
    data = load_data(dataset, config=config, split=split, streaming=streaming)
    columns["corpus_column"] = corpus_column_of(data, columns.get("corpus_column"), columns.get("corpus"))
    if columns.get("corpus") is None and columns["corpus_column"] is None and only_corpus is not None:
        columns["corpus"] = only_corpus
    return data, data_format(data, spec, **columns)
