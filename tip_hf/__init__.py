"""tip_hf: private data valuation for Hugging Face models (Trustworthy Influence Protocol).

Influence functions on seeded Johnson-Lindenstrauss sketches of per-example gradients,
scored under CKKS homomorphic encryption.
"""

from .errors import NonFiniteGradientError, SpecMismatchError, StoreCorruptedError, TargetError, TIPError
from .sketcher import GradientSketcher
from .spec import ValuationSpec

__version__ = "0.1.0"

__all__ = [
    "ValuationSpec",
    "GradientSketcher",
    "TIPError",
    "TargetError",
    "SpecMismatchError",
    "NonFiniteGradientError",
    "StoreCorruptedError",
    "__version__",
]
