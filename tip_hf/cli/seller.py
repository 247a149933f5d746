"""Seller commands: sketch, merge, score, open."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    ConfigArg,
    CorpusArg,
    CorpusColArg,
    DatasetArg,
    FeatureArg,
    LabelArg,
    MaxLenArg,
    Release,
    SplitArg,
    TextArg,
    TokenizerArg,
    app,
    device_and_main,
    formatted_data,
    friendly,
    load_model,
    need,
    read_spec,
)


@app.command("open")
@friendly("open")
def open_commitments(
    opening: Annotated[Path, typer.Option(help="The opening file `tip score` wrote (keep it private).")],
    corpus: Annotated[list[str], typer.Option("--corpus", help="A corpus the buyer bought (repeat).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Opening to send with the delivery.")] = Path(
        "delivery-opening.json"
    ),
) -> None:
    """Seller, at delivery: reveal the commitment salts of the bought corpora only."""
    data = json.loads(need(opening, "opening file", "`tip score` writes it next to the scores").read_text())
    salts = data.get("salts", {}) if isinstance(data, dict) else {}
    missing = [c for c in corpus if c not in salts]
    if missing:
        raise ValueError(f"No commitment for {missing} in '{opening}'; released corpora: {sorted(salts)}.")
    opened = {**data, "salts": {c: salts[c] for c in corpus}}
    if isinstance(data.get("ids"), dict):  # the bought corpora's ids: the buyer can name missing or changed rows
        opened["ids"] = {c: data["ids"][c] for c in corpus if c in data["ids"]}
    out.write_text(json.dumps(opened, indent=1) + "\n")
    typer.echo(f"opening of {len(corpus)} corpora written to {out} (send it with the delivered data)")


@app.command()
@friendly("sketch")
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
    Under `accelerate launch --multi_gpu --num_processes N -m tip_hf.cli sketch ...` each
    process sketches its own shards; the result is identical to one process, and a killed run resumes."""
    valuation_spec, fingerprint = read_spec(spec)
    data, fmt = formatted_data(
        dataset,
        valuation_spec,
        config=config,
        split=split,
        streaming=streaming,
        text_column=text_column,
        label_column=label_column,
        corpus_column=corpus_column,
        corpus=corpus,
        max_length=max_length,
        feature_column=feature_column,
    )
    import torch

    from ..dataset import sketch_dataset

    device, main = device_and_main()
    net, tok = load_model(model, valuation_spec.task, tokenizer, needs_tokenizer=feature_column is None)
    net = net.to(device)
    store = sketch_dataset(
        net,
        data,
        valuation_spec,
        out,
        tokenizer=tok,
        **asdict(fmt),
        batch_size=batch_size,
        shard_size=shard_size,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        overwrite=overwrite,
        progress=main,
        fingerprint=fingerprint,  # the buyer's: refuse another model before sketching
    )
    if main:
        typer.echo(f"{len(store)} sketches (k = {store.proj_dim}) in {len(store.corpora)} corpora written to {out}")


@app.command()
@friendly("score")
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
    allow_packed_without_dp: Annotated[
        bool,
        typer.Option(
            help="Score a packed query with --no-dp (only if you trust the buyer's keys; else ask for a column "
            "query: tip query --layout columns)."
        ),
    ] = False,
    max_queries: Annotated[int | None, typer.Option(help="Answer at most this many queries per buyer.")] = None,
    max_epsilon: Annotated[float | None, typer.Option(help="Cap the epsilon composed over corpus versions.")] = None,
    ledger: Annotated[Path | None, typer.Option(help="Your ledger file (queries per buyer, DP versions).")] = None,
    workers: Annotated[int, typer.Option(help="Processes for per-example scoring.")] = 1,
) -> None:
    """Seller: score the store under the buyer's key. Default: aggregates of >= 10 distinct
    examples, differential privacy at epsilon 2 per example, no per-example values. Under
    `accelerate launch -m tip_hf.cli score`, per-example blocks are spread over the processes."""
    import os

    from ..he import ReleasePolicy, score_encrypted
    from ..store import MANIFEST, SketchStore

    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}.")
    need(store / MANIFEST, "store manifest", "run `tip sketch` first; an interrupted run resumes")
    need(query_file, "query file", "the buyer's `tip query` writes it")
    need(context, "public context", "the buyer's `tip keygen` writes public_context.tip")
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
        allow_packed_without_dp=allow_packed_without_dp,
    )
    _, main = device_and_main()
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
@friendly("merge")
def merge(
    stores: Annotated[list[Path], typer.Argument(help="Finished stores sketched with the same spec and model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The merged store.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a store at --out.")] = False,
) -> None:
    """Seller: one store from several (datasets sketched separately), so one `tip score` values
    every corpus. Corpora of the same name are joined."""
    from ..store import MANIFEST, merge_stores

    for path in stores:
        need(path / MANIFEST, "store", "run `tip sketch` first")
    merged = merge_stores(stores, out, overwrite=overwrite)
    names = ", ".join(merged.corpora)
    typer.echo(f"{len(merged)} sketches in {len(merged.corpora)} corpora ({names}) written to {out}")
