"""tip_hf: private data valuation for Hugging Face models (Trustworthy Influence Protocol).

Influence functions on seeded Johnson-Lindenstrauss sketches of per-example gradients,
scored under CKKS homomorphic encryption.

Names are imported on first use (PEP 562), so ``import tip_hf`` and ``tip --help`` do not
load torch, transformers or TenSEAL until a command needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS = {
    "Bundle": "bundle",
    "load_bundle": "bundle",
    "build_bundle": "buyer",
    "TIPCallback": "callback",
    "sketch_dataset": "dataset",
    "NonFiniteGradientError": "errors",
    "SpecMismatchError": "errors",
    "StoreCorruptedError": "errors",
    "TargetError": "errors",
    "TIPError": "errors",
    "GradientSketcher": "sketcher",
    "ValuationSpec": "spec",
    "SketchStore": "store",
    "TIPTrainer": "trainer",
    "Values": "values",
    "plaintext_values": "values",
    "load_corpus": "data",
    "example_ids_by_corpus": "data",
    "Recipe": "recipe",
    "realized_drop": "realized",
}

__all__ = [
    "Bundle",
    "GradientSketcher",
    "NonFiniteGradientError",
    "Recipe",
    "SketchStore",
    "SpecMismatchError",
    "StoreCorruptedError",
    "TIPCallback",
    "TIPError",
    "TIPTrainer",
    "TargetError",
    "ValuationSpec",
    "Values",
    "__version__",
    "build_bundle",
    "example_ids_by_corpus",
    "load_bundle",
    "load_corpus",
    "plaintext_values",
    "realized_drop",
    "sketch_dataset",
]

if TYPE_CHECKING:  # pragma: no cover
    from .bundle import Bundle, load_bundle
    from .buyer import build_bundle
    from .callback import TIPCallback
    from .data import example_ids_by_corpus, load_corpus
    from .dataset import sketch_dataset
    from .errors import NonFiniteGradientError, SpecMismatchError, StoreCorruptedError, TargetError, TIPError
    from .realized import realized_drop
    from .recipe import Recipe
    from .sketcher import GradientSketcher
    from .spec import ValuationSpec
    from .store import SketchStore
    from .trainer import TIPTrainer
    from .values import Values, plaintext_values


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tip_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
