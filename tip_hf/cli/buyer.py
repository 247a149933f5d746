"""Buyer commands: keygen, query, reveal, verify."""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    ConfigArg,
    CorpusArg,
    CorpusColArg,
    DatasetArg,
    FeatureArg,
    LabelArg,
    MaxLenArg,
    SplitArg,
    TextArg,
    TokenizerArg,
    app,
    formatted_data,
    friendly,
    load_model,
    need,
)


@app.command()
@friendly("keygen")
def keygen(
    out: Annotated[Path, typer.Argument(help="Directory for secret.key (0600), public_context.tip, queries.json.")],
    preset: Annotated[str, typer.Option(help="CKKS parameter preset (128-bit secure): n8192 or n16384.")] = "n8192",
) -> None:
    """Buyer: make CKKS keys. Send public_context.tip to the seller; keep secret.key."""
    from ..he import BuyerKeys
    from ..he.keys import SECRET_FILE

    if (out / SECRET_FILE).exists():
        raise FileExistsError(f"'{out}' already holds keys; choose another directory (keys are never overwritten).")
    keys = BuyerKeys.generate(preset)
    keys.save(out)
    typer.echo(f"keys written to {out}/ (send {out / 'public_context.tip'} to the seller; keep secret.key private)")


@app.command()
@friendly("query")
def query(
    bundle: Annotated[Path, typer.Option(help="Buyer bundle directory written by TIPCallback.")],
    keys: Annotated[Path, typer.Option(help="Buyer keys directory (tip keygen).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Encrypted query file to send.")] = Path("query.tip"),
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            help="Your fine-tuning recipe's learning rate: values then predict the eval-loss drop of that "
            "fine-tune (saturation-aware). Without it: first-order influence (the 'local' recipe).",
            rich_help_panel="Recipe",
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps on a corpus.", rich_help_panel="Recipe")] = None,
    epochs: Annotated[
        float | None, typer.Option(help="Passes over a corpus (or over corpus + own data).", rich_help_panel="Recipe")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Examples per step (default: full batch).", rich_help_panel="Recipe")
    ] = None,
    optimizer: Annotated[str, typer.Option(help="sgd or adam (AdamW).", rich_help_panel="Recipe")] = "sgd",
    joint_examples: Annotated[
        int | None,
        typer.Option(help="You train on this many own examples plus the corpus.", rich_help_panel="Recipe"),
    ] = None,
    layout: Annotated[
        str,
        typer.Option(
            help="packed: ~0.4 MB, the seller rotates (per-corpus values). columns: one ciphertext per pair of "
            "coordinates (~90 KB each; k=4096 -> 374 MB), the faster choice for per-example values over many "
            "thousands of candidates.",
        ),
    ] = "packed",
) -> None:
    """Buyer: encrypt the bundle's query under the buyer's key, bound to its spec fingerprint,
    with the fine-tuning recipe the values should predict."""
    from ..bundle import load_bundle
    from ..he import BuyerKeys, encrypt_query
    from ..he.params import COLUMNS, PACKED
    from ..recipe import Recipe

    need(bundle, "bundle directory", "train with TIPCallback(output_dir=...) first")
    need(keys, "keys directory", "run `tip keygen` first")
    layouts = {"packed": PACKED, "columns": COLUMNS}
    if layout not in layouts:
        raise typer.BadParameter(f"--layout must be 'packed' or 'columns', got {layout!r}.")
    if lr is None and any(v is not None for v in (steps, epochs, batch_size, joint_examples)):
        raise typer.BadParameter("--steps, --epochs, --batch-size and --joint-examples need --lr.")
    recipe = (
        Recipe.local() if lr is None else Recipe(lr, steps, epochs, batch_size, optimizer, joint_examples)  # type: ignore[arg-type]
    )
    b = load_bundle(bundle)
    k = BuyerKeys.load(keys)
    summary = b.summary or {}
    recipe = recipe.with_trust_radius(
        float(summary.get("eval_loss") or 0), float(summary.get("eval_gradient_norm") or 0)
    )
    encrypted = encrypt_query(b.query, k, b.spec, fingerprint=b.fingerprint, recipe=recipe, layout=layouts[layout])
    encrypted.save(out)
    size = out.stat().st_size / 1e6
    typer.echo(
        f"encrypted query {encrypted.query_id} (k = {b.spec.proj_dim}, recipe: {recipe.name}, {layout} layout, "
        f"{size:.2f} MB) written to {out}"
    )


