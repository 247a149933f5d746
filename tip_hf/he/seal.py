"""Thin helpers over `tenseal.sealapi` (SEAL 4.1): contexts and (de)serialisation.

sealapi objects save to and load from paths only. We give them an anonymous in-memory file
(``memfd_create``): no secret key or ciphertext ever touches a file system, not even a
temporary one. Every object loaded from the other party is checked with SEAL's
``is_valid_for`` by its caller, and any SEAL error while loading becomes a ``SealLoadError``.
"""

from __future__ import annotations

import os
from typing import Any

import tenseal.sealapi as seal

from ..errors import SealLoadError
from .params import CKKSParams

__all__ = ["SealLoadError", "make_context", "to_bytes", "load", "parms_bytes"]

_MAX_BYTES = 1 << 31


def make_parms(params: CKKSParams) -> seal.EncryptionParameters:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)))
    return parms


def make_context(params: CKKSParams) -> seal.SEALContext:
    """A SEAL context that itself enforces 128-bit security (``sec_level_type.tc128``)."""
    context = seal.SEALContext(make_parms(params), True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise SealLoadError(f"SEAL rejects the CKKS parameters: {context.parameters_error_message()}")
    return context


def _memfd() -> int:
    return os.memfd_create("tip_hf-seal", os.MFD_CLOEXEC)


def to_bytes(obj: Any) -> bytes:
    """Serialise any sealapi object (or ``Serializable``) with SEAL's own format, in memory."""
    fd = _memfd()
    try:
        obj.save(f"/proc/self/fd/{fd}")
        size = os.fstat(fd).st_size
        os.lseek(fd, 0, os.SEEK_SET)
        return _read_all(fd, size)
    finally:
        os.close(fd)


def load(cls: type, context: seal.SEALContext | None, data: bytes) -> Any:
    """Load a sealapi object of type ``cls`` from bytes (``context`` for context-bound types)."""
    if not isinstance(data, bytes | bytearray) or not 0 < len(data) < _MAX_BYTES:
        raise SealLoadError(f"Expected a non-empty serialised {cls.__name__}, got {len(data or b'')} bytes.")
    fd = _memfd()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        obj = cls() if cls is not seal.EncryptionParameters else cls(seal.SCHEME_TYPE.CKKS)
        path = f"/proc/self/fd/{fd}"
        try:
            if context is None:
                obj.load(path)
            else:
                obj.load(context, path)
        except (RuntimeError, ValueError, TypeError, MemoryError, OverflowError) as e:
            raise SealLoadError(f"The bytes are not a valid {cls.__name__} for these parameters ({e}).") from None
        return obj
    finally:
        os.close(fd)


def _read_all(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def parms_bytes(params: CKKSParams) -> bytes:
    return to_bytes(make_parms(params))
