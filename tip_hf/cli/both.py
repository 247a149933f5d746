"""Commands for either party: report, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import (
    app,
    friendly,
    need,
)


@app.command()
@friendly("report")
def report(
    inputs: Annotated[list[Path], typer.Argument(help="Bundle dirs, store dirs, values.json, results.json.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory.")] = Path("tip_report"),
) -> None:
    """Markdown tables and PNG plots from any step's outputs."""
    from ..report import render_report, store_status
    from ..store import MANIFEST, SketchStore

    for path in inputs:
        need(path, "input", "pass a bundle dir, store dir, values.json or results.json")
    written = render_report(inputs, out)
    for path in inputs:
        if (path / MANIFEST).is_file():
            status = store_status(SketchStore(path))
            if status != "complete":
                typer.echo(f"tip report: warning: store '{path}' is {status}", err=True)
    typer.echo("\n".join(str(p) for p in written))


@app.command()
@friendly("demo")
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
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub, which reads it once
    from ..demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out_dir=str(out), quick=quick, seed=seed, epsilon=None if no_dp else epsilon))
    typer.echo("\nrank  corpus                     predicted drop   realized drop  realized rank")
    for r in result.rows:
        typer.echo(
            f"{r['rank']:>4}  {r['corpus']:<28}{r['value']:>13.4g}{r['realized_eval_loss_drop']:>16.4g}"
            f"{r['realized_rank']:>15}"
        )
    typer.echo(
        f"\nrank agreement with realized eval-loss drops: Spearman {result.spearman:.3f} "
        f"(first-order influence from the same release: {result.spearman_first_order:.3f})"
    )
    if result.dp:
        typer.echo(
            f"(released under DP, epsilon {result.dp['epsilon']:.3g} per example; without DP noise and clipping: "
            f"Spearman {result.spearman_noiseless:.3f}, first-order {result.spearman_first_order_noiseless:.3f})"
        )
    typer.echo(f"report: {out / 'report.md'}, figure: {out / 'valuation.png'}; total {result.seconds['total']:.0f} s")
