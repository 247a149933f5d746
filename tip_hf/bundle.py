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
from safetensors import safe_open
from safetensors.torch import save_file

from ._version import __version__
from .errors import BundleError, SpecMismatchError
from .spec import ValuationSpec

__all__ = ["BUNDLE_FORMAT", "Bundle", "BundleError", "write_bundle", "load_bundle"]

BUNDLE_FORMAT = "tip_hf.bundle/1"


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
        json.dumps(
            {
                "format": BUNDLE_FORMAT,
                "tip_hf_version": __version__,
                "spec": bundle.spec.to_dict(),
                "fingerprint": bundle.fingerprint,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
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


def _damaged(file: Path, problem: str) -> BundleError:
    return BundleError(
        f"The bundle file '{file}' {problem}.",
        fix="Copy the bundle again from the buyer's TIPCallback output_dir (or train again to rewrite it).",
    )


def _tensors(file: Path, names: tuple[str, ...], fingerprint: str) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            missing = [n for n in names if n not in handle.keys()]
            if missing:
                raise _damaged(file, f"lacks {missing}")
            tensors = {n: handle.get_tensor(n) for n in names}
    except BundleError:
        raise
    except FileNotFoundError:
        raise _damaged(file, "is missing") from None
    except Exception as e:  # SafetensorError, OSError on a truncated or foreign file
        raise _damaged(file, f"is not a valid safetensors file ({str(e).splitlines()[0][:120]})") from None
    if metadata.get("fingerprint") not in (None, fingerprint):
        raise _damaged(file, "was made for another spec/model than the bundle's spec.json")
    return tensors


def load_bundle(path: str | os.PathLike[str], *, fingerprint: str | None = None) -> Bundle:
    """Load a bundle; with ``fingerprint``, refuse one made for another spec/model.

    Raises:
        BundleError: a file is missing, truncated, not what it should be, or its tensors do
            not fit the spec (wrong length, another fingerprint).
        SpecMismatchError: the bundle was made for another spec/model than ``fingerprint``.
    """
    root = Path(path)
    spec_file = root / "spec.json"
    if not spec_file.is_file():
        raise BundleError(
            f"No buyer bundle at '{root}' (spec.json missing).",
            fix="Pass the folder TIPCallback(output_dir=...) wrote after training.",
        )
    try:
        head = json.loads(spec_file.read_bytes().decode("utf-8"))
        if not isinstance(head, dict):
            raise TypeError(f"a JSON {type(head).__name__}, not an object")
        found = head.get("format", BUNDLE_FORMAT)  # release 0.1 wrote no format tag: the same layout
        if found != BUNDLE_FORMAT:
            raise BundleError(
                f"The bundle at '{root}' has format {str(found)[:40]!r} (written by tip_hf "
                f"{str(head.get('tip_hf_version'))[:20]}); this tip_hf {__version__} reads {BUNDLE_FORMAT!r}.",
                fix="Install the tip_hf release that wrote it, or train again to write a new bundle.",
            )
        spec = ValuationSpec.from_dict(head["spec"])
        bundle_fingerprint = head["fingerprint"]
        if not isinstance(bundle_fingerprint, str):
            raise TypeError("fingerprint is not a string")
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise _damaged(spec_file, f"is not a bundle spec ({type(e).__name__}: {str(e)[:120]})") from None
    if fingerprint is not None and bundle_fingerprint != fingerprint:
        raise SpecMismatchError(
            f"The fingerprint of bundle '{root}'",
            fingerprint,
            bundle_fingerprint,
            "The bundle was made for another model or spec.",
        )
    tensors = _tensors(root / "query.safetensors", ("query", "eval_gradient"), bundle_fingerprint)
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != (spec.proj_dim,) or not bool(torch.isfinite(tensor).all()):
            raise _damaged(root / "query.safetensors", f"holds a `{name}` that is not {spec.proj_dim} finite numbers")
    curvature = None
    if (root / "curvature.safetensors").is_file():
        curvature = _tensors(root / "curvature.safetensors", ("curvature",), bundle_fingerprint)["curvature"]
        if tuple(curvature.shape) != (spec.proj_dim, spec.proj_dim):
            raise _damaged(root / "curvature.safetensors", f"is not {spec.proj_dim} x {spec.proj_dim}")
    summary: dict[str, Any] = {}
    if (root / "summary.json").is_file():
        try:
            loaded = json.loads((root / "summary.json").read_bytes().decode("utf-8"))
            summary = loaded if isinstance(loaded, dict) else {}
        except (ValueError, RecursionError):
            raise _damaged(root / "summary.json", "is not valid JSON") from None
    return Bundle(spec, bundle_fingerprint, curvature, tensors["query"], tensors["eval_gradient"], summary)
