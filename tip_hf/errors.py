"""Exceptions users can catch. Each message names the problem and the fix."""

from __future__ import annotations

__all__ = [
    "TIPError",
    "TargetError",
    "SpecMismatchError",
    "NonFiniteGradientError",
    "StoreCorruptedError",
]


class TIPError(Exception):
    """Base class of every error tip_hf raises on purpose."""


class TargetError(TIPError, ValueError):
    """The spec's `targets` select no module, or a module tip_hf cannot hook."""


class SpecMismatchError(TIPError, ValueError):
    """Two artifacts (spec, model, store, bundle) were made with different settings."""

    def __init__(self, what: str, expected: object, found: object, fix: str) -> None:
        self.expected, self.found = expected, found
        super().__init__(f"{what} differs.\n  expected: {expected}\n  found:    {found}\n{fix}")


class NonFiniteGradientError(TIPError, FloatingPointError):
    """A per-example gradient sketch contains NaN or Inf."""


class StoreCorruptedError(TIPError, OSError):
    """A sketch store on disk is truncated, tampered with, or incomplete."""
