"""Flags for near-duplicate padding: a seller inflating a corpus with copies of its best example.

Under flat-rate pricing every copy is paid; under value pricing a copy of a high-value example
adds its value again. Neither the sketch nor the encrypted score tells the buyer that rows repeat,
so the seller's delivered rows are checked directly:

- text: MinHash signatures of character shingles, candidate pairs from MinHash LSH
  (``datasketch``), each confirmed with the MinHash estimate of Jaccard similarity, and clusters
  by union-find. Text is normalised first (NFKC, case-folded, punctuation to spaces, whitespace
  collapsed), so ``"Great movie!"`` and ``"great  movie."`` are the same row.
- dense features: rows within a relative L2 distance, by a sorted 1-D projection sweep.

Clusters are single-linkage (transitive): ``a~b`` and ``b~c`` put ``a, b, c`` together even if
``a`` and ``c`` are further apart.
"""

from __future__ import annotations

import math
import unicodedata
import zlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "near_duplicate_clusters",
    "near_duplicate_summary",
    "format_near_duplicate_summary",
    "near_duplicate_rows",
    "normalise_text",
]

_SEED = 1  # fixed MinHash permutations: the same texts give the same clusters on every run
_LSH_MAX_THRESHOLD = 0.9  # datasketch cannot band above ~0.9 with 128 permutations; candidates are confirmed anyway
_LSH_WEIGHTS = (0.05, 0.95)  # favour recall: a missed pair is lost, a spurious candidate only costs one comparison


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


class _PunctuationToSpace(dict):
    """``str.translate`` table mapping every Unicode punctuation character (category P*) to a space.

    Filled lazily, one entry per distinct character seen, so translation runs at C speed.
    """

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        self[code] = value = " " if unicodedata.category(ch).startswith("P") else ch
        return value


_PUNCTUATION_TO_SPACE = _PunctuationToSpace()


