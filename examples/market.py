"""Shared pieces of the paper's experiments (``examples/*_market.py``, ``examples/*_fidelity.py``).

Each experiment runs the real protocol: the buyer's query is encrypted under its own CKKS key,
the seller scores its sketch store under that key, the buyer decrypts. Fidelity is measured
per example (the seller releases per-example values here only so that every encrypted value
can be compared with its plaintext twin; a deployed seller would use the conservative policy)
and per corpus. Results go to ``reports/<name>.json`` (every number) plus PNG figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from tip_hf import SketchStore, plaintext_values
from tip_hf.he import BuyerKeys, ReleasePolicy, decrypt_scores, encrypt_query, score_encrypted
from tip_hf.he.params import COLUMNS, PACKED

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet() -> None:
    """Keep the experiments' own output readable (no map/load progress bars or load reports)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


REPORTS = Path(__file__).resolve().parent.parent / "reports"


class MLPClassifier(nn.Module):
    """A plain PyTorch MLP with the Trainer's calling convention (keyword input, ``.loss``)."""

    def __init__(self, d_in: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(d_in, hidden)
        self.classifier = nn.Linear(hidden, classes)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        x = pixel_values if pixel_values is not None else features
        if x is None:
            raise TypeError("Pass `pixel_values` (images) or `features` (tabular rows).")
        logits = self.classifier(torch.relu(self.hidden(x.flatten(1))))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


@dataclass
class Scored:
    """Encrypted and plaintext values of one store under one query, with timings."""

    example_enc: np.ndarray
    example_plain: np.ndarray
    corpus: list[str]
    corpus_enc: dict[str, dict[str, float]]
    corpus_plain: dict[str, dict[str, float]]
    seconds: dict[str, float] = field(default_factory=dict)

    def corpus_table(self) -> list[dict[str, Any]]:
        """One row per corpus, highest decrypted mean value first, with its plaintext twin."""
        return [
            {"corpus": name, "encrypted_mean": v["mean"], "plaintext_mean": self.corpus_plain[name]["mean"]}
            for name, v in sorted(self.corpus_enc.items(), key=lambda kv: -kv[1]["mean"])
        ]

    def fidelity(self) -> dict[str, float]:
        """Pearson and worst error of encrypted vs plaintext values (per example, per corpus)."""
        names = sorted(self.corpus_enc)
        enc_c = np.array([self.corpus_enc[n]["mean"] for n in names])
        plain_c = np.array([self.corpus_plain[n]["mean"] for n in names])
        return {
            "n_examples": len(self.example_enc),
            "pearson_examples": pearson(self.example_enc, self.example_plain),
            "max_rel_error_examples": float(
                np.abs(self.example_enc - self.example_plain).max() / np.abs(self.example_plain).max()
            ),
            "n_corpora": len(names),
            "pearson_corpora": pearson(enc_c, plain_c) if len(names) > 2 else float("nan"),
            "max_rel_error_corpora": float(np.abs(enc_c - plain_c).max() / np.abs(plain_c).max()),
            "fhe_seconds_per_example": self.seconds["score_examples"] / max(len(self.example_enc), 1),
        }


def pearson(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: Any, b: Any) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def score_privately(
    query: torch.Tensor,
    store: SketchStore,
    keys: BuyerKeys | None = None,
    *,
    per_example: bool = True,
    workers: int = 1,
    progress: bool = False,
) -> Scored:
    """The buyer encrypts ``query``, the seller scores ``store`` (per corpus, and per example
    if asked), the buyer decrypts; plaintext values of the same store for comparison."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    if keys is None:
        keys = BuyerKeys.generate()
        seconds["keygen"] = time.perf_counter() - clock
    clock = time.perf_counter()
    # per-example values over many candidates: a column query (no rotations, and a seller
    # without DP scores only column queries: ReleasePolicy.allow_packed_without_dp)
    layout = COLUMNS if per_example else PACKED
    enc_query = encrypt_query(query, keys, store.spec, fingerprint=store.fingerprint, layout=layout)
    seconds["encrypt_query"] = time.perf_counter() - clock
    policy = ReleasePolicy(min_examples=1, allow_example_release=True)
    clock = time.perf_counter()
    by_corpus = score_encrypted(enc_query, store, keys.public, release="corpus", policy=policy, progress=progress)
    seconds["score_corpora"] = time.perf_counter() - clock
    table = decrypt_scores(by_corpus, keys)
    corpus_enc = {str(r["corpus"]): {"sum": float(r["sum"]), "mean": float(r["mean"])} for r in table.rows}
    plain = plaintext_values(query, store)
    corpus_plain = {
        name: {"sum": float(plain[name]["sum"]), "mean": float(plain[name]["mean"])}  # type: ignore[arg-type]
        for name in corpus_enc
    }
    example_enc = np.zeros(0)
    if per_example:
        clock = time.perf_counter()
        result = score_encrypted(
            enc_query, store, keys.public, release="example", policy=policy, workers=workers, progress=progress
        )
        seconds["score_examples"] = time.perf_counter() - clock
        clock = time.perf_counter()
        example_enc = decrypt_scores(result, keys).values
        seconds["decrypt_examples"] = time.perf_counter() - clock
    else:
        seconds["score_examples"] = float("nan")
    return Scored(example_enc, plain.per_example, plain.corpus_labels, corpus_enc, corpus_plain, seconds)


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def write_json(name: str, data: Mapping[str, Any], out_dir: Path | None = None) -> Path:
    """``reports/<name>.json``: every number of one experiment (NaN written as null)."""
    out = Path(out_dir or REPORTS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(_clean({**data, "machine": machine()}), indent=2) + "\n")
    return path


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        return _clean(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def fidelity_plot(scored: Scored, title: str, path: Path) -> Path:
    """Encrypted vs plaintext per-example values on the diagonal (the picture of Pearson ~ 1)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    lo = float(min(scored.example_plain.min(), scored.example_enc.min()))
    hi = float(max(scored.example_plain.max(), scored.example_enc.max()))
    ax.plot([lo, hi], [lo, hi], color="0.7", lw=1, zorder=0)
    ax.scatter(scored.example_plain, scored.example_enc, s=6, alpha=0.6)
    fid = scored.fidelity()
    ax.set_title(f"{title}\nPearson {fid['pearson_examples']:.8f} (n={fid['n_examples']})", fontsize=9)
    ax.set_xlabel("plaintext value")
    ax.set_ylabel("decrypted CKKS value")
    return save_figure(fig, path)


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every experiment takes: ``--quick``, ``--out``, ``--seed``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for CI")
    parser.add_argument("--out", type=Path, default=REPORTS, help="where the JSON and figures go")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def training_args(out: Path, batch_size: int, lr: float, seed: int, **kw: Any) -> Any:
    """``TrainingArguments`` for the experiments' short runs: constant lr, no logging or saving."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        **kw,
    )


def corpus_bars(table: list[dict], path: Path, xlabel: str, color: str = "tab:blue") -> Path:
    """Horizontal bars of each corpus's decrypted mean value, best first."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.9 + 0.3 * len(table)))
    ax.barh([r["corpus"] for r in table], [r["encrypted_mean"] for r in table], color=color)
    ax.invert_yaxis()
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=8)
    return save_figure(fig, path)


def seed_everything(seed: int) -> None:
    import random

    quiet()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
