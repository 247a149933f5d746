"""The buyer's fine-tuning recipe: what a value predicts.

A value is the predicted drop of the buyer's eval loss when it fine-tunes on a corpus *with
this recipe*. ``Recipe.local()`` (no learning rate) is the first-order influence of
up-weighting the corpus, the paper's value; any other recipe is scored by the unrolled
predictor of :mod:`tip_hf.predictor`. The buyer declares the recipe when it makes the query
(``encrypt_query(..., recipe=)``, ``tip query --lr ... --steps ...``); it travels in the
query header and the seller's result header states the recipe it scored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .errors import TIPError

__all__ = ["Recipe", "RecipeError"]

Optimizer = Literal["sgd", "adam"]


class RecipeError(TIPError, ValueError):
    """A recipe that does not describe a fine-tune."""


@dataclass(frozen=True)
class Recipe:
    """How the buyer will fine-tune on a bought corpus.

    Attributes:
        learning_rate: the optimizer's (constant) learning rate; ``None`` is the ``local``
            recipe (first-order influence: an infinitesimal up-weighting).
        steps: optimizer steps on the corpus (give ``steps`` or ``epochs``).
        epochs: passes over the corpus (with ``joint_examples``: over corpus + own data).
        batch_size: examples per step; ``None`` is full batch.
        optimizer: ``"sgd"`` or ``"adam"`` (AdamW without weight decay, the Trainer default).
        joint_examples: the buyer trains on its own ``joint_examples`` examples *plus* the
            corpus ("joint"); ``None`` trains on the corpus alone.
        trust_radius: how far (in sketch norm) the buyer trusts its linearised eval loss:
            ``eval_loss / (2 |g_eval|)``, where the linear model would have taken half the eval
            loss away (:meth:`with_trust_radius`, filled by ``tip query`` from the bundle).
            Predicted moves are shortened to it; ``None`` never shortens.
    """

    learning_rate: float | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    optimizer: Optimizer = "sgd"
    joint_examples: int | None = None
    trust_radius: float | None = None

    def __post_init__(self) -> None:
        def bad(what: str, fix: str) -> RecipeError:
            return RecipeError(f"Recipe: {what}.", fix=fix)

        if self.learning_rate is None:
            if any(
                v is not None
                for v in (self.steps, self.epochs, self.batch_size, self.joint_examples, self.trust_radius)
            ):
                raise bad("steps, epochs, batch size or joint data need a learning rate", "Give learning_rate.")
            return
        if not (isinstance(self.learning_rate, int | float) and math.isfinite(self.learning_rate)) or (
            self.learning_rate <= 0
        ):
            raise bad(f"learning_rate must be a positive number, got {self.learning_rate!r}", "e.g. 2e-5")
        if (self.steps is None) == (self.epochs is None):
            raise bad("give exactly one of `steps` and `epochs`", "e.g. Recipe(learning_rate=1e-3, epochs=1)")
        if self.steps is not None and (not isinstance(self.steps, int) or not 1 <= self.steps <= 10**7):
            raise bad(f"steps must be an integer in 1..1e7, got {self.steps!r}", "e.g. steps=100")
        if self.epochs is not None and not (
            isinstance(self.epochs, int | float) and math.isfinite(self.epochs) and 0 < self.epochs <= 10**4
        ):
            raise bad(f"epochs must be a positive number <= 1e4, got {self.epochs!r}", "e.g. epochs=1")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise bad(f"batch_size must be an integer >= 1, got {self.batch_size!r}", "e.g. batch_size=16")
        if self.optimizer not in ("sgd", "adam"):
            raise bad(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}", "optimizer='adam'")
        if self.joint_examples is not None and (not isinstance(self.joint_examples, int) or self.joint_examples < 1):
            raise bad(f"joint_examples must be an integer >= 1, got {self.joint_examples!r}", "joint_examples=1000")
        if self.trust_radius is not None and not (
            isinstance(self.trust_radius, int | float) and math.isfinite(self.trust_radius) and self.trust_radius > 0
        ):
            raise bad(f"trust_radius must be a positive number, got {self.trust_radius!r}", "Leave it None.")

    @classmethod
    def local(cls) -> Recipe:
        """First-order influence (the value of up-weighting the corpus infinitesimally)."""
        return cls()

    def with_trust_radius(self, eval_loss: float, eval_gradient_norm: float) -> Recipe:
        """This recipe with ``trust_radius = eval_loss / (2 |g_eval|)`` (the bundle's summary
        has both; half the distance at which the linearised eval loss reaches zero, the better
        of 1x, 0.5x, 0.25x and 0.1x on both markets of ``scripts/bench_fidelity.py``); the
        ``local`` recipe is returned as is."""
        if self.is_local or not (eval_loss > 0 and eval_gradient_norm > 0):
            return self
        return Recipe(**{**self.to_dict(), "trust_radius": float(eval_loss) / (2.0 * float(eval_gradient_norm))})

    @property
    def is_local(self) -> bool:
        return self.learning_rate is None

    @property
    def name(self) -> str:
        """A short readable label, e.g. ``adam lr=1e-3 1 epoch(s) bs=16 joint(2000)``."""
        if self.is_local:
            return "local"
        length = f"{self.steps} step(s)" if self.steps is not None else f"{self.epochs:g} epoch(s)"
        parts = [self.optimizer, f"lr={self.learning_rate:g}", length]
        parts.append(f"bs={self.batch_size}" if self.batch_size else "full batch")
        if self.joint_examples:
            parts.append(f"joint({self.joint_examples})")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        """From a query header or JSON file; unknown keys and wrong types are refused."""
        if data is None:
            return cls.local()
        if not isinstance(data, dict) or set(data) - set(cls.__dataclass_fields__):
            raise RecipeError(
                f"Not a recipe: {str(data)[:80]!r}.",
                fix="Keys: learning_rate, steps, epochs, batch_size, optimizer, joint_examples, trust_radius.",
            )
        return cls(**data)

    def total_steps(self, count: int) -> int:
        """Optimizer steps the recipe takes on a corpus of ``count`` examples."""
        if self.steps is not None:
            return self.steps
        pool = count + (self.joint_examples or 0)
        batch = min(self.batch_size or pool, pool)
        return max(1, math.ceil(float(self.epochs) * pool / batch))  # type: ignore[arg-type]
