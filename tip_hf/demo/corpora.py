"""The demo's data: the buyer's train/eval split and eight seller corpora of visibly different
quality, all real labelled text (see :mod:`tip_hf.demo.assets`); as ``datasets`` tables."""

from __future__ import annotations

import random
from typing import Any

from .assets import Snippet, sentiment_snippets, sms_spam

__all__ = ["as_dataset", "buyer_split", "demo_corpora", "tokenised"]


def buyer_split(n_train: int, n_eval: int, seed: int) -> tuple[list[Snippet], list[Snippet]]:
    """The buyer's training and eval movie reviews: disjoint, drawn with ``random.Random(seed)``."""
    movies = sentiment_snippets("movies")
    order = list(range(len(movies)))
    random.Random(seed).shuffle(order)
    return [movies[i] for i in order[:n_train]], [movies[i] for i in order[n_train : n_train + n_eval]]


def demo_corpora(per_corpus: int, seed: int, exclude: set[str]) -> dict[str, list[Snippet]]:
    """Eight seller corpora from real labelled text; ``exclude``: texts the buyer holds."""
    rng = random.Random(seed + 1)
    movies = [s for s in sentiment_snippets("movies") if s.text not in exclude]
    rng.shuffle(movies)
    take = iter(movies)

    def draw(n: int) -> list[Snippet]:
        return [next(take) for _ in range(n)]

    def sample(rows: list[Snippet], n: int) -> list[Snippet]:
        return rng.sample(rows, n)

    noisy = draw(per_corpus)
    flip = set(rng.sample(range(per_corpus), int(0.4 * per_corpus)))
    few = draw(max(12, per_corpus // 6))  # >= 10 distinct: the release policy counts distinct examples
    return {
        "movie-reviews": draw(per_corpus),
        "amazon-reviews": sample(sentiment_snippets("amazon"), per_corpus),
        "nyt-editorials": sample(sentiment_snippets("nyt"), per_corpus),
        "tweets": sample(sentiment_snippets("tweets"), per_corpus),
        "movie-reviews-40%-noisy": [
            Snippet(s.text, 1 - s.label if i in flip else s.label) for i, s in enumerate(noisy)
        ],
        "movie-reviews-flipped": [Snippet(s.text, 1 - s.label) for s in draw(per_corpus)],
        "movie-duplicates": [few[i % len(few)] for i in range(per_corpus)],
        "sms-spam-labels": sample(sms_spam(), per_corpus),
    }


def as_dataset(rows: list[Snippet], corpus: str | None = None) -> Any:
    """A ``datasets.Dataset`` with ``text`` and ``label`` (and ``corpus``, when given) columns."""
    from datasets import Dataset

    data: dict[str, list[Any]] = {"text": [r.text for r in rows], "label": [r.label for r in rows]}
    if corpus is not None:
        data["corpus"] = [corpus] * len(rows)
    return Dataset.from_dict(data)


def tokenised(rows: list[Snippet], tokenizer: Any, max_length: int) -> Any:
    """``rows`` tokenised for the Trainer (``input_ids``, ``attention_mask``, ``label``)."""
    return as_dataset(rows).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True, remove_columns=["text"]
    )
