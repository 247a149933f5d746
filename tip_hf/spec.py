"""`ValuationSpec`: what both parties must agree on to produce comparable sketches."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .errors import DataError
from .projection import PROJECTION_VERSION, KroneckerProjection
from .targets import Target, resolve_targets, unwrap_model

__all__ = ["BoundSpec", "ExampleFormat", "ValuationSpec"]

_TASKS = ("causal_lm", "sequence_classification")
_PRECONDITIONERS = ("identity", "fisher")
# Settings that change sketches. `damping` and `preconditioner` only change the query.
_SKETCH_FIELDS = ("targets", "proj_dim", "seed", "task", "proj_factor", "proj_blocks", "projection_version")


@dataclass(frozen=True)
class ValuationSpec:
    """The valuation settings shared by buyer and seller.

    Two sketches are comparable only when they come from the same spec *and* the same model
    weights: :meth:`fingerprint` binds the two and is stamped on every artifact.
    """

    targets: str | tuple[str, ...] = field(
        default="lora",
        metadata={
            "help": "'lora' (every peft LoRA A/B weight) or glob patterns over module names, "
            "e.g. ['transformer.h.*.mlp.c_fc']; selects nn.Linear and GPT-2 Conv1D modules."
        },
    )
    proj_dim: int = field(default=1024, metadata={"help": "Sketch dimension k."})
    seed: int = field(default=0, metadata={"help": "Projection seed (with module names, fixes every random number)."})
    task: Literal["causal_lm", "sequence_classification"] = field(
        default="causal_lm", metadata={"help": "Which per-example loss is differentiated."}
    )
    damping: float = field(
        default=0.1,
        metadata={
            "help": "Fisher damping, relative: lambda = damping * trace(F) / k (raised to 1e-3 x the mean "
            "nonzero eigenvalue, with a warning, when F is rank-deficient and lambda is below that)."
        },
    )
    preconditioner: Literal["identity", "fisher"] = field(
        default="identity",
        metadata={"help": "Query preconditioner: 'identity' (gradient dot products) or damped 'fisher'."},
    )
    proj_factor: int = field(default=16, metadata={"help": "Kronecker factor size r per side."})
    proj_blocks: int | None = field(
        default=None,
        metadata={"help": "Independent Kronecker blocks per module; None: the fewest that reach proj_dim."},
    )
    projection_version: str = field(default=PROJECTION_VERSION, metadata={"help": "Projection algorithm version."})

    def __post_init__(self) -> None:
        targets = self.targets
        if isinstance(targets, str):
            if not targets:
                raise ValueError("`targets` must be 'lora' or a non-empty list of module name patterns.")
        else:
            targets = tuple(str(t) for t in targets)
            if not targets or any(not t for t in targets):
                raise ValueError("`targets` must be 'lora' or a non-empty list of module name patterns.")
            object.__setattr__(self, "targets", targets)
        for name in ("proj_dim", "proj_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.proj_blocks is not None and (not isinstance(self.proj_blocks, int) or self.proj_blocks < 1):
            raise ValueError(f"`proj_blocks` must be a positive integer or None, got {self.proj_blocks!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer, got {self.seed!r}.")
        if self.task not in _TASKS:
            raise ValueError(f"Invalid `task`: {self.task!r}. Must be one of {_TASKS}.")
        if self.preconditioner not in _PRECONDITIONERS:
            raise ValueError(f"Invalid `preconditioner`: {self.preconditioner!r}. Must be one of {_PRECONDITIONERS}.")
        if not (float(self.damping) > 0.0):
            raise ValueError(f"`damping` must be > 0, got {self.damping!r}.")
        if self.projection_version != PROJECTION_VERSION:
            raise ValueError(
                f"This spec asks for projection version {self.projection_version!r}, but this tip_hf "
                f"implements {PROJECTION_VERSION!r}. Install the tip_hf version that made the spec."
            )

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not isinstance(self.targets, str):
            data["targets"] = list(self.targets)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValuationSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown ValuationSpec fields {unknown}; known fields: {sorted(known)}.")
        data = dict(data)
        if isinstance(data.get("targets"), list):
            data["targets"] = tuple(data["targets"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ValuationSpec:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ValuationSpec:
        return cls.from_json(Path(path).read_text())

    # -- binding to a model --------------------------------------------------------------
    def bind(self, model: nn.Module) -> BoundSpec:
        """This spec on ``model``: targets resolved and the projection built, once, for every
        step that needs them (sketcher, callback, fingerprint)."""
        model = unwrap_model(model)
        targets = resolve_targets(model, self.targets)
        projection = KroneckerProjection(
            [t for t, _ in targets], self.proj_dim, self.seed, self.proj_factor, self.proj_blocks
        )
        return BoundSpec(self, model, targets, projection)

    def projection(self, model_or_targets: nn.Module | Sequence[Target]) -> KroneckerProjection:
        """The seeded projection this spec defines on a model's target modules (or on
        already resolved targets)."""
        if isinstance(model_or_targets, nn.Module):
            return self.bind(model_or_targets).projection
        targets = list(model_or_targets)
        return KroneckerProjection(targets, self.proj_dim, self.seed, self.proj_factor, self.proj_blocks)

    def sketch_settings(self) -> dict[str, Any]:
        """The fields that change sketches (``damping``/``preconditioner`` do not)."""
        data = self.to_dict()
        return {name: data[name] for name in _SKETCH_FIELDS}

    def fingerprint(self, model: nn.Module) -> str:
        """SHA-256 over the sketch settings, the resolved target layout, the model config and
        every parameter's bytes (names, dtypes, shapes, values): :meth:`BoundSpec.fingerprint`.

        Two parties with equal fingerprints compute identical sketches (up to floating-point
        summation order). Hashes ~1 GB/s of weights; the weights are copied to the CPU.
        """
        return self.bind(model).fingerprint()


@dataclass(frozen=True)
class BoundSpec:
    """A :class:`ValuationSpec` bound to a model (:meth:`ValuationSpec.bind`): its targets
    resolved and its projection built once. :meth:`fingerprint` hashes the weights as they
    are when it is called (a training run calls it at the end)."""

    spec: ValuationSpec
    model: nn.Module
    targets: list[tuple[Target, nn.Module]]
    projection: KroneckerProjection

    def fingerprint(self) -> str:
        h = hashlib.sha256()

        def put(label: str, payload: bytes) -> None:
            h.update(label.encode() + b"\0" + len(payload).to_bytes(8, "little") + payload)

        put("tip_hf-fingerprint", b"1")
        put("spec", json.dumps(self.spec.sketch_settings(), sort_keys=True).encode())
        layout = [(t.name, t.kind, t.d_in, t.d_out) for t, _ in self.targets]
        put("targets", json.dumps(layout).encode())
        put("config", _config_json(self.model).encode())
        put("peft", _peft_json(self.model).encode())
        for name, param in self.model.named_parameters():
            tensor = param.detach().to("cpu").contiguous()
            put(f"param:{name}:{tensor.dtype}:{tuple(tensor.shape)}", _tensor_bytes(tensor))
        return h.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def _config_json(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return "null"
    data = config.to_dict()
    # bookkeeping that save_pretrained / from_pretrained rewrite without changing the forward pass
    for volatile in ("_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype", "architectures"):
        data.pop(volatile, None)
    return json.dumps(data, sort_keys=True, default=str)


def _peft_json(model: nn.Module) -> str:
    """peft adapter settings (rank, alpha, dropout, ...) change the forward pass too."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return "null"
    data = {name: cfg.to_dict() for name, cfg in configs.items()}
    for cfg in data.values():
        cfg.pop("base_model_name_or_path", None)
        cfg.pop("revision", None)
    return json.dumps(data, sort_keys=True, default=str)


