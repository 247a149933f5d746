"""`TIPCallback`: the buyer's valuation query as a by-product of a `transformers.Trainer` run.

During training it reuses the Trainer's own forward and backward passes: forward hooks on
the target modules project their inputs, gradient hooks on their outputs project the
output gradients, and each micro-batch's per-example sketches feed the curvature
``F = (1/n) sum s_i s_i^T`` (float64). No extra pass over the training data.

The Trainer differentiates a *batch* loss (token mean over the whole batch, divided by
``num_items_in_batch`` under gradient accumulation, scaled by a GradScaler under fp16, ...);
a sketch is the gradient of one example's *own* mean loss. The conversion is measured, not
assumed: a gradient hook on the logits reads the batch-loss normaliser ``Z`` off
``dL/dlogit = a / Z``, where ``a`` is the gradient of each example's own loss at its logits
(cross-entropy: ``p_label - 1``; one-output MSE: ``2 (x - y)``; multi-label BCE:
``(sigmoid(x) - y) / C``; least squares over the labelled entries), and example ``i``'s
sketch is scaled by ``Z / n_i`` (``n_i`` = its target-token count; 1 for classification).
Callback sketches therefore equal :class:`GradientSketcher` sketches of the same example and
weights, whatever the Trainer's loss normalisation.

The callback never stops training: a batch whose scale cannot be read (every ``a`` is zero in
float32: p(label) rounds to 1, or an exact fit) or whose sketches are NaN/Inf is left out of
``F``, logged once per kind and counted in ``summary.json`` (``skipped_batches``).

At the end of training the main process sketches ``eval_dataset``, solves
``q = (F + lambda I)^-1 g`` (or ``q = g``) and writes the buyer bundle (:mod:`tip_hf.bundle`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .bundle import Bundle, write_bundle
from .buyer import solve_bundle
from .capture import GradientCapture
from .curvature import CurvatureAccumulator
from .errors import TIPError
from .examples import ExampleFormat, chunks
from .loss import IGNORE_INDEX
from .sketcher import model_examples
from .spec import BoundSpec, ValuationSpec
from .targets import unwrap_model

__all__ = ["TIPCallback"]

logger = logging.getLogger(__name__)


class TIPCallback(TrainerCallback):
    """Accumulate the projected curvature during training; write a buyer bundle at the end.

    Args:
        spec: the valuation settings (targets, k, seed, damping, preconditioner, task).
        eval_dataset: the buyer's evaluation examples (tokenised, or text + ``tokenizer``);
            ``None``: no query and no bundle (the curvature stays in :attr:`curvature`).
        output_dir: where the bundle goes (written by the main process only).
        every_n_steps: feed F from every n-th optimizer step (1 = all).
        last_epoch_only: feed F only during the last epoch.
        max_examples: stop feeding F after this many examples (per process).
        record_sketches: keep every training sketch in :attr:`sketches` (tests, small runs).
        tokenizer, eval_batch_size, max_length: for sketching ``eval_dataset``.
        feature_column: dense inputs (an MLP's features, ``pixel_values``) instead of tokens:
            the model keyword (and eval-set column) that holds them; classification only.

    Attributes:
        skipped: training batches left out of ``F`` by kind (``saturated``: no loss gradient to
            read the scale from; ``non_finite``: NaN/Inf sketches), also in ``summary.json``.
    """

    def __init__(
        self,
        spec: ValuationSpec,
        eval_dataset: Any = None,
        output_dir: str | os.PathLike[str] = "tip_bundle",
        *,
        every_n_steps: int = 1,
        last_epoch_only: bool = False,
        max_examples: int | None = None,
        record_sketches: bool = False,
        tokenizer: Any = None,
        eval_batch_size: int = 16,
        max_length: int | None = None,
        feature_column: str | None = None,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be >= 1, got {every_n_steps}.")
        if spec.task not in ("causal_lm", "sequence_classification"):
            raise ValueError(f"Unsupported task {spec.task!r}.")
        self.spec, self.eval_dataset, self.output_dir = spec, eval_dataset, output_dir
        self.every_n_steps, self.last_epoch_only, self.max_examples = every_n_steps, last_epoch_only, max_examples
        self.record_sketches, self.tokenizer = record_sketches, tokenizer
        self.eval_batch_size, self.max_length = eval_batch_size, max_length
        self.feature_column = feature_column
        self.curvature = CurvatureAccumulator(spec.proj_dim)
        self.sketches: list[torch.Tensor] = []
        self.bundle: Bundle | None = None
        self._capture: GradientCapture | None = None
        self._handles: list[Any] = []
        self._model: nn.Module | None = None
        self._bound: BoundSpec | None = None
        self._active = False
        self._pending: dict[str, Any] | None = None
        self.skipped = {"saturated": 0, "non_finite": 0}  # training batches left out of F
        self._warned: set[str] = set()

    # -- lifecycle -----------------------------------------------------------------------
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise TIPError("TIPCallback needs the Trainer's model (transformers passes it as `model`).")
        if getattr(args, "torch_compile", False) or hasattr(model, "_orig_mod"):
            raise TIPError(
                "TIPCallback does not support torch.compile yet: its per-module hooks would force graph breaks "
                "or be traced away. Train with torch_compile=False (the sketches do not depend on it)."
            )
        if args.label_smoothing_factor:
            raise TIPError(
                "TIPCallback reads per-example gradients off the model's own cross-entropy; "
                "set label_smoothing_factor=0."
            )
        model = unwrap_model(model)
        self._validate(model)
        self._model = model
        self._bound = self.spec.bind(model)
        targets, projection = self._bound.targets, self._bound.projection
        self._capture = GradientCapture(projection, targets, mode="hook").__enter__()
        self._capture.pause()
        self._handles = [model.register_forward_pre_hook(self._before_forward, with_kwargs=True)]
        # Read dL/dlogits where the logits are made: mixed precision (accelerate) returns a
        # float32 *copy* of the outputs, which the loss's graph does not contain.
        head = _logits_module(model, self.spec.task)
        if head is not None:
            self._handles.append(head.register_forward_hook(self._after_forward))
        self._handles.append(model.register_forward_hook(self._after_forward))

    def _validate(self, model: nn.Module) -> None:
        """Everything that would otherwise fail only after the whole training run: the task
        against the model's head, the output folder, and every eval example (tokenised and
        checked against the model's classes, vocabulary and positions)."""
        kind = type(model.get_base_model() if hasattr(model, "get_base_model") else model).__name__
        wants = {"causal_lm": ("ForCausalLM", "LMHeadModel"), "sequence_classification": ("ForSequenceClassification",)}
        other = "sequence_classification" if self.spec.task == "causal_lm" else "causal_lm"
        if any(tag in kind for tag in wants[other]) and not any(tag in kind for tag in wants[self.spec.task]):
            raise TIPError(
                f"The spec's task is {self.spec.task!r} but the model is a {kind}.",
                fix=f"Use ValuationSpec(task={other!r}) for this model.",
            )
        config = getattr(model, "config", None)
        num_labels = getattr(config, "num_labels", 1)
        if self.spec.task == "sequence_classification" and getattr(config, "problem_type", None) == "regression":
            if isinstance(num_labels, int) and num_labels > 1:
                raise TIPError(
                    f"The model is a {num_labels}-output regression (problem_type='regression'); tip_hf's "
                    "per-example loss for float targets of several outputs is multi-label BCE, not the model's MSE, "
                    "so its sketches would not be the gradients the model trains on.",
                    fix="Value a one-output regression head (num_labels=1) or a multi-label classifier.",
                )
        out = Path(self.output_dir)
        if out.exists() and not out.is_dir():
            raise TIPError(f"TIPCallback's output_dir '{out}' is a file.", fix="Pass a directory for the bundle.")
        probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
        if not os.access(probe, os.W_OK):
            raise TIPError(f"TIPCallback cannot write its bundle under '{probe}'.", fix="Pass a writable output_dir.")
        if self.eval_dataset is None:
            logger.warning("TIPCallback has no eval_dataset: it will accumulate curvature but write no query.")
            return
        fmt = ExampleFormat(max_length=self.max_length, feature_column=self.feature_column)
        examples = model_examples(model, self.spec, self.eval_dataset, self.tokenizer, fmt)
        count = 0
        for lo, chunk in chunks(self.eval_dataset, 0, max(self.eval_batch_size, 256)):
            count += len(examples.rows(chunk, lo))
        if count == 0:
            raise TIPError("TIPCallback's eval_dataset is empty.", fix="Pass the examples the query should improve.")

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        wanted = state.global_step % self.every_n_steps == 0
        if self.last_epoch_only and args.num_train_epochs and state.epoch is not None:
            wanted &= state.epoch >= args.num_train_epochs - 1
        if self.max_examples is not None:
            wanted &= self.curvature.count < self.max_examples
        self._active = bool(wanted)

    def on_substep_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._finish_batch()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._finish_batch()

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        self._finish_batch()
        self._remove_hooks()
        self.curvature.all_reduce()  # collective: every rank
        self.skipped = _all_reduce_counts(self.skipped)  # collective: every rank
        if not state.is_world_process_zero:
            return
        if self.curvature.count == 0 and self.spec.preconditioner != "identity" and self.eval_dataset is not None:
            logger.error(
                "TIPCallback accumulated no training sketches (skipped batches: %s), so the %r query has no "
                "curvature to solve with; no bundle is written. Check every_n_steps / last_epoch_only / "
                "max_examples, or use preconditioner='identity'.",
                self.skipped,
                self.spec.preconditioner,
            )
            return
        self.bundle = self.build_bundle()
        if self.bundle is not None:
            self.bundle.summary["skipped_batches"] = dict(self.skipped)
            write_bundle(self.output_dir, self.bundle)
            logger.info("TIP buyer bundle written to %s", self.output_dir)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._capture is not None:
            self._capture.remove()

    # -- per micro-batch -----------------------------------------------------------------
    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._finish_batch()
        capture = self._capture
        if capture is None:
            return
        if not (self._active and module.training and torch.is_grad_enabled()):
            capture.pause()
            return
        labels = kwargs.get("labels")
        if self.feature_column is not None:  # dense inputs: one "token" per example
            features = kwargs.get(self.feature_column, args[0] if args else None)
            if features is None and labels is not None:
                raise TIPError(
                    f"TIPCallback(feature_column={self.feature_column!r}) but the model was called with "
                    f"{sorted(kwargs)}: name the dataset column and the model's keyword {self.feature_column!r}."
                )
            if features is None or labels is None:
                capture.pause()
                return
            mask = torch.ones(features.shape[0], 1, dtype=torch.long, device=features.device)
        else:
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            if input_ids is None or labels is None:
                capture.pause()
                return
            mask = kwargs.get("attention_mask")
            mask = torch.ones_like(input_ids) if mask is None else mask
            if "left_padding" not in self._warned and _left_padded(mask):
                self._warn_once(
                    "left_padding",
                    "TIPCallback: the training batches are left-padded (an attention_mask row starts with 0). The "
                    "model's own forward then sees each example at shifted positions, so the curvature F it "
                    "records differs from GradientSketcher's (right-padded) sketches of the same examples. Pad "
                    "on the right for training (tokenizer.padding_side = 'right').",
                )
        capture.begin(mask)
        self._pending = {"labels": labels.detach(), "mask": mask.detach(), "normaliser": None}

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._pending is None or self._pending.get("hooked"):
            return
        logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
        if logits is None or not logits.requires_grad:
            return
        if self.spec.task == "sequence_classification" and logits.dim() != 2:
            return  # e.g. GPT-2's score layer: per-token logits, pooled later; the top-level hook reads them
        pending = self._pending
        pending["hooked"] = True
        logits_detached = logits.detach()

        def read_normaliser(grad: torch.Tensor) -> None:
            pending["normaliser"] = _loss_fit(logits_detached, grad, pending["labels"], self.spec.task)

        logits.register_hook(read_normaliser)

    def _finish_batch(self) -> None:
        pending, capture = self._pending, self._capture
        self._pending = None
        if pending is None or capture is None:
            return
        z = capture.accumulated
        capture.accumulated = None
        if z is None:
            return  # no backward ran for this forward (e.g. an evaluation or a skipped step)
        if pending["normaliser"] is None:
            raise TIPError(
                "TIPCallback saw the target gradients of a batch but not the gradient of its logits, so it "
                "cannot convert the Trainer's batch loss to per-example losses. Is the loss computed by the "
                "model from `outputs.logits` (no custom compute_loss)?"
            )
        aa, ag = pending["normaliser"]
        if bool(aa == 0):
            self._skip(
                "saturated",
                "TIPCallback skipped a saturated training batch: every example's loss gradient at the logits is "
                "zero in float32 (p(label) rounds to 1, or an exact fit), so the batch loss's scale cannot be read "
                "off it (and the sketches are numerically zero).",
            )
            return
        scale = (aa / ag) / _examples_terms(pending["labels"], pending["mask"], self.spec.task)
        sketches = capture.projection.fold(z * scale[:, None].to(z.device, z.dtype))
        if not bool(torch.isfinite(sketches).all()):
            self._skip(
                "non_finite",
                "TIPCallback skipped a training batch whose gradient sketches are NaN or Inf (fp16 overflow, or "
                "NaN in the inputs or weights?).",
            )
            return
        self.curvature.add(sketches)
        if self.record_sketches:
            self.sketches.append(sketches.detach().cpu())

    def _skip(self, kind: str, message: str) -> None:
        """Leave a batch out of F instead of stopping the user's training; count it by kind."""
        self.skipped[kind] += 1
        self._warn_once(
            kind,
            f"{message} It is left out of F and counted in the bundle's summary.json (skipped_batches); "
            "further such batches are not logged.",
        )

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message)

    # -- end of training -----------------------------------------------------------------
    def build_bundle(self, model: nn.Module | None = None) -> Bundle | None:
        """Sketch ``eval_dataset`` and solve for the query (main process)."""
        model = unwrap_model(model) if model is not None else self._model
        if model is None:
            raise TIPError("TIPCallback was not attached to a training run.")
        if self.eval_dataset is None:
            logger.warning(
                "TIPCallback has no eval_dataset: no query and no bundle are written; the curvature "
                "is in callback.curvature."
            )
            return None
        bound = self._bound if self._bound is not None and self._bound.model is model else self.spec.bind(model)
        return solve_bundle(
            bound,
            self.curvature,
            self.eval_dataset,
            tokenizer=self.tokenizer,
            batch_size=self.eval_batch_size,
            max_length=self.max_length,
            progress=False,
            feature_column=self.feature_column,
        )


