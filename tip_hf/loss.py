"""Per-example losses: the quantity whose gradient an example's sketch compresses.

- ``causal_lm``: mean token cross-entropy of the example over its *own* target tokens
  (labels shifted by one as Hugging Face does; ``-100`` ignored), so an example's loss does
  not depend on what else is in the batch or on padding.
- ``sequence_classification``: the example's cross-entropy (``num_labels > 1``), squared
  error (one regression output), or mean binary cross-entropy (multi-label float targets).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from .errors import DataError

__all__ = ["Task", "IGNORE_INDEX", "per_example_loss"]

Task = Literal["causal_lm", "sequence_classification"]
IGNORE_INDEX = -100


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of each example, in ``float32``.

    Args:
        logits: ``[N, T, V]`` (causal LM) or ``[N, C]`` (classification).
        labels: ``[N, T]`` token ids with ``-100`` on ignored tokens, or ``[N]`` class ids,
            ``[N]`` floats (regression) or ``[N, C]`` floats (multi-label).

    Returns:
        ``(losses [N], counts [N])`` where ``counts`` is the number of loss terms; an example
        with no target token has loss 0 and count 0.
    """
    n = logits.shape[0]
    if task == "causal_lm":
        # Shift the labels, not the logits (as transformers does): no copy of [N, T, V].
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        _check_ids(targets, logits.shape[-1], "label token")
        token_losses = _TokenCrossEntropy.apply(logits.flatten(0, 1), targets.flatten()).view_as(targets)
        counts = (targets != IGNORE_INDEX).sum(1)
        return token_losses.sum(1) / counts.clamp(min=1), counts
    if task == "sequence_classification":
        logits = logits.float()
        ones = torch.ones(n, dtype=torch.long, device=logits.device)
        if labels.is_floating_point() and labels.shape == logits.shape and logits.shape[-1] > 1:
            losses = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(-1)
            return losses, ones
        if labels.dim() > 1 and labels.numel() == n:  # one label per example, as [N, 1]
            labels = labels.reshape(n)
        if labels.shape != (n,):
            raise ValueError(
                f"Labels of shape {tuple(labels.shape)} do not fit logits {tuple(logits.shape)}: expected one "
                f"label per example [{n}] or multi-label targets [{n}, {logits.shape[-1]}]."
            )
        if logits.shape[-1] == 1:
            return (logits.squeeze(-1) - labels.float()).pow(2), ones
        if labels.is_floating_point():
            fractional = (labels != labels.round()).nonzero().flatten().tolist()
            if fractional:
                raise DataError(
                    f"Example {fractional[0]} of the batch has label {float(labels[fractional[0]])}: the model has "
                    f"{logits.shape[-1]} classes, so labels must be class ids, not fractions.",
                    fix="Use integer class ids (or a one-output model for regression).",
                )
        labels = labels.long()
        _check_ids(labels, logits.shape[-1], "label", allow_ignore=False)
        return F.cross_entropy(logits, labels, reduction="none"), ones
    raise ValueError(f"Invalid task: {task!r}. Must be one of 'causal_lm', 'sequence_classification'.")


class _TokenCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy ``[R, V] -> [R]`` (``float32``; 0 on ignored tokens) whose
    backward turns its own saved log-probabilities into the gradient in place.

    Why: autograd's ``log_softmax`` + ``nll_loss`` keep ``[R, V]`` log-probabilities and then
    allocate a zero-filled ``[R, V]`` gradient of ``nll_loss`` beside the ``[R, V]`` gradient
    of ``log_softmax``; with GPT-2's 50k vocabulary these are the largest tensors and passes
    of a sketch pass. Here the backward is ``exp`` in place, ``-1`` at the targets and one
    scaling: the same numbers up to float32 rounding, one ``[R, V]`` tensor instead of three.
    A second backward through the same graph is refused by autograd (the saved tensor was
    modified), so the in-place reuse cannot go unnoticed.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits, -1, dtype=torch.float32)
        valid = targets != IGNORE_INDEX
        safe = targets.masked_fill(~valid, 0)
        picked = log_probs.gather(1, safe[:, None]).squeeze(1)
        ctx.save_for_backward(log_probs, safe, valid)
        ctx.logits_dtype = logits.dtype
        return torch.where(valid, -picked, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        log_probs, safe, valid = ctx.saved_tensors
        weight = torch.where(valid, grad.float(), 0.0)[:, None]
        out = log_probs.exp_()  # softmax, in the saved tensor: nothing else reads it
        out.scatter_add_(1, safe[:, None], -valid[:, None].float())  # - onehot, without a host sync
        return out.mul_(weight).to(ctx.logits_dtype), None


def _check_ids(ids: torch.Tensor, size: int, what: str, allow_ignore: bool = True) -> None:
    """Class ids / label tokens must index the logits (``-100`` ignored where allowed): an
    out-of-range id would otherwise raise an opaque IndexError or a device-side assert."""
    bad = (ids < 0) | (ids >= size)
    if allow_ignore:
        bad &= ids != IGNORE_INDEX
    if bool(bad.any()):
        where = bad.nonzero()[0].tolist()
        value = int(ids[tuple(where)])
        hint = "unlabelled rows (-1) cannot be valued; " if value == -1 else ""
        raise DataError(
            f"Example {where[0]} of the batch has {what} {value}, outside the model's {size} "
            f"{'classes' if what == 'label' else 'vocabulary entries'} ({hint}valid: 0..{size - 1}).",
            fix="Drop or relabel such examples, or use the model these labels were made for.",
        )
