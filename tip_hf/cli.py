"""``tip``: every protocol step as a command that reads and writes plain files.

The buyer and the seller run on different machines and exchange only files:

    buyer : tip keygen keys/                       -> keys/public_context.tip (send)
    buyer : (train with TIPCallback)               -> bundle/ (send bundle/spec.json + the model)
    buyer : tip query --bundle bundle --keys keys -o query.tip              (send query.tip)
    seller: tip sketch --model M --spec spec.json --dataset D -o store/
    seller: tip score --store store --query query.tip --context public_context.tip -o scores.tip
    buyer : tip reveal --scores scores.tip --keys keys [--budget 1000]
    seller: tip open --opening scores.opening.json --corpus BOUGHT -o delivery-opening.json
    buyer : tip verify --scores scores.tip --opening delivery-opening.json --dataset delivered/
                       --model M --bundle bundle --keys keys

Exit codes: 0 success, 1 bad input or a refused operation (one-line message naming the
problem and the fix), 2 bad command-line usage.
"""

from __future__ import annotations

import functools
import json
import sys
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


def _one_line(err: BaseException) -> str:
    from .errors import TIPError

    text = err.for_cli() if isinstance(err, TIPError) else str(err)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if isinstance(err, KeyError) and not isinstance(err, TIPError) and text[:1] in "'\"" and text[-1:] in "'\"":
        text = text[1:-1]
    return f"{type(err).__name__}: {text}" if not text.startswith(type(err).__name__) else text


# what an interrupted command kept, and how to go on
_INTERRUPTED = {
    "sketch": "whole shards written so far are kept; run the same command again to resume from them",
    "verify": "nothing was written; run the command again",
    "score": "no answer was written and no query was charged; run the command again",
}


def _friendly(command: str) -> Callable[[F], F]:
    """Turn the errors a user can cause into one line on stderr and exit code 1."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            from .errors import TIPError

            try:
                return fn(*args, **kwargs)
            except (TIPError, OSError, KeyError, ValueError, TypeError, PermissionError) as err:
                typer.echo(f"tip {command}: error: {_one_line(err)}", err=True)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                kept = _INTERRUPTED.get(command, "nothing was written; run the command again")
                typer.echo(f"\ntip {command}: interrupted: {kept}.", err=True)
                raise typer.Exit(130) from None

        return run  # type: ignore[return-value]

    return wrap


def _need(path: Path, what: str, fix: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} '{path}' does not exist ({fix}).")
    return path


def _device_and_main() -> tuple[Any, bool]:
    """Join the process group when run under ``accelerate launch`` / ``torchrun``; this
    process's device and whether it is the main process (the one that prints)."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState()  # initialises torch.distributed from the launcher's environment
        from .distributed import rank_and_world

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