@dataclass(frozen=True)
class ExampleFormat:
    """Which columns hold what, and how long an example may be.

    Args:
        text_column: the raw text (ignored for tokenised datasets with ``input_ids``).
        label_column: labels (classification: default ``label``/``labels``; causal LM: token
            labels with ``-100``, default: the input ids).
        corpus_column: a column naming each example's corpus; or ``corpus``: one name for all
            (not both).
        max_length: truncate longer examples to this many tokens (>= 1).
        feature_column: dense inputs (tabular features, pixels), passed to the model as the
            keyword of that name; classification only.
    """

    text_column: str = "text"
    label_column: str | None = None
    corpus_column: str | None = None
    corpus: str | None = None
    max_length: int | None = None
    feature_column: str | None = None

    def __post_init__(self) -> None:
        if self.max_length is not None and (type(self.max_length) is not int or self.max_length < 1):
            raise DataError(
                f"max_length must be a positive number of tokens, got {self.max_length!r}.",
                fix="Pass max_length=N with N >= 1 (or leave it unset to keep whole examples).",
                cli_fix="Pass --max-length N with N >= 1 (or leave it out to keep whole examples).",
            )
        if self.corpus is not None and self.corpus_column is not None:
            raise DataError(
                f"Both a corpus name ({self.corpus!r}) and a corpus column (`{self.corpus_column}`) were given.",
                fix="Pass corpus= to name the whole dataset one corpus, or corpus_column= to read names per row.",
                cli_fix="Pass --corpus NAME for one corpus, or --corpus-column COLUMN for a name per row, not both.",
            )
        if self.corpus is not None and not (isinstance(self.corpus, str) and self.corpus.strip()):
            raise DataError(f"The corpus name must be a non-empty string, got {self.corpus!r}.")
