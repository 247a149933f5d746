"""Markdown tables and PNG figures from any step's outputs (``tip report``) and for the demo.

Reads what the protocol writes: a buyer bundle (``summary.json``), a seller store
(manifest), revealed values (``values.json`` from ``tip reveal``) or a demo's
``results.json``. Figures use matplotlib's non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["write_demo_report", "render_report", "markdown_table"]

VALUES_FORMAT = "tip_hf.values/1"  # what `tip reveal` writes


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if columns is None:
        columns = list(rows[0]) if rows else []

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _value_bars(ax: Any, names: list[str], values: list[float], title: str, xlabel: str) -> None:
    colors = ["#2b8a3e" if v > 0 else "#c92a2a" for v in values]
    y = range(len(names))[::-1]
    ax.barh(list(y), values, color=colors)
    ax.set_yticks(list(y), names)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)


def _zscores(xs: list[float]) -> list[float]:
    """Standardised over the list (mean 0, std 1); all zeros if the values are all equal."""
    mean = sum(xs) / len(xs)
    std = (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5
    return [(x - mean) / std if std > 0 else 0.0 for x in xs]


SCALES = (
    "A predicted value is the eval-loss drop (nats) the buyer's declared fine-tuning recipe would bring, "
    "from the linearised model with the corpus's own curvature, shortened to the buyer's trust radius; a "
    "realized drop is the decrease of the buyer's eval loss, in nats, after actually fine-tuning its model "
    "on the corpus alone. The prediction is a ranking signal more than a number: compare ranks."
)


def _paired_zbars(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Per corpus (top to bottom as ranked), predicted value and realized drop as z-scores,
    each bar labelled with its raw number."""
    values = [r["value"] for r in rows]
    drops = [r["realized_eval_loss_drop"] for r in rows]
    y = list(range(len(rows)))[::-1]
    pairs = (
        (_zscores(values), values, +0.2, "#1864ab", "predicted value (TIP, encrypted)", "{:.3g}"),
        (_zscores(drops), drops, -0.2, "#e8590c", "realized eval-loss drop (nats)", "{:+.4f}"),
    )
    for z, raw, shift, color, label, fmt in pairs:
        ax.barh([v + shift for v in y], z, height=0.38, color=color, label=label)
        for yi, zi, r in zip(y, z, raw, strict=True):
            ax.annotate(
                fmt.format(r),
                (zi, yi + shift),
                xytext=(3 if zi >= 0 else -3, 0),
                textcoords="offset points",
                ha="left" if zi >= 0 else "right",
                va="center",
                fontsize=7,
                color=color,
            )
    ax.axvline(0, color="black", linewidth=0.8)
    low, high = ax.get_xlim()
    ax.set_xlim(low - 0.35 * (high - low) / 2, high + 0.35 * (high - low) / 2)  # room for the raw numbers
    ax.set_xlabel("z-score over the corpora (raw number at each bar)")
    ax.legend(loc="best", fontsize=8)


def write_demo_report(out: Path, result: Any, config: Any, summary: dict[str, Any]) -> Path:
    """``valuation.png`` (value per corpus; predicted vs realized, standardised) and ``report.md``."""
    import textwrap

    plt = _pyplot()
    rows = result.rows
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.6), sharey=True, gridspec_kw={"width_ratios": [1.1, 1]})
    _value_bars(
        left,
        [r["corpus"] for r in rows],
        [r["value"] for r in rows],
        "Encrypted valuation (decrypted by the buyer)",
        "predicted eval-loss drop under the buyer's fine-tuning recipe (nats)",
    )
    _paired_zbars(right, rows)
    right.set_title(f"Predicted vs realized, as z-scores: Spearman {result.spearman:.2f}")
    caption = f"{SCALES} Right: both as z-scores over the corpora; Spearman {result.spearman:.3f}, Pearson "
    caption += f"{result.pearson:.3f}."
    fig.text(0.01, 0.01, textwrap.fill(caption, 230), fontsize=8)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    figure = out / "valuation.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)

    table = [
        {
            "rank": r["rank"],
            "corpus": r["corpus"],
            "examples": r["count"],
            "distinct": r.get("distinct", r["count"]),
            "predicted drop (encrypted)": r["value"],
            "plaintext": r["plaintext_value"],
            "first-order / example": r["first_order_mean"],
            "realized eval-loss drop": r["realized_eval_loss_drop"],
            "realized rank": r["realized_rank"],
        }
        for r in rows
    ]
    max_err = max(abs(r["value"] - r["plaintext_value"]) for r in rows)
    if result.dp:
        privacy = (
            f"Differential privacy (seller's default): epsilon {result.dp['epsilon']:.3g}, delta "
            f"{result.dp['delta']:.1g} per example; noise std per value up to "
            f"{max(r.get('noise_std', 0.0) for r in rows):.3g}. Without DP noise and clipping the "
            f"ranking would give Spearman {result.spearman_noiseless:.3f}."
        )
    else:
        privacy = "No differential privacy (the seller turned it off)."
    timing = markdown_table([{"step": k, "seconds": v} for k, v in result.seconds.items()])
    text = f"""# tip demo report

Buyer: all-MiniLM-L6-v2 (BERT, pretrained) fine-tuned on {summary.get("n_examples")} real movie-review
sentiment examples (sketches counted over all epochs) with `transformers.Trainer` + `TIPCallback`;
k = {summary.get("proj_dim")} sketches of `{", ".join(config.targets)}`; preconditioner
`{summary.get("preconditioner")}`, lambda {summary.get("damping_lambda", float("nan")):.3g}; eval loss
{result.eval_loss_before:.4f} on {summary.get("n_eval_examples")} held-out sentences.
Seller: {len(rows)} corpora, scored under the buyer's CKKS key (release policy: aggregates of
>= 10 distinct examples, no per-example values). {privacy} Realized: the buyer's model fine-tuned on each
corpus alone ({config.realized_epochs} epoch(s), AdamW lr {config.realized_lr}, all weights), eval-loss drop
measured and averaged over {config.realized_repeats} training seeds.

**Rank agreement, predicted vs realized: Spearman {result.spearman:.3f}, Pearson {result.pearson:.3f}.**
First-order influence (per-example mean, from the same release) ranks them with Spearman
{result.spearman_first_order:.3f}; without DP noise and clipping, {result.spearman_first_order_noiseless:.3f}.
{SCALES} The figure shows both as z-scores.
Encrypted vs the plaintext of what was scored: max |difference| {max_err:.2e} (DP noise + CKKS flooding).

{markdown_table(table)}

![valuation](valuation.png)

## Time

{timing}
"""
    report = out / "report.md"
    report.write_text(text)
    return report