def _logits_module(model: nn.Module, task: str) -> nn.Module | None:
    """The module whose output is the logits the loss is computed from, if identifiable."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if task == "causal_lm" and hasattr(base, "get_output_embeddings"):
        return base.get_output_embeddings()
    for name in ("classifier", "score"):
        head = getattr(base, name, None)
        if isinstance(head, nn.Linear):
            return head
    return None


def _examples_terms(labels: torch.Tensor, mask: torch.Tensor, task: str) -> torch.Tensor:
    """Number of loss terms of each example (its own target tokens; 1 for classification)."""
    if task == "causal_lm":
        targets = labels[:, 1:]
        return ((targets != IGNORE_INDEX) & (mask[:, 1:] != 0)).sum(1).clamp(min=1).double()
    return torch.ones(labels.shape[0], dtype=torch.float64, device=labels.device)


def _left_padded(mask: torch.Tensor) -> bool:
    """Some row starts with padding but has real tokens (a left-padding collator)."""
    return mask.dim() == 2 and mask.shape[1] > 0 and bool(((mask[:, 0] == 0) & (mask != 0).any(1)).any())


def _all_reduce_counts(counts: dict[str, int]) -> dict[str, int]:
    """Sum integer counters over ranks (collective: call it on every rank)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return counts
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    packed = torch.tensor([float(v) for v in counts.values()], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(packed)
    return {key: round(v) for key, v in zip(counts, packed.cpu().tolist(), strict=True)}


def _loss_fit(
    logits: torch.Tensor, grad: torch.Tensor, labels: torch.Tensor, task: str, positions: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a.a, a.g)`` (float64 scalars) for the batch-loss normaliser ``Z = a.a / a.g``, where
    ``g = dL/dlogits`` of the Trainer's batch loss and ``a`` is the gradient of each example's
    own loss (:func:`tip_hf.loss.per_example_loss`; per token for causal LM) at the same entries.

    ``g = a / Z`` holds exactly at every entry, so a least-squares fit over the first
    ``positions`` labelled positions is as good as all of them, at a tiny fraction of a
    softmax over the whole batch; of ``g`` only the label entries are read (a full row of a
    50k vocabulary per position was half of this function's time, ~1% of a training step).
    ``a.a == 0``: every example's loss gradient is zero (no scale to read); NaN: non-finite
    logits or gradients.
    """
    with torch.no_grad():
        if task == "sequence_classification" and logits.dim() == 2:
            n, classes = logits.shape
            x = logits.float()
            if labels.is_floating_point() and labels.shape == logits.shape and classes > 1:  # multi-label BCE
                a, g = (torch.sigmoid(x) - labels.float()) / classes, grad.float()
                return _dots(a, g)
            if classes == 1 and labels.numel() == n:  # one-output regression: squared error
                a, g = 2 * (x[:, 0] - labels.reshape(n).float()), grad[:, 0].float()
                return _dots(a, g)
        if task == "causal_lm":
            logits, grad, labels = logits[:, :-1], grad[:, :-1], labels[:, 1:]
        index = (labels != IGNORE_INDEX).nonzero()[:positions].unbind(1)
        picked = labels[index].long()
        rows = logits[index].float()
        p_label = torch.exp(rows.gather(1, picked[:, None])[:, 0] - torch.logsumexp(rows, dim=1))
        g_label = grad[(*index, picked)].float()
        return _dots(p_label - 1, g_label)


def _dots(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, g = a.double().flatten(), g.double().flatten()
    return (a * a).sum(), (a * g).sum()
