"""Every exception tip_hf raises on purpose (all :class:`TIPError`). Each message names the
problem and the fix; the modules that raise them re-export their own.

A :class:`TIPError` carries its fix as data: ``fix`` in the Python API's words and, where a
command line user does something else, ``cli_fix`` in the ``tip`` command's words (``tip``
prints :meth:`TIPError.for_cli`), so no message is rewritten by string replacement.
"""

from __future__ import annotations

__all__ = [
    "TIPError",
    "DataError",
    "ColumnError",
    "TargetError",
    "SpecMismatchError",
    "NonFiniteGradientError",
    "StoreCorruptedError",
    "StoreBusyError",
    "DataSourceError",
    "ParamsError",
    "MessageError",
    "VerificationError",
    "PolicyError",
    "SealLoadError",
    "KeyFileError",
    "BundleError",
]


class TIPError(Exception):
    """Base class of every error tip_hf raises on purpose.

    Args:
        message: the problem.
        fix: what to do about it, in the Python API's words (appended to the message).
        cli_fix: the same advice in the ``tip`` command line's words, if different.
    """

    def __init__(self, message: str = "", *args: object, fix: str | None = None, cli_fix: str | None = None) -> None:
        self.problem, self.fix, self.cli_fix = message, fix, cli_fix
        super().__init__(_join(message, fix), *args)

    __str__ = BaseException.__str__  # not KeyError's quoting, for subclasses that are KeyErrors too

    def for_cli(self) -> str:
        """The message with the command line's fix (what ``tip`` prints)."""
        return _join(self.problem, self.cli_fix or self.fix) if (self.cli_fix or self.fix) else str(self)


def _join(problem: str, fix: str | None) -> str:
    if not fix:
        return problem
    return f"{problem}{'' if problem.endswith(chr(10)) else ' '}{fix}"


class DataError(TIPError, ValueError):
    """An example of the dataset cannot be valued as it is (empty text, a label outside the
    model's classes, a token id outside its vocabulary, features of the wrong shape, ...)."""


class ColumnError(DataError, KeyError):
    """A column the settings name is not in the dataset."""


class TargetError(TIPError, ValueError):
    """The spec's `targets` select no module, or a module tip_hf cannot hook."""


class SpecMismatchError(TIPError, ValueError):
    """Two artifacts (spec, model, store, bundle) were made with different settings."""

    def __init__(self, what: str, expected: object, found: object, fix: str, *, cli_fix: str | None = None) -> None:
        self.expected, self.found = expected, found
        super().__init__(f"{what} differs.\n  expected: {expected}\n  found:    {found}\n", fix=fix, cli_fix=cli_fix)


class NonFiniteGradientError(TIPError, FloatingPointError):
    """A per-example gradient sketch contains NaN or Inf."""


class StoreCorruptedError(TIPError, OSError):
    """A sketch store on disk is truncated, tampered with, or incomplete."""


class StoreBusyError(TIPError, OSError):
    """Another process is writing the same sketch store."""


class DataSourceError(TIPError, FileNotFoundError):
    """The dataset could not be found or loaded (bad path, Hub unreachable, empty)."""


class ParamsError(TIPError, ValueError):
    """CKKS parameters that are malformed, below 128-bit security, or of another release."""


class MessageError(TIPError, ValueError):
    """A message is not a tip_hf message, is truncated, corrupted, or of the wrong kind."""


class VerificationError(TIPError, ValueError):
    """A delivery cannot be checked as asked (unknown corpus, no opening, wrong result kind)."""


class PolicyError(TIPError, PermissionError):
    """The seller's release policy forbids what was asked (per-example release, budget)."""


class SealLoadError(TIPError, ValueError):
    """Bytes that SEAL cannot load as the expected object under the given context."""


class KeyFileError(TIPError, OSError):
    """A buyer key file is missing, damaged, a symlink, or not private."""


class BundleError(TIPError, OSError):
    """A bundle folder is incomplete, damaged, or not a tip_hf bundle."""
