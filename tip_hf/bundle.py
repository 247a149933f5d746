"""The buyer bundle: everything the buyer keeps after training (never sent as is).

spec.json               the ValuationSpec and the spec/model fingerprint
curvature.safetensors   F = (1/n) sum s_i s_i^T (float64), n
query.safetensors       q, and the mean eval sketch g it was solved from (float64)
summary.json            the numbers a user wants to see (n, eigenvalue range, lambda, ...)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import SpecMismatchError
from .spec import ValuationSpec

__all__ = ["Bundle", "write_bundle", "load_bundle"]


@dataclass
class Bundle:
    spec: ValuationSpec
    fingerprint: str
    curvature: torch.Tensor | None
    query: torch.Tensor
    eval_gradient: torch.Tensor
    summary: dict[str, Any]


def write_bundle(path: str | os.PathLike[str], bundle: Bundle) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(
        json.dumps({"spec": bundle.spec.to_dict(), "fingerprint": bundle.fingerprint}, indent=2, sort_keys=True) + "\n"
    )
    if bundle.curvature is not None:
        save_file(
            {"curvature": bundle.curvature.contiguous()},
            str(out / "curvature.safetensors"),
            metadata={"fingerprint": bundle.fingerprint, "n": str(bundle.summary.get("n_examples", 0))},
        )
    save_file(
        {"query": bundle.query.contiguous(), "eval_gradient": bundle.eval_gradient.contiguous()},
        str(out / "query.safetensors"),
        metadata={"fingerprint": bundle.fingerprint},
    )
    (out / "summary.json").write_text(json.dumps(bundle.summary, indent=2, sort_keys=True) + "\n")
    return out


def load_bundle(path: str | os.PathLike[str], *, fingerprint: str | None = None) -> Bundle:
    """Load a bundle; with ``fingerprint``, refuse one made for another spec/model."""
    root = Path(path)
    if not (root / "spec.json").is_file():
        raise FileNotFoundError(f"No buyer bundle at '{root}' (spec.json missing).")
    head = json.loads((root / "spec.json").read_text())
    if fingerprint is not None and head["fingerprint"] != fingerprint:
        raise SpecMismatchError(
            f"The fingerprint of bundle '{root}'",
            fingerprint,
            head["fingerprint"],
            "The bundle was made for another model or spec.",
        )
    tensors = load_file(str(root / "query.safetensors"))
    curvature = None
    if (root / "curvature.safetensors").is_file():
        curvature = load_file(str(root / "curvature.safetensors"))["curvature"]
    return Bundle(
        ValuationSpec.from_dict(head["spec"]),
        head["fingerprint"],
        curvature,
        tensors["query"],
        tensors["eval_gradient"],
        json.loads((root / "summary.json").read_text()),
    )
