"""tip_hf: private data valuation for Hugging Face models (Trustworthy Influence Protocol).

Influence functions on seeded Johnson-Lindenstrauss sketches of per-example gradients,
scored under CKKS homomorphic encryption.
"""

from ._version import __version__
from .bundle import Bundle, load_bundle
from .callback import TIPCallback
from .dataset import sketch_dataset
from .errors import NonFiniteGradientError, SpecMismatchError, StoreCorruptedError, TargetError, TIPError
from .sketcher import GradientSketcher
from .spec import ValuationSpec
from .store import SketchStore
from .trainer import TIPTrainer
from .values import Values, plaintext_values

__all__ = [
    "Bundle",
    "load_bundle",
    "ValuationSpec",
    "GradientSketcher",
    "sketch_dataset",
    "SketchStore",
    "TIPCallback",
    "TIPError",
    "TIPTrainer",
    "TargetError",
    "Values",
    "SpecMismatchError",
    "NonFiniteGradientError",
    "StoreCorruptedError",
    "__version__",
    "plaintext_values",
]
