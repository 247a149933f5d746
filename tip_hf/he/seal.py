"""Thin helpers over `tenseal.sealapi` (SEAL 4.1): contexts and (de)serialisation.

sealapi objects save to and load from file paths only, so bytes go through a private
temporary file. Every object loaded from the other party is checked with SEAL's
``is_valid_for`` against our own context before use.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import tenseal.sealapi as seal

from .params import CKKSParams

__all__ = ["make_context", "to_bytes", "load", "parms_bytes"]


def make_parms(params: CKKSParams) -> seal.EncryptionParameters:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)))
    return parms


def make_context(params: CKKSParams) -> seal.SEALContext:
    """A SEAL context that itself enforces 128-bit security (``sec_level_type.tc128``)."""
    context = seal.SEALContext(make_parms(params), True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise ValueError(f"SEAL rejects the CKKS parameters: {context.parameters_error_message()}")
    return context


def to_bytes(obj: Any) -> bytes:
    """Serialise any sealapi object (or ``Serializable``) with SEAL's own format."""
    fd, path = tempfile.mkstemp(prefix="tip_hf-seal-")
    os.close(fd)
    try:
        obj.save(path)
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(path)


def load(cls: type, context: seal.SEALContext | None, data: bytes) -> Any:
    """Load a sealapi object of type ``cls`` from bytes (``context`` for context-bound types)."""
    fd, path = tempfile.mkstemp(prefix="tip_hf-seal-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        obj = cls() if cls is not seal.EncryptionParameters else cls(seal.SCHEME_TYPE.CKKS)
        if context is None:
            obj.load(path)
        else:
            obj.load(context, path)
        return obj
    finally:
        os.unlink(path)


def parms_bytes(params: CKKSParams) -> bytes:
    return to_bytes(make_parms(params))
