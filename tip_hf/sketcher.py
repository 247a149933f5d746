"""`GradientSketcher`: per-example gradient sketches of a Hugging Face model, a batch at a time."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .capture import GradientCapture
from .errors import DataError, NonFiniteGradientError
from .examples import ExampleFormat, Examples, chunks, columns
from .loss import IGNORE_INDEX, per_example_loss
from .spec import BoundSpec, ValuationSpec
from .targets import unwrap_model

__all__ = ["GradientSketcher", "mean_sketch", "model_examples", "model_facts", "sketch_batch", "sketch_dataset_batches"]

logger = logging.getLogger(__name__)

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class GradientSketcher:
    """Sketches ``s_i = P g_i`` of per-example gradients, one backward pass per batch.

    ``g_i`` is the gradient of example ``i``'s own loss (see :mod:`tip_hf.loss`) with respect
    to the spec's target weights; ``P`` is the spec's seeded projection. The model runs in
    eval mode (no dropout) and its weights are left untouched: no ``.grad`` is written.

    Args:
        model: a ``transformers`` model (or a peft model around one).
        spec: the valuation settings.
        autocast_dtype: run the forward pass under ``torch.autocast`` with this dtype
            (``torch.bfloat16`` recommended; hook arithmetic always stays in ``float32``).
    """

    def __init__(
        self, model: nn.Module, spec: ValuationSpec | BoundSpec, *, autocast_dtype: torch.dtype | None = None
    ) -> None:
        bound = spec if isinstance(spec, BoundSpec) else spec.bind(model)
        if bound.model is not unwrap_model(model):
            raise ValueError("The BoundSpec was bound to another model; bind the spec to this one.")
        self.bound, self.model, self.spec = bound, bound.model, bound.spec
        self.autocast_dtype = autocast_dtype
        self.targets, self.projection = bound.targets, bound.projection
        self._accepts_position_ids = _accepts(self.model, "position_ids")
        self._accepts_use_cache = _accepts(self.model, "use_cache")
        self._max_positions = _max_positions(self.model)
        self._vocab_size = _vocab_size(self.model)
        self.last_losses = torch.zeros(0)  # per-example losses of the last sketched batch

    @property
    def proj_dim(self) -> int:
        return self.spec.proj_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def target_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, weight)`` of every target, in the order of the flattened gradient ``g``."""
        return [(f"{t.name}.weight", module.weight) for t, module in self.targets]

    def projection_matrix(self) -> torch.Tensor:
        """Explicit ``D x k`` matrix ``P`` (``float64``, CPU) with ``sketch == g @ P`` where
        ``g`` concatenates ``[p.grad.flatten() for _, p in target_parameters()]``.
        For small models: refuses more than 2e8 entries."""
        return self.projection.matrix()

    # -- batches -------------------------------------------------------------------------
    def _prepare_dense(self, batch: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """A batch of fixed-size inputs (an MLP's features, an image model's ``pixel_values``):
        every key but the labels goes to the model by name; one "token" per example."""
        if self.spec.task != "sequence_classification":
            raise KeyError(
                f"The batch has no `input_ids` (keys: {sorted(batch)}). `causal_lm` needs tokenised examples."
            )
        device = self.device
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        inputs: dict[str, torch.Tensor] = {}
        for key, value in batch.items():
            if key in ("labels", "label"):
                continue
            tensor = torch.as_tensor(value)
            inputs[key] = tensor.to(device, dtype) if tensor.is_floating_point() else tensor.to(device)
        if not inputs:
            raise KeyError(f"The batch has no model inputs (keys: {sorted(batch)}).")
        sizes = {k: v.shape[0] if v.dim() else None for k, v in inputs.items()}
        if len(set(sizes.values())) != 1 or None in sizes.values():
            raise ValueError(f"Every model input must be [batch, ...] with one batch size, got {sizes}.")
        labels = batch.get("labels", batch.get("label"))
        if labels is None:
            raise KeyError("`sequence_classification` needs `labels` (or `label`) in the batch.")
        n = next(iter(sizes.values()))
        return inputs, torch.as_tensor(labels).to(device), torch.ones(n, 1, dtype=torch.bool, device=device)

    def _prepare(self, batch: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        if "input_ids" not in batch:
            return self._prepare_dense(batch)
        device = self.device
        input_ids = torch.as_tensor(batch["input_ids"]).to(device)
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must be [batch, tokens], got shape {tuple(input_ids.shape)}.")
        mask = batch.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else torch.as_tensor(mask).to(device)
        lengths = mask.sum(1)
        if self._vocab_size is not None and input_ids.numel():
            real = input_ids[mask.bool()]
            bad = real[(real < 0) | (real >= self._vocab_size)]
            if bad.numel():
                row = int((((input_ids < 0) | (input_ids >= self._vocab_size)) & mask.bool()).any(1).nonzero()[0])
                raise DataError(
                    f"Example {row} of the batch has token id {int(bad[0])}, outside the model's vocabulary of "
                    f"{self._vocab_size}.",
                    fix="Tokenise with the tokenizer the model was trained with.",
                )
        if self._max_positions is not None and input_ids.shape[0] and int(lengths.max()) > self._max_positions:
            worst = int(lengths.argmax())
            raise DataError(
                f"Example {worst} of the batch has {int(lengths[worst])} tokens, more than the model's "
                f"{self._max_positions} positions. Truncate the inputs (tokenizer `max_length=`, or "
                f"`sketch_dataset(..., max_length={self._max_positions})`)."
            )
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in batch:
            inputs["token_type_ids"] = torch.as_tensor(batch["token_type_ids"]).to(device)
        labels = batch.get("labels", batch.get("label"))
        if labels is not None:
            labels = torch.as_tensor(labels).to(device)
        # Canonical layout: real tokens first (right padding), no all-padding columns. Models
        # read fixed positions (BERT's pooler reads position 0), so left padding would change
        # the example, not just its layout.
        order = torch.sort((mask == 0).to(torch.uint8), dim=1, stable=True).indices
        width = max(int(lengths.max()), 1) if input_ids.shape[0] else input_ids.shape[1]
        order = order[:, :width]
        inputs = {key: value.gather(1, order) for key, value in inputs.items()}
        if labels is not None and labels.shape == input_ids.shape:
            labels = labels.gather(1, order)
        mask = inputs["attention_mask"]
        if self._accepts_position_ids:
            # Positions counted over real tokens only (robust to any padding layout).
            inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if self._accepts_use_cache:
            inputs["use_cache"] = False  # no key/value cache to build: one forward pass
        if labels is None:
            if self.spec.task != "causal_lm":
                raise KeyError("`sequence_classification` needs `labels` (or `label`) in the batch.")
            labels = inputs["input_ids"].masked_fill(mask == 0, IGNORE_INDEX)
        if self.spec.task == "causal_lm":
            labels = labels.masked_fill(mask == 0, IGNORE_INDEX)
        return inputs, labels, mask.bool()

    @contextlib.contextmanager
    def _sketch_mode(self) -> Iterator[None]:
        """Eval mode, grad enabled, target weights requiring grad; all restored on exit.
        A model already in eval mode is left alone: ``model.eval()`` and ``model.train()`` on
        a 12-layer peft model cost ~15 ms of Python per batch, a GPU batch's worth."""
        training = [m for m in self.model.modules() if m.training]
        weights = [module.weight for _, module in self.targets]
        flags = [w.requires_grad for w in weights]
        try:
            if training:
                self.model.eval()
            for w in weights:
                w.requires_grad_(True)
            with torch.enable_grad():
                yield
        finally:
            for w, flag in zip(weights, flags, strict=True):
                w.requires_grad_(flag)
            for m in training:
                m.training = True

    def sketch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sketches of the batch's examples: ``[N, k]`` ``float32`` on the model's device.

        ``batch`` is what a Trainer data collator yields: ``input_ids`` and ``attention_mask``
        ``[N, T]`` (either padding side), and ``labels`` (``[N, T]`` with ``-100`` on ignored
        tokens for ``causal_lm`` -- defaults to the input ids; ``[N]`` for classification).
        Without ``input_ids`` (classification only) the batch holds dense inputs, e.g.
        ``{"pixel_values": [N, ...], "labels": [N]}``: each key but ``labels`` is passed to the
        model by name (so pass only model inputs), floating inputs cast to the model's dtype,
        and the model returns logits ``[N, C]`` (a tensor or ``.logits``).

        Raises:
            NonFiniteGradientError: some example's gradient is NaN/Inf (e.g. fp16 overflow).
            ValueError: an example is longer than the model's position embeddings.
        """
        inputs, labels, mask = self._prepare(batch)
        n = mask.shape[0]
        if n == 0:
            self.last_losses = torch.zeros(0)
            return torch.zeros(0, self.proj_dim, device=self.device)
        device_type = self.device.type
        autocast = (
            torch.autocast(device_type=device_type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with self._sketch_mode(), GradientCapture(self.projection, self.targets) as capture:
            capture.begin(mask)
            with autocast:
                logits = _logits(self.model(**inputs))
            losses, counts = per_example_loss(logits, labels, self.spec.task)
            del logits  # the loss keeps what its backward needs; [N, T, vocab] need not outlive it
            grads = torch.autograd.grad(losses.sum(), capture.outputs(), allow_unused=True)
            self.last_losses = losses.detach().float().cpu()  # after the backward is queued: no GPU stall
            del losses
            intermediate = capture.intermediate(grads)
            del grads
        sketches = self.projection.fold(intermediate)
        _check_finite(sketches)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            logger.warning("Examples %s of the batch have no target token; their sketch is zero.", empty)
        return sketches


def _logits(output: Any) -> torch.Tensor:
    """A transformers output's ``.logits``; a plain ``nn.Module`` may return the tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    if logits is None:
        raise TypeError(f"The model returned {type(output).__name__}; expected logits (a tensor or `.logits`).")
    return logits


def _check_finite(sketches: torch.Tensor) -> None:
    bad = (~torch.isfinite(sketches)).any(1).nonzero().flatten().tolist()
    if bad:
        raise NonFiniteGradientError(
            f"The gradient sketch of example(s) {bad[:10]} of the batch is NaN or Inf. Check the "
            "inputs and weights for NaN; under fp16 prefer autocast_dtype=torch.bfloat16 or float32."
        )


def _accepts(model: nn.Module, argument: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False
    return argument in params


def _vocab_size(model: nn.Module) -> int | None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    size = getattr(embeddings, "num_embeddings", None)
    return size if isinstance(size, int) else None


def _max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# -- datasets -> sketches without a store (the buyer's eval mean) ------------------------------
def model_facts(model: nn.Module, spec: ValuationSpec) -> dict[str, Any]:
    """What :class:`Examples` checks rows against: positions, classes, vocabulary, pad id."""
    config = getattr(model, "config", None)
    facts: dict[str, Any] = {"max_positions": _max_positions(model), "num_labels": None, "multi_label": False}
    if spec.task == "sequence_classification" and config is not None:
        num_labels = getattr(config, "num_labels", None)
        facts["num_labels"] = num_labels if isinstance(num_labels, int) and num_labels > 0 else None
        facts["multi_label"] = getattr(config, "problem_type", None) == "multi_label_classification"
    facts["vocab_size"] = _vocab_size(model)
    pad = getattr(config, "pad_token_id", None)
    facts["pad_id"] = pad if isinstance(pad, int) else None
    return facts


def model_examples(model: nn.Module, spec: ValuationSpec, dataset: Any, tokenizer: Any, fmt: ExampleFormat) -> Examples:
    """How ``dataset``'s rows become examples for ``model``: checked against its classes,
    vocabulary and positions (:func:`model_facts`)."""
    return Examples(spec, columns(dataset), tokenizer, fmt, **model_facts(model, spec))


def sketch_dataset_batches(
    sketcher: GradientSketcher, examples: Examples, dataset: Any, batch_size: int, desc: str, progress: bool
) -> Iterator[tuple[torch.Tensor, list[dict[str, Any]]]]:
    """``(sketches [n, k] on CPU, rows)`` per batch of a dataset, nothing written to disk,
    with a progress bar: the buyer's eval mean and training curvature."""
    size = len(dataset) if hasattr(dataset, "__len__") else None
    with tqdm(total=size, unit="ex", desc=desc, disable=not progress) as bar:
        for lo, chunk in chunks(dataset, 0, batch_size):
            rows = examples.rows(chunk, lo)
            yield sketch_batch(sketcher, examples, rows), rows
            bar.update(len(rows))


def sketch_batch(sketcher: GradientSketcher, examples: Examples, rows: list[dict[str, Any]]) -> torch.Tensor:
    """One backward pass; a model that rejects the dense features' shape gets a clear error."""
    batch = examples.collate(rows)
    try:
        return sketcher.sketch(batch).cpu()
    except RuntimeError as e:
        column = examples.fmt.feature_column
        if column is None or not any(s in str(e) for s in ("shape", "size", "dimension")):
            raise
        raise DataError(
            f"The model does not accept `{column}` of shape {tuple(rows[0]['features'].shape)} per example "
            f"({str(e).splitlines()[0]}).",
            fix="Pass the features the model was trained on (same width and order).",
        ) from None


def mean_sketch(
    model: nn.Module,
    dataset: Any,
    spec: ValuationSpec | BoundSpec,
    *,
    tokenizer: Any = None,
    text_column: str = "text",
    label_column: str | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    feature_column: str | None = None,
) -> tuple[torch.Tensor, int, float]:
    """``(sum of sketches [k] float64, count, mean loss)`` over a dataset, nothing written to
    disk: the buyer's eval gradient ``g = sum / count`` and eval loss (same examples handling
    as :func:`sketch_dataset`; the loss is each example's own mean loss, averaged)."""
    fmt = ExampleFormat(text_column, label_column, max_length=max_length, feature_column=feature_column)
    sketcher = GradientSketcher(model, spec, autocast_dtype=autocast_dtype)
    spec = sketcher.spec
    examples = model_examples(sketcher.model, spec, dataset, tokenizer, fmt)
    total, count, loss_sum = torch.zeros(spec.proj_dim, dtype=torch.float64), 0, 0.0
    for sketches, rows in sketch_dataset_batches(
        sketcher, examples, dataset, batch_size, "sketching eval set", progress
    ):
        total += sketches.double().sum(0)
        loss_sum += float(sketcher.last_losses.double().sum())
        count += len(rows)
    if count == 0:
        raise DataError("The evaluation dataset is empty: there is no eval gradient to value against.")
    return total, count, loss_sum / count
