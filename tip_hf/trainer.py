"""`TIPTrainer`: a `transformers.Trainer` with the TIP callback wired in, plus helpers."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import Trainer

from .callback import TIPCallback
from .dataset import sketch_dataset
from .spec import ValuationSpec
from .store import SketchStore
from .values import Values, plaintext_values

__all__ = ["TIPTrainer"]


class TIPTrainer(Trainer):
    """``Trainer(...)`` plus ``tip_spec=``: trains as usual and leaves a buyer bundle.

    Args:
        tip_spec: the valuation settings.
        tip_eval_dataset: the buyer's evaluation set for the query (default: ``eval_dataset``).
        tip_output_dir: where the bundle goes (default: ``<output_dir>/tip_bundle``).
        tip_callback_kwargs: more :class:`TIPCallback` options (``every_n_steps``, ...).
        *args, **kwargs: passed to ``transformers.Trainer``.
    """

    def __init__(
        self,
        *args: Any,
        tip_spec: ValuationSpec,
        tip_eval_dataset: Any = None,
        tip_output_dir: str | os.PathLike[str] | None = None,
        tip_callback_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tip_spec = tip_spec
        self.tip_callback = TIPCallback(
            tip_spec,
            eval_dataset=tip_eval_dataset if tip_eval_dataset is not None else self.eval_dataset,
            output_dir=tip_output_dir or os.path.join(self.args.output_dir, "tip_bundle"),
            tokenizer=self.processing_class,
            **(tip_callback_kwargs or {}),
        )
        self.add_callback(self.tip_callback)

    def build_query(self) -> torch.Tensor:
        """The buyer's query ``q`` (``[k]`` float64): from the bundle of the last ``train()``,
        or computed now from the current weights (identity preconditioner without training)."""
        bundle = self.tip_callback.bundle or self.tip_callback.build_bundle(self.model)
        if bundle is None:
            raise ValueError("No evaluation dataset to build the query from: pass tip_eval_dataset=...")
        return bundle.query

    def sketch(
        self,
        dataset: Any,
        output_dir: str | os.PathLike[str] | None = None,
        *,
        corpus_column: str | None = None,
        **kwargs: Any,
    ) -> SketchStore:
        """Sketch candidate data with the trained model (see :func:`tip_hf.sketch_dataset`)."""
        return sketch_dataset(
            self.model,
            dataset,
            self.tip_spec,
            output_dir,
            tokenizer=self.processing_class,
            corpus_column=corpus_column,
            **kwargs,
        )

    def plaintext_values(self, store: SketchStore) -> Values:
        """Per-example and per-corpus values ``q . s`` in the clear (sum, mean, count)."""
        return plaintext_values(self.build_query().numpy(), store)