def store_status(store: Any) -> str:
    """ "complete", or how far an interrupted store got and how to finish it."""
    if store.complete:
        return "complete"
    from .distributed import recorded_entries

    done = len(store) + sum(int(e["count"]) for e in recorded_entries(store.path))
    total = store.manifest["source"].get("num_rows")
    of = f"{done} of {total}" if isinstance(total, int) else f"{done} (stream; total unknown)"
    return f"INCOMPLETE: {of} rows sketched -- run the same `tip sketch` command again to finish it"


def render_report(inputs: list[Path], out: Path) -> list[Path]:
    """One markdown report (plus figures) summarising whatever protocol outputs are given."""
    out.mkdir(parents=True, exist_ok=True)
    sections, written = ["# tip report", ""], []
    for path in inputs:
        path = Path(path)
        if (path / "summary.json").is_file() and (path / "spec.json").is_file():
            summary = json.loads((path / "summary.json").read_text())
            sections += [f"## Buyer bundle `{path.name}`", "", markdown_table([summary]), ""]
        elif (path / "manifest.json").is_file():
            from .near_duplicates import near_duplicate_rows
            from .store import SketchStore

            store = SketchStore(path)
            codes = store.corpus_codes()
            per_corpus = Counter(codes.tolist())  # one pass, not one count per corpus
            small = len(store) <= 50_000  # one [N, k] array in memory
            sketches = store.sketches().double().numpy() if small else None
            counts = []
            for i, c in enumerate(store.corpora):  # copies in gradient space: the seller's padding, made visible
                row: dict[str, object] = {"corpus": c, "examples": per_corpus[i]}
                if sketches is None:
                    row["near-duplicate sketches"] = "not checked (> 50,000 examples)"
                else:
                    clusters = near_duplicate_rows(sketches[(codes == i).numpy()], tol=1e-4)
                    row["near-duplicate sketches"] = sum(len(cluster) for cluster in clusters)
                    row["clusters"] = len(clusters)
                counts.append(row)
            sections += [f"## Seller store `{path.name}` (k = {store.proj_dim}, {len(store)} examples)", ""]
            sections += [f"Status: {store_status(store)}", ""]
            sections += [markdown_table(counts), ""]
        elif path.suffix == ".json" and path.is_file():
            data = json.loads(path.read_text())
            if "rows" in data and data["rows"] and "value_mean" in data["rows"][0]:  # a demo's results.json
                sections += [f"## Demo results `{path}`", "", f"Spearman {data['spearman']:.3f}", ""]
                sections += [markdown_table(data["rows"]), ""]
                rows = data["rows"]
            elif "rows" in data:  # values.json from `tip reveal`
                if data.get("format", VALUES_FORMAT) != VALUES_FORMAT:
                    raise ValueError(
                        f"'{path}' has format {str(data.get('format'))[:40]!r}; this tip_hf reads {VALUES_FORMAT!r} "
                        "(run `tip reveal` again with this release)."
                    )
                rows = [r for r in data["rows"] if r.get("released", True)]
                sections += [f"## Revealed values `{path.name}`", "", markdown_table(data["rows"]), ""]
            else:
                raise ValueError(f"'{path}': not a file tip report knows (values.json or results.json).")
            if rows:
                plt = _pyplot()
                fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
                key = "value_mean" if "value_mean" in rows[0] else "mean"
                _value_bars(ax, [r["corpus"] for r in rows], [r[key] for r in rows], path.stem, "value per example")
                fig.tight_layout()
                figure = out / f"{path.stem}-values.png"
                fig.savefig(figure, dpi=120)
                plt.close(fig)
                written.append(figure)
                sections += [f"![values]({figure.name})", ""]
        else:
            raise FileNotFoundError(
                f"'{path}': not a bundle dir, store dir, values.json or results.json -- nothing to report."
            )
    report = out / "report.md"
    report.write_text("\n".join(sections))
    return [report, *written]
