"""Near-duplicate flags: padding a corpus with copies of its best example is caught, distinct rows are not."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tip_hf.near_duplicates import (
    format_near_duplicate_summary,
    near_duplicate_clusters,
    near_duplicate_rows,
    near_duplicate_summary,
    normalise_text,
)

# The text functions need datasketch (not a declared dependency yet); the dense ones do not.
needs_datasketch = pytest.mark.skipif(importlib.util.find_spec("datasketch") is None, reason="needs datasketch")

DISTINCT = [
    "The acting was superb and the story kept me hooked until the very end.",
    "I fell asleep halfway through; the plot goes nowhere.",
    "A charming little film with a soundtrack I keep humming days later.",
    "The special effects look cheap, but the dialogue is surprisingly sharp.",
    "My kids loved it, though I found the jokes a bit repetitive.",
    "Two hours of my life I will never get back.",
    "Beautiful cinematography, weak script, forgettable villain.",
    "The lead actress carries every scene she is in.",
    "Far too long, and the ending makes no sense at all.",
    "An honest, moving portrait of a family falling apart.",
    "The sequel is better than the original in every way.",
    "Predictable from the first minute, yet oddly comforting.",
    "The sound mixing made half the lines impossible to hear.",
    "A clever heist movie with a twist I did not see coming.",
    "The director clearly had no idea how to pace a thriller.",
    "Gorgeous costumes cannot save a story this thin.",
    "I laughed out loud at least a dozen times.",
    "The documentary is informative but dry as dust.",
    "Every character makes the dumbest possible decision.",
    "A quiet masterpiece about grief and second chances.",
    "The subtitles were out of sync for the whole second act.",
    "Action scenes are thrilling, the romance subplot is not.",
    "This remake misses everything that made the classic work.",
    "Stunning animation and a genuinely funny talking raccoon.",
    "The horror is more gross than scary.",
    "A perfect date movie: light, warm and never boring.",
    "The book was better, as usual.",
    "Strong performances let down by a muddled third act.",
    "I would watch it again just for the score.",
    "The courtroom drama feels authentic and tense.",
    "Nothing happens for ninety minutes, then everything happens at once.",
    "A bold experiment that does not quite come together.",
    "The chemistry between the two leads is electric.",
    "Overhyped, overlong and overacted.",
    "An inspiring true story told without sentimentality.",
    "The camera shakes so much I felt seasick.",
    "Smart science fiction that respects its audience.",
    "The villain's motivation is never explained.",
    "A feel-good sports film with a predictable but satisfying finale.",
    "I have no idea why critics loved this one.",
]
BEST = DISTINCT[0]
NEAR = [  # one punctuation mark, letter case or space away from BEST (or a few of those at once)
    "The acting was superb and the story kept me hooked until the very end!",
    "The acting was superb and the story kept me hooked until the very end",
    "the acting was superb and the story kept me hooked until the very end.",
    "The acting was superb, and the story kept me hooked until the very end.",
    "The acting was superb and the story kept me hooked until the very end..",
    "The  acting was superb and the story kept me hooked until the very end.",
    "The acting was superb and the story kept me hooked until the very end. ",
    "THE ACTING WAS SUPERB AND THE STORY KEPT ME HOOKED UNTIL THE VERY END.",
    "The acting was Superb and the story kept me hooked until the very end.",
    "The acting was superb and the story kept me hooked until the very end?",
    "The acting was superb and the story kept me hooked - until the very end.",
    "The acting was superb and the story kept me hooked until the very end;",
    "  The acting was superb and the story kept me hooked until the very end.",
    "The acting was superb and the story kept me hooked until the very\tend.",
    '"The acting was superb and the story kept me hooked until the very end."',
    "The acting was superb and the story kept me hooked until the very end.!",
]


@needs_datasketch
def test_padding_with_near_copies_is_one_cluster_and_distinct_rows_are_not_flagged():
    texts = DISTINCT + NEAR
    clusters = near_duplicate_clusters(texts)
    assert clusters == [[0, *range(len(DISTINCT), len(texts))]]
    assert len(clusters[0]) == 17


@needs_datasketch
def test_no_false_positives_among_distinct_sentences():
    assert near_duplicate_clusters(DISTINCT) == []
    assert near_duplicate_clusters(DISTINCT, threshold=0.5) == []


@needs_datasketch
def test_exact_copy_padding_is_flagged():
    texts = DISTINCT[:10] + [DISTINCT[3]] * 5 + [DISTINCT[7]]
    assert near_duplicate_clusters(texts) == [[3, 10, 11, 12, 13, 14], [7, 15]]


@needs_datasketch
def test_a_changed_word_is_near_at_a_lower_threshold_only():
    a = "The acting was superb and the story kept me hooked until the very end of the film."
    b = "The acting was superb and the story kept me gripped until the very end of the film."
    assert near_duplicate_clusters([a, b], threshold=0.95) == []
    assert near_duplicate_clusters([a, b], threshold=0.6) == [[0, 1]]


@needs_datasketch
def test_empty_and_short_strings():
    texts = ["", "ok", "ok!", "a", "", "!!", "?", "b", "no", "ok   "]
    # "", "!!" and "?" are empty after normalisation; "ok" variants are identical; "a", "b", "no" are unique.
    assert near_duplicate_clusters(texts) == [[0, 4, 5, 6], [1, 2, 9]]
    assert near_duplicate_clusters([]) == []
    assert near_duplicate_clusters([""]) == []
    assert near_duplicate_clusters(["x"], threshold=1.0) == []
    assert near_duplicate_clusters(["ab", "ab.", "ba"], shingle=5) == [[0, 1]]


@needs_datasketch
def test_deterministic_and_order_of_clusters():
    texts = DISTINCT + NEAR + [DISTINCT[5]]
    first = near_duplicate_clusters(texts)
    assert first == near_duplicate_clusters(list(texts))
    assert first == [[0, *range(40, 56)], [5, 56]]
    assert all(c == sorted(c) for c in first)


def test_normalise_text():
    assert normalise_text("  Great\tMOVIE!! ") == "great movie"
    assert normalise_text("great,movie.") == "great movie"
    assert normalise_text("ﬁne") == "fine"  # NFKC ligature


@needs_datasketch
def test_summary_per_corpus():
    honest = DISTINCT[20:]
    cheat = DISTINCT[:20] + NEAR
    texts = honest + cheat + [DISTINCT[30]]  # the last row: a copy of an honest row, sold again by "resold"
    labels = ["honest"] * len(honest) + ["cheat"] * len(cheat) + ["resold"]
    summary = near_duplicate_summary(texts, labels)
    assert list(summary) == ["honest", "cheat", "resold"]
    assert summary["cheat"] == {
        "examples": 36,
        "clusters": 1,
        "in_clusters": 17,
        "fraction": 17 / 36,
        "redundant": 16,
        "largest": 17,
        "cross_corpus": 0,
    }
    assert summary["honest"]["clusters"] == 0 and summary["honest"]["fraction"] == 0.0
    assert summary["honest"]["cross_corpus"] == 1 and summary["resold"]["cross_corpus"] == 1
    assert summary["resold"]["largest"] == 0
    lines = format_near_duplicate_summary(summary)
    assert len(lines) == 3
    assert lines[1].startswith("cheat: 17/36 examples (47.2%) in 1 near-duplicate clusters, largest 17")


@needs_datasketch
def test_summary_without_labels_and_errors():
    summary = near_duplicate_summary(DISTINCT + NEAR)
    assert list(summary) == ["all"]
    assert summary["all"]["largest"] == 17 and summary["all"]["redundant"] == 16
    with pytest.raises(ValueError, match="one label per text"):
        near_duplicate_summary(["a", "b"], ["x"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"threshold": 0.0}, ValueError, "threshold"),
        ({"threshold": 1.5}, ValueError, "threshold"),
        ({"num_perm": 4}, ValueError, "num_perm"),
        ({"shingle": 0}, ValueError, "shingle"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        near_duplicate_clusters(["a", "b"], **kwargs)


def test_bad_texts():
    with pytest.raises(TypeError, match="single string"):
        near_duplicate_clusters("not a list")
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        near_duplicate_clusters(["a", None])


@needs_datasketch
def test_many_rows():
    rng = np.random.default_rng(0)
    vocab = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=6)) for _ in range(500)]
    rows = [" ".join(rng.choice(vocab, size=10)) for _ in range(2000)]
    texts = [*rows, rows[7].upper() + "!", rows[7] + " ."]
    assert near_duplicate_clusters(texts) == [[7, 2000, 2001]]


def test_dense_rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8))
    padded = np.vstack([x, x[3] * (1 + 1e-9), x[3] + 1e-9, x[10], np.zeros((2, 8)), 1e6 * x[20], 1e6 * x[20] + 1e-4])
    assert near_duplicate_rows(x) == []
    assert near_duplicate_rows(padded) == [[3, 50, 51], [10, 52], [53, 54], [55, 56]]
    assert near_duplicate_rows(padded, tol=0) == [[10, 52], [53, 54]]
    assert near_duplicate_rows(np.zeros((0, 3))) == []
    close = np.vstack([x[0], x[0] * (1 + 1e-3)])
    assert near_duplicate_rows(close) == []
    assert near_duplicate_rows(close, tol=1e-2) == [[0, 1]]


def test_dense_rows_errors():
    with pytest.raises(ValueError, match="2-D"):
        near_duplicate_rows(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        near_duplicate_rows(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="tol"):
        near_duplicate_rows(np.zeros((2, 2)), tol=-1)