class Payout(str, Enum):
    proportional = "proportional"
    tiers = "tiers"
    noised = "noised"


@app.command()
@friendly("reveal")
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

    from ..he import BuyerKeys, decrypt_scores
    from ..pricing import payout_table
    from ..report import VALUES_FORMAT

    need(scores, "scores file", "the seller's `tip score` writes it")
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"--budget must be a positive amount, got {budget}.")
    table = decrypt_scores(scores, BuyerKeys.load(need(keys, "keys directory", "the buyer's `tip keygen`")))
    if budget is not None and table.release == "example":
        raise ValueError(
            "--budget splits a budget over corpora, but these scores are per example; leave out --budget (or "
            "ask the seller for --release corpus)."
        )
    payload: dict[str, Any] = {
        "format": VALUES_FORMAT,
        "release": table.release,
        "commitment": table.commitment,
        "dp": table.dp,
        "recipe": table.recipe,  # the fine-tune the values predict (null or no learning rate: first-order)
    }
    if table.release == "example":
        assert table.values is not None
        payload["values"] = table.values.tolist()
        payload["corpus_labels"] = table.corpus_labels
        typer.echo(f"{len(table.values)} per-example values")
    else:
        payload["rows"] = table.rows
        typer.echo(str(table))
        if budget is not None:
            released = [r for r in table.rows if r["released"]]
            values = {str(r["corpus"]): float(r["sum"]) for r in released}  # type: ignore[arg-type]
            counts = {str(r["corpus"]): int(r["count"]) for r in released}  # type: ignore[call-overload]
            priced = payout_table(values, counts, budget, payout.value)
            payload.update(priced)
            pay, flat = priced["payouts"][payout.value], priced["payouts"]["flat_rate"]
            typer.echo(f"\n{'corpus':<28}{payout.value:>14}{'flat rate':>12}")
            for name in pay:
                typer.echo(f"{name:<28}{pay[name]:>14.2f}{flat[name]:>12.2f}")
            typer.echo(f"{'Gini':<28}{priced['gini'][payout.value]:>14.3f}{priced['gini']['flat_rate']:>12.3f}")
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    typer.echo(f"\nvalues written to {out}")


@app.command()
@friendly("verify")
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

    from ..bundle import load_bundle
    from ..data import example_ids_by_corpus
    from ..dataset import sketch_dataset
    from ..he import BuyerKeys, decrypt_scores, delivery_diff, verify_commitment, verify_values
    from ..values import plaintext_values

    need(scores, "scores file", "the seller's `tip score` writes it")
    need(opening, "opening file", "the seller sends it at delivery (`tip open`)")
    b = load_bundle(need(bundle, "bundle directory", "the bundle your TIPCallback wrote"))
    table = decrypt_scores(scores, BuyerKeys.load(need(keys, "keys directory", "your `tip keygen` directory")))
    try:
        opened = json.loads(opening.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"'{opening}' is not an opening file ({err}).") from None
    released = [str(r["corpus"]) for r in table.rows if r["released"]]
    data, fmt = formatted_data(
        dataset,
        b.spec,
        config=config,
        split=split,
        only_corpus=released[0] if len(released) == 1 else None,  # one released corpus: the delivery is it
        text_column=text_column,
        label_column=label_column,
        corpus_column=corpus_column,
        corpus=corpus,
        max_length=max_length,
        feature_column=feature_column,
    )
    columns = asdict(fmt)
    net, tok = load_model(model, b.spec.task, tokenizer, needs_tokenizer=feature_column is None)
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
        # one pass: each row's scale (1 without a recipe) and scale x the first-order sum
        values = plaintext_values(b.query, store, clip_norm=table.clip_norm, recipe=table.recipe).as_dict()
    scales = {name: float(row["scale"]) for name, row in values.items()}  # type: ignore[arg-type]
    recomputed = {name: float(row["sum"]) / scales[name] for name, row in values.items()}  # type: ignore[arg-type]
    checked = verify_values(table, recomputed, scales=scales)
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
    from ..examples import columns

    if text_column not in columns(data) or len(ids) != 1:
        return {}
    from ..near_duplicates import near_duplicate_clusters

    clusters = near_duplicate_clusters([str(t) for t in data[text_column]])
    if not clusters:
        return {}
    inside = sum(len(c) for c in clusters)
    name = next(iter(ids))
    return {name: f"; WARNING {len(clusters)} near-duplicate clusters hold {inside} of {len(data)} rows"}
