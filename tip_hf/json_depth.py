"""How deep a parsed JSON value nests, without recursion: untrusted headers and manifests
are refused before anything walks them recursively (a RecursionError is no error message)."""

from __future__ import annotations

__all__ = ["MAX_JSON_DEPTH", "too_deep"]

MAX_JSON_DEPTH = 64  # tip_hf's own headers and manifests nest 3 levels


def too_deep(value: object, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests deeper than ``max_depth`` levels of lists and objects."""
    level: list[object] = [value]
    for _ in range(max_depth):
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True