def _read_spec(path: Path) -> tuple[Any, str | None]:
    """A bundle's ``spec.json`` (spec + fingerprint) or a bare spec JSON."""
    from .spec import ValuationSpec

    _need(path, "spec file", "the buyer's bundle/spec.json")
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


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _load_model(
    name: str, task: str, tokenizer_name: str | None = None, *, needs_tokenizer: bool = True
) -> tuple[Any, Any]:
    """A model + tokenizer from a local directory or the Hub (peft adapter dirs too).

    A local model directory must hold the tokenizer too (or ``--tokenizer`` names one):
    transformers would otherwise fall back to some other tokenizer and value other tokens."""
    local = Path(name)
    source = tokenizer_name or name
    if not local.exists() or (tokenizer_name and not Path(tokenizer_name).exists()):
        from .hub import offline_unless_reachable

        offline_unless_reachable()
    if needs_tokenizer and Path(source).is_dir() and not any((Path(source) / f).is_file() for f in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"'{source}' holds no tokenizer files ({', '.join(_TOKENIZER_FILES[:4])}, ...): the examples would be "
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


def _data_format(data: Any, spec: Any, **settings: Any) -> Any:
    """The example format, its column and row errors raised before a model is loaded (the
    settings and the first rows; sketch_dataset checks every row before its first backward)."""
    from .examples import ExampleFormat, Examples, chunks, columns

    fmt = ExampleFormat(**settings)
    examples = Examples(spec, columns(data), None, fmt, tokenise=False)
    for lo, chunk in chunks(data, 0, 256):
        examples.ids(chunk, lo)
        break
    return fmt


def _corpus_column(dataset: Any, corpus_column: str | None, corpus: str | None) -> str | None:
    from .data import TXT_CORPUS_COLUMN
    from .examples import columns

    if corpus_column is None and corpus is None and TXT_CORPUS_COLUMN in columns(dataset):
        return TXT_CORPUS_COLUMN
    return corpus_column


# ---------------------------------------------------------------------------------------
# buyer
# ---------------------------------------------------------------------------------------
@app.command()
@_friendly("keygen")
def keygen(
    out: Annotated[Path, typer.Argument(help="Directory for secret.key (0600), public_context.tip, queries.json.")],
    preset: Annotated[str, typer.Option(help="CKKS parameter preset (128-bit secure): n8192 or n16384.")] = "n8192",
) -> None:
    """Buyer: make CKKS keys. Send public_context.tip to the seller; keep secret.key."""
    from .he import BuyerKeys

    if (out / "secret.key").exists():
        raise FileExistsError(f"'{out}' already holds keys; choose another directory (keys are never overwritten).")
    keys = BuyerKeys.generate(preset)
    keys.save(out)
    typer.echo(f"keys written to {out}/ (send {out / 'public_context.tip'} to the seller; keep secret.key private)")


@app.command()
@_friendly("query")
def query(
    bundle: Annotated[Path, typer.Option(help="Buyer bundle directory written by TIPCallback.")],
    keys: Annotated[Path, typer.Option(help="Buyer keys directory (tip keygen).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Encrypted query file to send.")] = Path("query.tip"),
) -> None:
    """Buyer: encrypt the bundle's query under the buyer's key, bound to its spec fingerprint."""
    from .bundle import load_bundle
    from .he import BuyerKeys, encrypt_query

    _need(bundle, "bundle directory", "train with TIPCallback(output_dir=...) first")
    _need(keys, "keys directory", "run `tip keygen` first")
    b = load_bundle(bundle)
    k = BuyerKeys.load(keys)
    encrypted = encrypt_query(b.query, k, b.spec, fingerprint=b.fingerprint)
    encrypted.save(out)
    typer.echo(f"encrypted query {encrypted.query_id} (k = {b.spec.proj_dim}) written to {out}")


class Payout(str, Enum):
    proportional = "proportional"
    tiers = "tiers"
    noised = "noised"


@app.command()
@_friendly("reveal")
def reveal(
    scores: Annotated[Path, typer.Option(help="Result file from the seller's `tip score`.")],
    keys: Annotated[Path, typer.Option(help="The buyer keys that made the query.")],
    budget: Annotated[
        float | None, typer.Option(help="Split this budget by value (and, for comparison, flat).")
    ] = None,
    payout: Annotated[
        Payout,
        typer.Option(
            help="How payouts follow values. Exact value-proportional payouts let a seller solve for your "
            "query; 'tiers' (4 price tiers by rank) or 'noised' leak far less (docs/threat-model.md)."
        ),
    ] = Payout.tiers,
    out: Annotated[Path, typer.Option("--out", "-o", help="Values as JSON.")] = Path("values.json"),
) -> None:
    """Buyer: decrypt the seller's scores, rank corpora, optionally price them."""
    import math

    from .he import BuyerKeys, decrypt_scores
    from .pricing import flat_rate_payouts, gini, noised_payouts, tiered_payouts, value_proportional_payouts

    _need(scores, "scores file", "the seller's `tip score` writes it")
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"--budget must be a positive amount, got {budget}.")
    table = decrypt_scores(scores, BuyerKeys.load(_need(keys, "keys directory", "the buyer's `tip keygen`")))
    if budget is not None and table.release == "example":
        raise ValueError(
            "--budget splits a budget over corpora, but these scores are per example; leave out --budget (or "
            "ask the seller for --release corpus)."
        )
    payload: dict[str, Any] = {"release": table.release, "commitment": table.commitment, "dp": table.dp}
    if table.release == "example":
        assert table.values is not None
        payload["values"] = table.values.tolist()
        payload["corpus"] = table.corpus
        typer.echo(f"{len(table.values)} per-example values")
    else:
        payload["rows"] = table.rows
        typer.echo(str(table))
        if budget is not None:
            released = [r for r in table.rows if r["released"]]
            values = {str(r["corpus"]): float(r["sum"]) for r in released}
            pay = {
                Payout.proportional: lambda: value_proportional_payouts(values, budget),
                Payout.tiers: lambda: tiered_payouts(values, budget),
                Payout.noised: lambda: noised_payouts(values, budget),
            }[payout]()
            flat = flat_rate_payouts({str(r["corpus"]): int(r["count"]) for r in released}, budget)
            payload["payouts"] = {payout.value: pay, "flat_rate": flat}
            payload["gini"] = {payout.value: gini(list(pay.values())), "flat_rate": gini(list(flat.values()))}
            typer.echo(f"\n{'corpus':<28}{payout.value:>14}{'flat rate':>12}")
            for name in pay:
                typer.echo(f"{name:<28}{pay[name]:>14.2f}{flat[name]:>12.2f}")
            typer.echo(f"{'Gini':<28}{payload['gini'][payout.value]:>14.3f}{payload['gini']['flat_rate']:>12.3f}")
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    typer.echo(f"\nvalues written to {out}")


