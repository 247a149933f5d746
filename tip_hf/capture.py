"""Forward hooks that collect what a per-example gradient sketch needs, for a whole batch.

For a target module ``y = W x`` the per-example weight gradient is ``sum_t delta_t x_t^T``
with ``delta = dL/dy``. The forward hook keeps what the projection needs of each input ``x``
(its projection ``[N, T, blocks, r]``, or ``x`` itself where a side is exact, see
:meth:`KroneckerProjection.keep_input`) and a handle on the output ``y``; after the forward
pass one ``torch.autograd.grad(loss, outputs)`` returns every ``delta`` at once -- one
backward pass for the batch, and no weight gradient is ever computed. Padding tokens are
zeroed on both sides, and all hook arithmetic runs in ``float32`` with autocast disabled.

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
        self._active = False
        self._mask: torch.Tensor | None = None  # None: no padding in this batch
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
        self._active, self._mask = False, None

    def begin(self, token_mask: torch.Tensor) -> None:
        """Start a batch: ``token_mask`` is ``[N, T]``, True on tokens that are not padding."""
        self._inputs = {t.name: [] for t, _ in self.targets}
        self._outputs = {t.name: [] for t, _ in self.targets}
        mask = token_mask.bool()
        self._mask = None if bool(mask.all()) else mask  # no padding: nothing to zero per module
        self._n = token_mask.shape[0]
        self._active = True
        self.accumulated = None

    def pause(self) -> None:
        """Ignore forward passes until the next :meth:`begin` (evaluation, skipped steps)."""
        self._active = False

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if not self._active:
                return  # the model ran outside a sketch (e.g. a generate() call)
            if not output.requires_grad:
                if self.mode == "hook":
                    return  # e.g. the no-grad first pass of reentrant checkpointing; the recompute counts
                raise RuntimeError(
                    f"The output of target module '{name}' does not require grad, so its "
                    "per-example gradient cannot be taken. Run the forward pass with grad enabled."
                )
            with torch.autocast(device_type=output.device.type, enabled=False):
                kept = self.projection.keep_input(name, _per_token(args[0].detach(), self._n))
            if self.mode == "grad":
                self._inputs[name].append(kept)
                self._outputs[name].append(output)
            else:
                output.register_hook(lambda grad: self._on_grad(name, kept, grad))

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

    def _combine(self, name: str, kept: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        deltas = _per_token(grad, self._n)
        mask = self._mask if self._mask is not None and deltas.shape[1] == self._mask.shape[1] else None
        return self.projection.sketch_module(name, kept, deltas, mask)

    def _on_grad(self, name: str, kept: torch.Tensor, grad: torch.Tensor) -> None:
        with torch.no_grad(), torch.autocast(device_type=grad.device.type, enabled=False):
            if self.accumulated is None:
                self.accumulated = torch.zeros(self._n, self.projection.intermediate_dim, device=grad.device)
            block = self.projection.layout[name]
            self.accumulated[:, block.offset : block.offset + block.size] += self._combine(name, kept, grad)

    def intermediate(self, grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Combine captured inputs with output gradients (same order as :meth:`outputs`):
        ``[N, intermediate_dim]``, one ``cat`` of per-module pieces in layout order."""
        device = next(iter(self._outputs.values()))[0].device
        pieces: dict[str, torch.Tensor] = {}
        position = 0
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            for name, kept_per_call in self._inputs.items():
                for kept in kept_per_call:
                    grad = grads[position]
                    position += 1
                    if grad is not None:  # None: the loss does not depend on this call
                        part = self._combine(name, kept, grad)
                        pieces[name] = pieces[name] + part if name in pieces else part
        for name, block in self.projection.layout.items():
            if name not in pieces:
                pieces[name] = torch.zeros(self._n, block.size, device=device)
        return torch.cat([pieces[name] for name in self.projection.layout], 1)
