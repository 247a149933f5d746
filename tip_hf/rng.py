"""Counter-based randomness keyed by names, identical on every device, rank and run.

Every random quantity of the projection is derived from a *stream name* such as
``"tip_hf/seed=0/module=transformer.h.0.mlp.c_fc/role=in/block=0"``: the name is hashed
(BLAKE2b) into a 128-bit key for the Philox4x64-10 counter-based generator, and the raw
64-bit words of that generator are turned into signs or permutation keys with integer
operations only. No floating-point transcendental function and no device-specific RNG
(``torch.Generator(device)``, cuRAND, ...) is involved, so the result is bit-identical on
CPU, on any GPU model, on every rank and at every batch size. Random matrices are generated
on the CPU and moved to the compute device.

This is the anti-pattern list of STYLE.md made concrete: seeds from names, never
``seed + 1000 * i``.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["stream_name", "stream_key", "raw_words", "rademacher", "permutation"]

_NAMESPACE = "tip_hf"


def stream_name(seed: int, **parts: object) -> str:
    """The canonical name of a random stream: ``tip_hf/seed=S/k1=v1/k2=v2`` (keys in call order)."""
    fields = [f"seed={int(seed)}"] + [f"{key}={value}" for key, value in parts.items()]
    return "/".join([_NAMESPACE, *fields])


def stream_key(name: str) -> int:
    """128-bit Philox key for a stream name (BLAKE2b, little-endian)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=16).digest()
    return int.from_bytes(digest, "little")


def raw_words(name: str, count: int) -> np.ndarray:
    """The first ``count`` raw 64-bit words of the Philox4x64-10 stream for ``name``.

    The raw word stream of a NumPy ``BitGenerator`` is fixed by the algorithm (unlike the
    distribution methods of ``numpy.random.Generator``), so it is stable across NumPy
    versions and platforms; golden values in the tests pin it.
    """
    if count < 0:
        raise ValueError(f"`count` must be >= 0, got {count}")
    words = np.random.Philox(key=stream_key(name)).random_raw(count)
    return np.asarray(words, dtype=np.uint64)


def rademacher(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A +-1 ``float32`` array of ``shape``: one bit of the stream per entry (LSB first)."""
    n = int(np.prod(shape, dtype=np.int64))
    words = raw_words(name, (n + 63) // 64)
    bits = np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little")[:n]
    return (1.0 - 2.0 * bits.astype(np.float32)).reshape(shape)


def permutation(name: str, n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` (``int64``): stable argsort of raw words."""
    return np.argsort(raw_words(name, n), kind="stable").astype(np.int64)