@app.command()
@_friendly("verify")
def verify(
    scores: Annotated[Path, typer.Option(help="The result file whose values and commitment to check against.")],
    opening: Annotated[Path, typer.Option(help="The seller's opening of the bought corpora (tip open).")],
    dataset: DatasetArg,
    model: Annotated[str, typer.Option(help="Your model (the one the seller sketched with).")],
    bundle: Annotated[Path, typer.Option(help="Your bundle (spec.json + query) the query was made from.")],
    keys: Annotated[Path, typer.Option(help="Your keys (to decrypt the scores).")],
    config: ConfigArg = None,
    split: SplitArg = None,
    text_column: TextArg = "text",
    label_column: LabelArg = None,
    corpus_column: CorpusColArg = None,
    corpus: CorpusArg = None,
    max_length: MaxLenArg = None,
    feature_column: FeatureArg = None,
    tokenizer: TokenizerArg = None,
    batch_size: Annotated[int, typer.Option(help="Examples per backward pass when re-sketching.")] = 16,
) -> None:
    """Buyer, after purchase: is the delivered data what was scored? Checks (1) the example ids
    against the seller's salted commitment and (2) the values, re-sketched with your model,
    spec and query, against the decrypted ones (within the release noise); flags near-duplicates."""
    import tempfile

    from .bundle import load_bundle
    from .data import example_ids_by_corpus, load_corpus
    from .dataset import sketch_dataset
    from .he import BuyerKeys, decrypt_scores, delivery_diff, verify_commitment, verify_values
    from .values import plaintext_values

    _need(scores, "scores file", "the seller's `tip score` writes it")
    _need(opening, "opening file", "the seller sends it at delivery (`tip open`)")
    b = load_bundle(_need(bundle, "bundle directory", "the bundle your TIPCallback wrote"))
    table = decrypt_scores(scores, BuyerKeys.load(_need(keys, "keys directory", "your `tip keygen` directory")))
    try:
        opened = json.loads(opening.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"'{opening}' is not an opening file ({err}).") from None
    data = load_corpus(dataset, config=config, split=split)
    corpus_column = _corpus_column(data, corpus_column, corpus)
    released = [str(r["corpus"]) for r in table.rows if r["released"]]
    if corpus is None and corpus_column is None and len(released) == 1:
        corpus = released[0]  # one delivered corpus, one released: it is that one
    fmt = _data_format(
        data,
        b.spec,
        text_column=text_column,
        label_column=label_column,
        corpus_column=corpus_column,
        corpus=corpus,
        max_length=max_length,
        feature_column=feature_column,
    )
    columns = {k: getattr(fmt, k) for k in ("text_column", "label_column", "corpus_column", "corpus", "max_length")}
    columns["feature_column"] = fmt.feature_column
    net, tok = _load_model(model, b.spec.task, tokenizer, needs_tokenizer=feature_column is None)
    ids = example_ids_by_corpus(data, b.spec, tokenizer=tok, **columns)
    committed = verify_commitment(scores, ids, opened)
    with tempfile.TemporaryDirectory(prefix="tip-verify-") as tmp:
        store = sketch_dataset(
            net,
            data,
            b.spec,
            Path(tmp) / "store",
            tokenizer=tok,
            batch_size=batch_size,
            progress=False,
            fingerprint=b.fingerprint,
            **columns,
        )
        values = plaintext_values(b.query, store, clip_norm=table.clip_norm)
    recomputed = {name: float(values[name]["sum"]) for name in values.as_dict()}
    checked = verify_values(table, recomputed)
    flags = _near_duplicate_flags(data, columns["text_column"], ids)
    diff = delivery_diff(scores, ids, opened) if isinstance(opened.get("ids"), dict) else {}
    ok = True
    for name in ids:
        good = committed[name] and checked[name]["ok"]
        ok &= bool(good)
        where = ""
        if not committed[name] and name in diff:
            extra = diff[name]["extra"]
            assert isinstance(extra, list)
            shown = ", ".join(str(i) for i in extra[:10]) + (" ..." if len(extra) > 10 else "")
            where = (
                f" ({diff[name]['missing']} scored examples missing from the delivery; {len(extra)} delivered rows "
                f"not scored (extra or changed){': rows ' + shown if extra else ''})"
            )
        typer.echo(
            f"{name:<24} ids {'match' if committed[name] else 'DO NOT MATCH'} the commitment{where}; value "
            f"{checked[name]['recomputed']:.6g} vs decrypted {checked[name]['decrypted']:.6g} "
            f"(tolerance {checked[name]['tolerance']:.2g}): {'ok' if checked[name]['ok'] else 'DOES NOT MATCH'}"
            f"{flags.get(name, '')}"
        )
    if not ok:
        raise typer.Exit(1)


