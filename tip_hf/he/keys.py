"""The buyer's CKKS keys, and the public context it sends the seller (no secret key in it)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import tenseal.sealapi as seal

from . import seal as S
from .messages import Message, MessageError, read_message
from .params import CKKSParams, get_preset

__all__ = ["PublicContext", "BuyerKeys"]

PUBLIC_KIND = "tip_hf.public_context"
SECRET_KIND = "tip_hf.secret_key"
SECRET_FILE = "secret.key"
PUBLIC_FILE = "public_context.tip"
QUERIES_FILE = "queries.json"


@dataclass
class PublicContext:
    """Parameters, public key and the one Galois key (complex conjugation) the seller needs.

    ``hash`` (SHA-256 over the three) binds queries and results to this context."""

    params: CKKSParams
    context: seal.SEALContext
    public_key: seal.PublicKey
    galois_keys: seal.GaloisKeys
    blobs: tuple[bytes, bytes, bytes]

    @property
    def hash(self) -> str:
        h = hashlib.sha256()
        for blob in self.blobs:
            h.update(len(blob).to_bytes(8, "little") + blob)
        return h.hexdigest()

    @property
    def conjugation_element(self) -> int:
        return 2 * self.params.poly_modulus_degree - 1

    def to_message(self) -> Message:
        return Message(PUBLIC_KIND, {"params": self.params.to_dict(), "context_hash": self.hash}, list(self.blobs))

    def save(self, path: str | os.PathLike[str]) -> None:
        self.to_message().save(path)

    @classmethod
    def load(cls, source: bytes | str | os.PathLike[str] | Message) -> PublicContext:
        """Load and validate: SEAL checks every key against the parameters; 128-bit enforced."""
        msg = read_message(source, PUBLIC_KIND)
        params = CKKSParams.from_dict(msg.header["params"])  # refuses sub-128-bit parameters
        if len(msg.blobs) != 3:
            raise MessageError(f"A public context has 3 parts (parms, public key, Galois key), got {len(msg.blobs)}.")
        parms_blob, pk_blob, gk_blob = msg.blobs
        if parms_blob != S.parms_bytes(params):
            raise MessageError("The public context's SEAL parameters do not match its declared preset.")
        context = S.make_context(params)
        try:
            public_key = S.load(seal.PublicKey, context, pk_blob)
            galois_keys = S.load(seal.GaloisKeys, context, gk_blob)
        except (RuntimeError, ValueError) as e:
            raise MessageError(f"The public context's keys do not load for these parameters: {e}") from e
        if not (seal.is_valid_for(public_key, context) and seal.is_valid_for(galois_keys, context)):
            raise MessageError("The public context's keys are not valid for its parameters.")
        out = cls(params, context, public_key, galois_keys, (parms_blob, pk_blob, gk_blob))
        if not galois_keys.has_key(out.conjugation_element):
            raise MessageError("The public context lacks the complex-conjugation Galois key the scorer needs.")
        if msg.header.get("context_hash") != out.hash:
            raise MessageError("The public context's declared hash does not match its contents.")
        return out


@dataclass
class BuyerKeys:
    """The buyer's key pair. The secret key never leaves the buyer: :meth:`save` writes it to
    its own file with mode 0600, and :attr:`public` (what the seller gets) does not hold it.

    ``query_exponents`` records, per query id, the power of two the query was divided by
    before encryption, so decryption can restore the true scale (buyer-private)."""

    public: PublicContext
    secret_key: seal.SecretKey
    query_exponents: dict[str, int] = field(default_factory=dict)
    directory: Path | None = None

    @classmethod
    def generate(
        cls,
        preset: str | CKKSParams = "n8192",
        *,
        poly_modulus_degree: int | None = None,
        coeff_mod_bit_sizes: list[int] | tuple[int, ...] | None = None,
        scale_bits: int | None = None,
    ) -> BuyerKeys:
        """New keys for a named preset (``"n8192"`` default, ``"n16384"``), a
        :class:`CKKSParams`, or explicit overrides of the preset's fields. Parameters below
        128-bit security (HE Standard) raise ``ValueError`` saying why."""
        params = get_preset(preset) if isinstance(preset, str) else preset
        if poly_modulus_degree is not None or coeff_mod_bit_sizes is not None or scale_bits is not None:
            bits = tuple(coeff_mod_bit_sizes or params.coeff_mod_bit_sizes)
            params = CKKSParams(
                poly_modulus_degree or params.poly_modulus_degree,
                bits,
                scale_bits or (bits[1] if len(bits) > 1 else params.scale_bits),
                params.flood_bits,
            )
        context = S.make_context(params)
        keygen = seal.KeyGenerator(context)
        secret_key = keygen.secret_key()
        public_key = seal.PublicKey()
        keygen.create_public_key(public_key)
        galois_keys = seal.GaloisKeys()
        keygen.create_galois_keys([2 * params.poly_modulus_degree - 1], galois_keys)
        blobs = (S.parms_bytes(params), S.to_bytes(public_key), S.to_bytes(galois_keys))
        return cls(PublicContext(params, context, public_key, galois_keys, blobs), secret_key)

    @property
    def context_hash(self) -> str:
        return self.public.hash

    @property
    def public_context(self) -> PublicContext:
        """What the seller gets (same as :attr:`public`)."""
        return self.public

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``secret.key`` (0600), ``public_context.tip`` (send this) and ``queries.json``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        secret = Message(
            SECRET_KIND,
            {"params": self.public.params.to_dict(), "context_hash": self.context_hash},
            [S.to_bytes(self.secret_key)],
        )
        _write_private(path / SECRET_FILE, secret.to_bytes())
        self.public.save(path / PUBLIC_FILE)
        self.directory = path
        self._save_queries()
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BuyerKeys:
        path = Path(directory)
        if not (path / SECRET_FILE).is_file():
            raise FileNotFoundError(
                f"No buyer keys in '{path}' ({SECRET_FILE} missing). Run BuyerKeys.generate().save()."
            )
        mode = (path / SECRET_FILE).stat().st_mode & 0o077
        if mode:
            raise PermissionError(f"'{path / SECRET_FILE}' is readable by others (mode {oct(mode)}); chmod 600 it.")
        public = PublicContext.load(path / PUBLIC_FILE)
        secret = read_message(path / SECRET_FILE, SECRET_KIND)
        if secret.header.get("context_hash") != public.hash:
            raise MessageError(f"The secret key in '{path}' belongs to another public context.")
        secret_key = S.load(seal.SecretKey, public.context, secret.blobs[0])
        queries_path = path / QUERIES_FILE
        exponents = json.loads(queries_path.read_text()) if queries_path.is_file() else {}
        return cls(public, secret_key, exponents, path)

    def remember_query(self, query_id: str, exponent: int) -> None:
        self.query_exponents[query_id] = exponent
        self._save_queries()

    def _save_queries(self) -> None:
        if self.directory is not None:
            _write_private(self.directory / QUERIES_FILE, json.dumps(self.query_exponents, indent=1).encode())


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
