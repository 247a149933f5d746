"""Which modules' weights a spec values: resolve `targets` against a model.

Supported modules are the ones whose per-example weight gradient is a sum of outer products
``sum_t delta_t x_t^T`` of the module's input ``x`` and output gradient ``delta``:
``torch.nn.Linear`` (weight ``d_out x d_in``) and GPT-2's ``transformers.pytorch_utils.Conv1D``
(weight ``d_in x d_out``). LoRA's ``lora_A`` / ``lora_B`` are ``nn.Linear`` too. Biases are
not targets.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn
from transformers.pytorch_utils import Conv1D

from .errors import TargetError

__all__ = ["Target", "resolve_targets", "unwrap_model"]

Kind = Literal["linear", "conv1d"]


@dataclass(frozen=True)
class Target:
    """One hooked module: its name in ``model.named_modules()``, kind and weight shape."""

    name: str
    kind: Kind
    d_in: int
    d_out: int

    @property
    def numel(self) -> int:
        return self.d_in * self.d_out


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / ``torch.compile`` wrappers so module names are the model's own."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        else:
            return model


def _kind(module: nn.Module) -> Kind | None:
    if isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def _target(name: str, module: nn.Module) -> Target:
    kind = _kind(module)
    assert kind is not None
    if kind == "conv1d":
        d_in, d_out = module.weight.shape
    else:
        d_out, d_in = module.weight.shape
    return Target(name=name, kind=kind, d_in=int(d_in), d_out=int(d_out))


def _hookable_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if _kind(module) is not None]


def _preview(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _lora_targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found: list[tuple[str, nn.Module]] = []
    unsupported: list[str] = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if len(parts) < 2 or parts[-2] not in ("lora_A", "lora_B"):
            continue
        if _kind(module) is None:
            unsupported.append(f"{name} ({type(module).__name__})")
        else:
            found.append((name, module))
    if unsupported:
        raise TargetError(
            f"targets='lora' found LoRA layers tip_hf cannot hook: {_preview(unsupported)}. "
            "Only nn.Linear LoRA factors are supported; pass module name patterns instead."
        )
    if not found:
        raise TargetError(
            "targets='lora' but the model has no LoRA layers. Wrap it with "
            "`peft.get_peft_model(model, LoraConfig(...))`, or pass module name patterns, e.g. "
            f"targets=['{_example_pattern(model)}']."
        )
    return found


def _example_pattern(model: nn.Module) -> str:
    names = _hookable_names(model)
    return names[0] if names else "encoder.layer.*.output.dense"


def _matches(name: str, pattern: str) -> bool:
    # A pattern may be written relative to the base model: peft prefixes names with
    # "base_model.model.", DDP with "module." -- so also accept a match of a dotted suffix.
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def _pattern_targets(model: nn.Module, patterns: Sequence[str]) -> list[tuple[str, nn.Module]]:
    modules = dict(model.named_modules())
    selected: dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = [name for name in modules if name and _matches(name, pattern)]
        hookable = []
        for name in hits:
            module = modules[name]
            base = getattr(module, "base_layer", None)  # peft LoRA wrapper -> its frozen base
            if _kind(module) is not None:
                hookable.append((name, module))
            elif isinstance(base, nn.Module) and _kind(base) is not None:
                hookable.append((name + ".base_layer", base))
        if not hookable:
            if hits:
                kinds = _preview([f"{n} ({type(modules[n]).__name__})" for n in hits])
                raise TargetError(
                    f"Target pattern '{pattern}' matched only modules tip_hf cannot hook: {kinds}. "
                    "Supported module types: torch.nn.Linear, transformers Conv1D. "
                    f"Hookable modules of this model: {_preview(_hookable_names(model))}."
                )
            raise TargetError(
                f"Target pattern '{pattern}' matched no module. "
                f"Hookable modules of this model: {_preview(_hookable_names(model))}."
            )
        for name, module in hookable:
            selected.setdefault(name, module)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(selected.items(), key=lambda item: order.get(item[0], len(order)))


def resolve_targets(model: nn.Module, targets: str | Sequence[str]) -> list[tuple[Target, nn.Module]]:
    """The hooked modules in ``named_modules()`` order, which is also the order of the
    flattened gradient (each weight flattened in its own storage layout).

    Raises:
        TargetError: a pattern matches nothing or nothing hookable; `'lora'` on a model
            without LoRA.
    """
    model = unwrap_model(model)
    if isinstance(targets, str):
        if targets != "lora":
            targets = [targets]
        else:
            return [(_target(n, m), m) for n, m in _lora_targets(model)]
    return [(_target(n, m), m) for n, m in _pattern_targets(model, list(targets))]