def normalise_text(text: str) -> str:
    """NFKC, case-folded, punctuation replaced by spaces, whitespace collapsed: what counts as "the same text"."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_PUNCTUATION_TO_SPACE)
    return " ".join(text.split())


def _shingles(text: str, size: int) -> list[bytes]:
    """Character ``size``-grams; a text shorter than ``size`` is one shingle, an empty text none."""
    if not text:
        return []
    if len(text) <= size:
        return [text.encode("utf-8")]
    return [g.encode("utf-8") for g in sorted({text[i : i + size] for i in range(len(text) - size + 1)})]


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of strings (one per row), not a single string; wrap it in a list")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, not str; fill or drop missing rows first")
    return out


def near_duplicate_clusters(
    texts: Sequence[str], threshold: float = 0.8, num_perm: int = 128, shingle: int = 3
) -> list[list[int]]:
    """Groups of row indices whose normalised texts have estimated Jaccard similarity >= ``threshold``.

    Similarity is over sets of ``shingle``-character shingles of :func:`normalise_text`, estimated
    with ``num_perm`` MinHash permutations (standard error about ``sqrt(J(1-J)/num_perm)``, ~0.035
    at J = 0.8 with 128). Texts identical after normalisation (exact copies, or copies one
    punctuation mark, letter case or space apart) are always grouped; texts empty after
    normalisation (``""``, ``"!!"``) group with each other only; ``threshold=1`` groups identical
    normalised texts only. Each cluster has >= 2 rows and is sorted; clusters are ordered by their
    first row. Deterministic (fixed MinHash seed and hash function).

    Character shingles ignore word order beyond ``shingle`` characters: rows that are permutations
    of the same words look alike. LSH is tuned for recall: with 128 permutations and ``threshold=0.8``
    ~95% of pairs at exactly 0.8 become candidates, ~100% of pairs at 0.9 and above. About 5 s
    per 10k rows of ~450 characters on one core.
    """
    rows = _check_texts(texts)
    t = float(threshold)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}; 0.8 flags copies a few words apart")
    if isinstance(num_perm, bool) or not isinstance(num_perm, (int, np.integer)) or num_perm < 16:
        raise ValueError(f"num_perm must be an integer >= 16, got {num_perm!r}; 128 is a good default")
    if isinstance(shingle, bool) or not isinstance(shingle, (int, np.integer)) or shingle < 1:
        raise ValueError(f"shingle must be an integer >= 1 (characters), got {shingle!r}")

    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError as err:
        raise ImportError("near_duplicate_clusters needs datasketch: pip install 'datasketch>=2.0'") from err

    # Identical normalised texts are grouped exactly; MinHash/LSH only runs once per distinct text.
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(rows):
        groups.setdefault(normalise_text(text), []).append(i)
    distinct = list(groups)
    uf = _UnionFind(len(distinct))

    nonempty = [u for u, text in enumerate(distinct) if text]
    if len(nonempty) > 1 and t < 1.0:
        signatures = MinHash.bulk(
            [_shingles(distinct[u], int(shingle)) for u in nonempty],
            num_perm=int(num_perm),
            seed=_SEED,
            hashfunc=zlib.crc32,  # stable across runs, ~20x faster than SHA-1; no collisions among ASCII 3-grams
        )
        lsh = MinHashLSH(threshold=min(t, _LSH_MAX_THRESHOLD), num_perm=int(num_perm), weights=_LSH_WEIGHTS)
        seen: dict[int, Any] = {}
        for u, sig in zip(nonempty, signatures, strict=True):
            for v in sorted(lsh.query(sig)):  # earlier distinct texts only: each pair is looked at once
                if sig.jaccard(seen[v]) >= t:
                    uf.union(u, v)
            lsh.insert(u, sig)
            seen[u] = sig
    clusters: dict[int, list[int]] = {}
    for u, text in enumerate(distinct):
        clusters.setdefault(uf.find(u), []).extend(groups[text])
    out = [sorted(c) for c in clusters.values() if len(c) >= 2]
    return sorted(out, key=lambda c: c[0])


def near_duplicate_summary(
    texts: Sequence[str],
    corpus_labels: Sequence[Hashable] | None = None,
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle: int = 3,
) -> dict[Hashable, dict[str, float]]:
    """Per corpus (labels in order of first appearance; ``"all"`` without labels), how much is padding.

    Clusters are found over all rows together, then counted within each corpus:

    - ``examples``: rows in the corpus;
    - ``clusters``: groups of >= 2 of its rows that are near-duplicates of each other;
    - ``in_clusters`` and ``fraction``: rows in those groups, and their share of the corpus;
    - ``redundant``: ``in_clusters - clusters``, the rows a deduplication would drop;
    - ``largest``: size of its largest group (0 if none) -- one example copied 16 times shows as 17;
    - ``cross_corpus``: rows with a near-duplicate in another corpus (the same data sold twice).
    """
    rows = _check_texts(texts)
    labels: list[Hashable] = ["all"] * len(rows) if corpus_labels is None else list(corpus_labels)
    if len(labels) != len(rows):
        raise ValueError(
            f"corpus_labels has {len(labels)} entries for {len(rows)} texts; give one label per text (or None)"
        )
    stats: dict[Hashable, dict[str, float]] = {}
    for label in labels:
        if label not in stats:
            stats[label] = {
                "examples": 0,
                "clusters": 0,
                "in_clusters": 0,
                "fraction": 0.0,
                "redundant": 0,
                "largest": 0,
                "cross_corpus": 0,
            }
        stats[label]["examples"] += 1
    for cluster in near_duplicate_clusters(rows, threshold=threshold, num_perm=num_perm, shingle=shingle):
        by_corpus: dict[Hashable, int] = {}
        for i in cluster:
            by_corpus[labels[i]] = by_corpus.get(labels[i], 0) + 1
        for label, size in by_corpus.items():
            s = stats[label]
            if size >= 2:
                s["clusters"] += 1
                s["in_clusters"] += size
                s["redundant"] += size - 1
                s["largest"] = max(s["largest"], size)
            if len(by_corpus) > 1:
                s["cross_corpus"] += size
    for s in stats.values():
        s["fraction"] = s["in_clusters"] / s["examples"]
    return stats


def format_near_duplicate_summary(summary: Mapping[Hashable, Mapping[str, float]]) -> list[str]:
    """One line per corpus from :func:`near_duplicate_summary`, for a CLI or a log."""
    return [
        f"{label!s}: {s['in_clusters']}/{s['examples']} examples ({s['fraction']:.1%}) in {s['clusters']} "
        f"near-duplicate clusters, largest {s['largest']}, {s['redundant']} redundant, "
        f"{s['cross_corpus']} shared with other corpora"
        for label, s in summary.items()
    ]


def near_duplicate_rows(features: np.ndarray, tol: float = 1e-6) -> list[list[int]]:
    """Groups of row indices of a 2-D array whose rows are within relative L2 distance ``tol``.

    Rows ``a`` and ``b`` match when ``||a - b|| <= tol * max(||a||, ||b||)`` (so all-zero rows match
    each other); ``tol=0`` groups exact copies only. Exact copies are grouped by ``np.unique``; the
    rest by sorting the distinct rows along one fixed random direction and comparing each row only
    with those whose projection is within ``tol * max norm`` -- a projection never grows a distance,
    so no pair is missed. Cost O(n log n) plus the candidate pairs; worst case O(n^2) when many rows
    sit within ``tol`` of each other, fine for n <= 10k. Clusters as in :func:`near_duplicate_clusters`.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D [n_examples, n_features], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf; drop or fix those rows first")
    t = float(tol)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}; 1e-6 flags float-rounding copies")
    if len(x) == 0:
        return []
    distinct, inverse = np.unique(x, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    uf = _UnionFind(len(distinct))
    norms = np.linalg.norm(distinct, axis=1)
    if t > 0 and len(distinct) > 1:
        direction = np.random.default_rng(_SEED).standard_normal(distinct.shape[1])
        direction /= max(np.linalg.norm(direction), np.finfo(np.float64).tiny)
        proj = distinct @ direction
        order = np.argsort(proj, kind="stable")
        sorted_proj = proj[order]
        # a little slack so float rounding in the projections cannot drop a pair right at the boundary
        reach = t * float(norms.max()) * (1 + 1e-9) + 1e-12 * float(np.abs(proj).max())
        ends = np.searchsorted(sorted_proj, sorted_proj + reach, side="right")
        for pos in range(len(order)):
            cand = order[pos + 1 : ends[pos]]
            if cand.size == 0:
                continue
            a = order[pos]
            dist = np.linalg.norm(distinct[cand] - distinct[a], axis=1)
            for b in cand[dist <= t * np.maximum(norms[cand], norms[a])].tolist():
                uf.union(int(a), b)
    clusters: dict[int, list[int]] = {}
    for i, u in enumerate(inverse.tolist()):
        clusters.setdefault(uf.find(u), []).append(i)
    return sorted((c for c in clusters.values() if len(c) >= 2), key=lambda c: c[0])