def _near_duplicate_flags(data: Any, text_column: str, ids: dict[str, list[bytes]]) -> dict[str, str]:
    """One note per delivered corpus with near-duplicate clusters (text data only)."""
    from .examples import columns

    if text_column not in columns(data) or len(ids) != 1:
        return {}
    from .near_duplicates import near_duplicate_clusters

    clusters = near_duplicate_clusters([str(t) for t in data[text_column]])
    if not clusters:
        return {}
    inside = sum(len(c) for c in clusters)
    name = next(iter(ids))
    return {name: f"; WARNING {len(clusters)} near-duplicate clusters hold {inside} of {len(data)} rows"}


@app.command("open")
@_friendly("open")
def open_commitments(
    opening: Annotated[Path, typer.Option(help="The opening file `tip score` wrote (keep it private).")],
    corpus: Annotated[list[str], typer.Option("--corpus", help="A corpus the buyer bought (repeat).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Opening to send with the delivery.")] = Path(
        "delivery-opening.json"
    ),
) -> None:
    """Seller, at delivery: reveal the commitment salts of the bought corpora only."""
    data = json.loads(_need(opening, "opening file", "`tip score` writes it next to the scores").read_text())
    salts = data.get("salts", {}) if isinstance(data, dict) else {}
    missing = [c for c in corpus if c not in salts]
    if missing:
        raise ValueError(f"No commitment for {missing} in '{opening}'; released corpora: {sorted(salts)}.")
    opened = {**data, "salts": {c: salts[c] for c in corpus}}
    if isinstance(data.get("ids"), dict):  # the bought corpora's ids: the buyer can name missing or changed rows
        opened["ids"] = {c: data["ids"][c] for c in corpus if c in data["ids"]}
    out.write_text(json.dumps(opened, indent=1) + "\n")
    typer.echo(f"opening of {len(corpus)} corpora written to {out} (send it with the delivered data)")


