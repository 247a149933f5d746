"""Forward hooks that collect what a per-example gradient sketch needs, for a whole batch.

For a target module ``y = W x`` the per-example weight gradient is ``sum_t delta_t x_t^T``
with ``delta = dL/dy``. The forward hook projects each input ``x`` right away (keeping only
``[N, T, blocks, r]``) and keeps a handle on the output ``y``; after the forward pass one
``torch.autograd.grad(loss, outputs)`` returns every ``delta`` at once -- one backward pass
for the batch, and no weight gradient is ever computed. Padding tokens are zeroed on both
sides, and all hook arithmetic runs in ``float32`` with autocast disabled.

One :class:`GradientCapture` owns every hook handle; it is a context manager that removes
them on exit, exceptions included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .projection import KroneckerProjection
from .targets import Target

__all__ = ["GradientCapture"]


def _per_token(values: torch.Tensor, n: int) -> torch.Tensor:
    """View a module input/output as ``[N, T, d]`` (2-D inputs are one token per example)."""
    if values.dim() == 2:
        if values.shape[0] != n:
            raise RuntimeError(
                f"A target module saw a 2-D input with {values.shape[0]} rows for a batch of {n}; "
                "tip_hf cannot tell which example each row belongs to. Target a module whose "
                "input is [batch, tokens, features] or [batch, features]."
            )
        return values.unsqueeze(1)
    if values.shape[0] != n:
        raise RuntimeError(f"A target module's input has leading size {values.shape[0]}, batch is {n}.")
    return values.flatten(1, -2)


def _drop_padding(projected: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero padding tokens of ``[N, T, blocks, r]`` (after projecting: r << d is cheaper).
    ``where``, not a product, so a NaN at a padding position cannot leak."""
    if mask is None or projected.shape[1] != mask.shape[1]:
        return projected
    return torch.where(mask[:, :, None, None], projected, 0.0)


class GradientCapture:
    """Hooks on the target modules; yields per-example intermediate sketches ``[N, M]``.

    Usage::

        with GradientCapture(projection, targets) as capture:
            capture.begin(token_mask)          # [N, T] bool, True on real tokens
            loss = per_example_losses(model(**batch)).sum()
            grads = torch.autograd.grad(loss, capture.outputs(), allow_unused=True)
            z = capture.intermediate(grads)    # [N, projection.intermediate_dim]
    """

    def __init__(
        self,
        projection: KroneckerProjection,
        targets: Sequence[tuple[Target, nn.Module]],
        mode: Literal["grad", "hook"] = "grad",
    ) -> None:
        """``mode="grad"``: keep module outputs for one ``autograd.grad`` call (standalone
        sketching). ``mode="hook"``: register a gradient hook on every output and combine
        as someone else's backward pass (a Trainer's) runs; read :attr:`accumulated`."""
        self.projection = projection
        self.targets = list(targets)
        self.mode = mode
        self.accumulated: torch.Tensor | None = None  # hook mode: [N, M] of the current batch
        self._handles: list[RemovableHandle] = []
        self._mask: torch.Tensor | None = None
        self._n = 0
        # per module name: one entry per call of the module in this forward pass
        self._inputs: dict[str, list[torch.Tensor]] = {}
        self._outputs: dict[str, list[torch.Tensor]] = {}

    def __enter__(self) -> GradientCapture:
        if self._handles:
            raise RuntimeError("GradientCapture is already active; it cannot be nested.")
        try:
            for target, module in self.targets:
                self._handles.append(module.register_forward_hook(self._hook(target.name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook and drop every captured tensor."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._inputs.clear()
        self._outputs.clear()
        self._mask = None

    def begin(self, token_mask: torch.Tensor) -> None:
        """Start a batch: ``token_mask`` is ``[N, T]``, True on tokens that are not padding."""
        self._inputs = {t.name: [] for t, _ in self.targets}
        self._outputs = {t.name: [] for t, _ in self.targets}
        self._mask = token_mask.bool()
        self._n = token_mask.shape[0]
        self.accumulated = None

    def pause(self) -> None:
        """Ignore forward passes until the next :meth:`begin` (evaluation, skipped steps)."""
        self._mask = None

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if self._mask is None:
                return  # the model ran outside a sketch (e.g. a generate() call)
            if not output.requires_grad:
                if self.mode == "hook":
                    return  # e.g. the no-grad first pass of reentrant checkpointing; the recompute counts
                raise RuntimeError(
                    f"The output of target module '{name}' does not require grad, so its "
                    "per-example gradient cannot be taken. Run the forward pass with grad enabled."
                )
            with torch.autocast(device_type=output.device.type, enabled=False):
                inputs = _per_token(args[0].detach(), self._n)
                projected = _drop_padding(self.projection.project_side(name, "in", inputs), self._mask)
            if self.mode == "grad":
                self._inputs[name].append(projected)
                self._outputs[name].append(output)
            else:
                output.register_hook(lambda grad: self._on_grad(name, projected, grad))

        return hook

    def outputs(self) -> list[torch.Tensor]:
        """Every captured module output, in a fixed order (pass to ``autograd.grad``)."""
        if any(not outs for outs in self._outputs.values()):
            missing = [name for name, outs in self._outputs.items() if not outs]
            raise RuntimeError(
                f"Target modules were not called in the forward pass: {missing[:5]}. Check that "
                "the targets belong to the model being run (e.g. the active LoRA adapter)."
            )
        return [out for outs in self._outputs.values() for out in outs]

    def _combine(self, name: str, x_proj: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        deltas = _per_token(grad, self._n)
        d_proj = _drop_padding(self.projection.project_side(name, "out", deltas), self._mask)
        return self.projection.combine(name, d_proj, x_proj)

    def _on_grad(self, name: str, x_proj: torch.Tensor, grad: torch.Tensor) -> None:
        with torch.no_grad(), torch.autocast(device_type=grad.device.type, enabled=False):
            if self.accumulated is None:
                self.accumulated = torch.zeros(self._n, self.projection.intermediate_dim, device=grad.device)
            block = self.projection.layout[name]
            self.accumulated[:, block.offset : block.offset + block.size] += self._combine(name, x_proj, grad)

    def intermediate(self, grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Combine captured inputs with output gradients (same order as :meth:`outputs`)."""
        device = next(iter(self._outputs.values()))[0].device
        z = torch.zeros(self._n, self.projection.intermediate_dim, device=device)
        position = 0
        with torch.autocast(device_type=device.type, enabled=False):
            for name, inputs in self._inputs.items():
                block = self.projection.layout[name]
                span = slice(block.offset, block.offset + block.size)
                for x_proj in inputs:
                    grad = grads[position]
                    position += 1
                    if grad is None:
                        continue  # the loss does not depend on this call
                    z[:, span] += self._combine(name, x_proj, grad)
        return z
