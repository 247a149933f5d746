"""Buyer side: encrypt the query vector ``q`` under the buyer's own secret key."""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal
import torch

from ..recipe import Recipe
from ..spec import ValuationSpec
from . import seal as S
from .binding import SEED_BYTES, secret_rows
from .keys import BuyerKeys
from .messages import Message
from .params import COLUMNS, PACKED, QUERY_LAYOUTS

__all__ = ["QUERY_KIND", "EncryptedQuery", "encrypt_query", "spec_binding"]

QUERY_KIND = "tip_hf.query"


@dataclass
class EncryptedQuery:
    """``Enc(q)`` ready to send: :meth:`to_bytes` / :meth:`save`. Holds no secret."""

    message: Message

    @property
    def query_id(self) -> str:
        return self.message.header["query_id"]

    def to_bytes(self) -> bytes:
        return self.message.to_bytes()

    def save(self, path: str | os.PathLike[str]) -> None:
        self.message.save(path)


def spec_binding(spec: ValuationSpec | None, fingerprint: str | None) -> dict[str, object]:
    """The header fields that bind a query to the spec/model it was made for."""
    settings = None if spec is None else hashlib.sha256(json.dumps(spec.sketch_settings(), sort_keys=True).encode())
    return {"fingerprint": fingerprint, "spec_settings": None if settings is None else settings.hexdigest()}


def encrypt_query(
    q: np.ndarray | torch.Tensor,
    keys: BuyerKeys,
    spec: ValuationSpec | None = None,
    *,
    fingerprint: str | None = None,
    model: torch.nn.Module | None = None,
    recipe: Recipe | None = None,
    layout: str = PACKED,
) -> EncryptedQuery:
    """Encrypt the buyer's query vector ``q`` (``[k]``, real) under its own secret key.

    The query is divided by a power of two ``2^e >= |q|`` so every value fits the CKKS range;
    ``e`` stays with the buyer (``keys.query_exponents``) and decryption undoes it. One more
    ciphertext follows the ``ceil(k/2)`` of the vector: the header check, secret values
    derived from a fresh seed that also stays with the buyer (``keys.query_checks``), which
    binds the seller's result header to its ciphertexts (:mod:`tip_hf.he.binding`). The
    message is bound to the public context (hash) and to the spec -- to the full
    spec/model ``fingerprint`` when given (or computed from ``model``), else to the spec's
    sketch settings -- and the seller refuses to score a store that does not match.

    ``recipe``: how the buyer will fine-tune (:class:`~tip_hf.recipe.Recipe`); the values then
    predict the eval-loss drop under it. Default: the ``local`` recipe (first-order influence).
    Give it a ``trust_radius`` (:meth:`Recipe.with_trust_radius`, from the bundle's eval loss
    and eval gradient norm) unless every fine-tune is short.

    ``layout``: ``"packed/1"`` (default, :data:`~tip_hf.he.params.PACKED`): the k/2 complex
    pairs fill the slots of ``ceil(k / N)`` ciphertexts, ~0.4 MB in all at k <= 8192 (the
    seller rotates; the keys must have rotation keys, as ``BuyerKeys.generate`` makes them).
    ``"complex-pairs/3"`` (:data:`~tip_hf.he.params.COLUMNS`): one ciphertext per pair, ~90 KB
    each, which the seller multiplies without rotating -- the faster layout for a per-example
    release over many thousands of candidates.
    """
    recipe = recipe or Recipe.local()
    q = np.asarray(q.detach().cpu().numpy() if isinstance(q, torch.Tensor) else q)
    if np.iscomplexobj(q):
        raise ValueError("The query must be real; got a complex vector.")
    q = q.astype(np.float64).reshape(-1)
    if q.size == 0 or not np.all(np.isfinite(q)):
        raise ValueError("The query must be a non-empty vector of finite numbers.")
    if spec is not None and q.size != spec.proj_dim:
        raise ValueError(f"The query has {q.size} entries but the spec's proj_dim is {spec.proj_dim}.")
    if model is not None and fingerprint is None:
        if spec is None:
            raise ValueError("Pass `spec` with `model` to bind the query to the spec fingerprint.")
        fingerprint = spec.fingerprint(model)
    if layout not in QUERY_LAYOUTS:
        raise ValueError(f"Unknown query layout {layout!r}; use one of {list(QUERY_LAYOUTS)}.")
    if layout == PACKED and not keys.public.can_rotate:
        raise ValueError(
            "These buyer keys have no rotation keys (made by an older tip_hf), which a packed query needs. Make new "
            "keys (tip keygen / BuyerKeys.generate()), or pass layout='complex-pairs/3' (tip query --layout columns)."
        )
    norm = float(np.linalg.norm(q))
    exponent = math.ceil(math.log2(norm)) if norm > 0 else 0
    scaled = q / 2.0**exponent
    if scaled.size % 2:
        scaled = np.append(scaled, 0.0)
    params, context = keys.public.params, keys.public.context
    encoder = seal.CKKSEncoder(context)
    encryptor = seal.Encryptor(context, keys.secret_key)  # symmetric: seeded, half the bytes
    pairs = scaled[0::2] - 1j * scaled[1::2]
    if layout == COLUMNS:  # pair t broadcast in every slot of ciphertext t
        chunks: list[complex | list[complex]] = [complex(pair) for pair in pairs]
    else:  # pairs [c n, (c + 1) n) in the n slots of ciphertext c, zero past the last
        n = params.slots
        padded = np.pad(pairs, (0, -pairs.size % n))
        chunks = [padded[lo : lo + n].tolist() for lo in range(0, padded.size, n)]
    blobs = []
    for chunk in chunks:
        plain = seal.Plaintext()
        encoder.encode(chunk, 2.0**params.query_scale_bits, plain)
        blobs.append(S.to_bytes(encryptor.encrypt_symmetric(plain)))
    seed = secrets.token_bytes(SEED_BYTES)
    secret = secret_rows(seed)  # slot i: R_i[0] - i R_i[1], the vector's complex-pairs form
    plain = seal.Plaintext()
    encoder.encode((secret[:, 0] - 1j * secret[:, 1]).tolist(), 2.0**params.query_scale_bits, plain)
    blobs.append(S.to_bytes(encryptor.encrypt_symmetric(plain)))
    query_id = secrets.token_hex(16)
    header = {
        "query_id": query_id,
        "context_hash": keys.context_hash,
        "proj_dim": int(q.size),
        "layout": layout,
        "recipe": recipe.to_dict(),
        **spec_binding(spec, fingerprint),
    }
    keys.remember_query(query_id, exponent, seed.hex())
    return EncryptedQuery(Message(QUERY_KIND, header, blobs))