# ---------------------------------------------------------------------------------------
# seller
# ---------------------------------------------------------------------------------------
@app.command()
@_friendly("sketch")
def sketch(
    model: Annotated[str, typer.Option(help="The buyer's published model: local dir or Hub id.")],
    spec: Annotated[Path, typer.Option(help="The buyer's spec.json (bundle/spec.json).")],
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Store directory (resumed if it exists).")],
    config: ConfigArg = None,
    split: SplitArg = None,
    text_column: TextArg = "text",
    label_column: LabelArg = None,
    corpus_column: CorpusColArg = None,
    corpus: CorpusArg = None,
    max_length: MaxLenArg = None,
    feature_column: FeatureArg = None,
    tokenizer: TokenizerArg = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per backward pass.")] = 16,
    shard_size: Annotated[int, typer.Option(min=1, help="Examples per shard (the unit of resumption).")] = 1024,
    streaming: Annotated[bool, typer.Option(help="Stream the dataset (corpora larger than memory).")] = False,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (GPU).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over instead of resuming an existing store.")] = False,
) -> None:
    """Seller: sketch a dataset with the buyer's model and spec (nothing leaves this machine).
    Under `accelerate launch [--multi_gpu | --cpu] --num_processes N -m tip_hf.cli sketch ...` each
    process sketches its own shards; the result is identical to one process, and a killed run resumes."""
    valuation_spec, fingerprint = _read_spec(spec)
    data = _load_data(dataset, config=config, split=split, streaming=streaming)
    fmt = _data_format(
        data,
        valuation_spec,
        text_column=text_column,
        label_column=label_column,
        corpus_column=_corpus_column(data, corpus_column, corpus),
        corpus=corpus,
        max_length=max_length,
        feature_column=feature_column,
    )
    import torch

    from .dataset import sketch_dataset

    device, main = _device_and_main()
    net, tok = _load_model(model, valuation_spec.task, tokenizer, needs_tokenizer=feature_column is None)
    net = net.to(device)
    store = sketch_dataset(
        net,
        data,
        valuation_spec,
        out,
        tokenizer=tok,
        text_column=fmt.text_column,
        label_column=fmt.label_column,
        corpus_column=fmt.corpus_column,
        corpus=fmt.corpus,
        batch_size=batch_size,
        shard_size=shard_size,
        max_length=fmt.max_length,
        feature_column=fmt.feature_column,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        overwrite=overwrite,
        progress=main,
        fingerprint=fingerprint,  # the buyer's: refuse another model before sketching
    )
    if main:
        typer.echo(f"{len(store)} sketches (k = {store.proj_dim}) in {len(store.corpora)} corpora written to {out}")


def _load_data(dataset: str, **kwargs: Any) -> Any:
    from .data import load_corpus

    return load_corpus(dataset, **kwargs)


@app.command()
@_friendly("score")
def score(
    store: Annotated[Path, typer.Option(help="The seller's store (tip sketch).")],
    query_file: Annotated[Path, typer.Option("--query", help="The buyer's encrypted query.")],
    context: Annotated[Path, typer.Option(help="The buyer's public_context.tip.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Encrypted result to send back.")] = Path("scores.tip"),
    opening: Annotated[
        Path | None, typer.Option(help="Where the commitment salts go (private; default: OUT's name + .opening.json).")
    ] = None,
    buyer: Annotated[str | None, typer.Option(help="Your name for this buyer (budgets are kept per name).")] = None,
    release: Annotated[Release, typer.Option(help="Release per corpus or per example.")] = Release.corpus,
    min_examples: Annotated[int, typer.Option(help="Withhold corpora with fewer distinct examples.")] = 10,
    epsilon: Annotated[float, typer.Option(help="Differential privacy per example (input perturbation).")] = 2.0,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="Release without differential privacy.")] = False,
    delta: Annotated[float, typer.Option(help="DP delta.")] = 1e-6,
    clip_norm: Annotated[
        float | None, typer.Option(help="Clip each sketch to this L2 norm (default with DP: chosen privately).")
    ] = None,
    flood_bits: Annotated[int, typer.Option(help="Statistical security of the noise flooding (bits).")] = 40,
    allow_example_release: Annotated[bool, typer.Option(help="Permit --release example (needs --no-dp).")] = False,
    allow_exact_sketches: Annotated[bool, typer.Option(help="Score sketches as long as the gradient.")] = False,
    max_queries: Annotated[int | None, typer.Option(help="Answer at most this many queries per buyer.")] = None,
    max_epsilon: Annotated[float | None, typer.Option(help="Cap the epsilon composed over corpus versions.")] = None,
    ledger: Annotated[Path | None, typer.Option(help="Your ledger file (queries per buyer, DP versions).")] = None,
    workers: Annotated[int, typer.Option(help="Processes for per-example scoring.")] = 1,
) -> None:
    """Seller: score the store under the buyer's key. Default: aggregates of >= 10 distinct
    examples, differential privacy at epsilon 2 per example, no per-example values. Under
    `accelerate launch -m tip_hf.cli score`, per-example blocks are spread over the processes."""
    import os

    from .he import ReleasePolicy, score_encrypted
    from .store import SketchStore

    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}.")
    _need(store / "manifest.json", "store manifest", "run `tip sketch` first; an interrupted run resumes")
    _need(query_file, "query file", "the buyer's `tip query` writes it")
    _need(context, "public context", "the buyer's `tip keygen` writes public_context.tip")
    policy = ReleasePolicy(
        min_examples=min_examples,
        allow_example_release=allow_example_release,
        epsilon=None if no_dp else epsilon,
        delta=delta,
        clip_norm=clip_norm,
        flood_bits=flood_bits,
        max_queries=max_queries,
        max_epsilon=max_epsilon,
        ledger=None if ledger is None else str(ledger),
        allow_exact_sketches=allow_exact_sketches,
    )
    _, main = _device_and_main()
    result = score_encrypted(
        query_file, SketchStore(store), context, release.value, policy, buyer=buyer, workers=workers
    )
    if not main:
        return
    result.save(out)
    opening = opening or out.with_name(out.stem + ".opening.json")
    fd = os.open(opening, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(result.opening_for(), handle, indent=1)
    typer.echo(f"encrypted scores written to {out}; commitment salts (private until delivery) to {opening}")
    if result.dp:
        typer.echo(
            f"differential privacy: epsilon {result.dp['epsilon']:.3g}, delta {result.dp['delta']:.1g} per example "
            f"and corpus version (clip {result.dp['clip_norm']:.3g}); answers are post-processing of it"
        )


@app.command()
@_friendly("merge")
def merge(
    stores: Annotated[list[Path], typer.Argument(help="Finished stores sketched with the same spec and model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The merged store.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a store at --out.")] = False,
) -> None:
    """Seller: one store from several (datasets sketched separately), so one `tip score` values
    every corpus. Corpora of the same name are joined."""
    from .store import merge_stores

    for path in stores:
        _need(path / "manifest.json", "store", "run `tip sketch` first")
    merged = merge_stores(stores, out, overwrite=overwrite)
    names = ", ".join(merged.corpora)
    typer.echo(f"{len(merged)} sketches in {len(merged.corpora)} corpora ({names}) written to {out}")


# ---------------------------------------------------------------------------------------
# both
# ---------------------------------------------------------------------------------------
@app.command()
@_friendly("report")
def report(
    inputs: Annotated[list[Path], typer.Argument(help="Bundle dirs, store dirs, values.json, results.json.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory.")] = Path("tip_report"),
) -> None:
    """Markdown tables and PNG plots from any step's outputs."""
    from .report import render_report

    for path in inputs:
        _need(path, "input", "pass a bundle dir, store dir, values.json or results.json")
    written = render_report(inputs, out)
    for path in inputs:
        if (path / "manifest.json").is_file():
            from .report import store_status
            from .store import SketchStore

            status = store_status(SketchStore(path))
            if status != "complete":
                typer.echo(f"tip report: warning: store '{path}' is {status}", err=True)
    typer.echo("\n".join(str(p) for p in written))


@app.command()
@_friendly("demo")
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where buyer/, seller/, exchange/ and the report go.")
    ] = Path("tip_demo"),
    quick: Annotated[bool, typer.Option(help="Smaller data (about a minute).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for data splits and training.")] = 0,
    epsilon: Annotated[float, typer.Option(help="The seller's differential privacy per example.")] = 2.0,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="The seller releases without DP.")] = False,
) -> None:
    """The whole marketplace on real offline data: fine-tune, value 8 corpora under CKKS, check by retraining."""
    from .demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out_dir=str(out), quick=quick, seed=seed, epsilon=None if no_dp else epsilon))
    typer.echo("\nrank  corpus                      value/example   realized drop  realized rank")
    for r in result.rows:
        typer.echo(
            f"{r['rank']:>4}  {r['corpus']:<28}{r['value_mean']:>13.4g}{r['realized_eval_loss_drop']:>16.4g}"
            f"{r['realized_rank']:>15}"
        )
    typer.echo(f"\nrank agreement with realized eval-loss drops: Spearman {result.spearman:.3f}")
    if result.dp:
        typer.echo(
            f"(released under DP, epsilon {result.dp['epsilon']:.3g} per example; without DP noise and clipping: "
            f"Spearman {result.spearman_noiseless:.3f})"
        )
    typer.echo(f"report: {out / 'report.md'}, figure: {out / 'valuation.png'}; total {result.seconds['total']:.0f} s")


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        typer.echo("interrupted; `tip sketch` resumes where it stopped", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
