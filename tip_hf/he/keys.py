"""The buyer's CKKS keys, and the public context it sends the seller (no secret key in it)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import tenseal.sealapi as seal

from ..errors import KeyFileError
from . import seal as S
from .binding import SEED_BYTES
from .messages import Message, MessageError, read_message
from .params import CKKSParams, ParamsError, get_preset

__all__ = ["PublicContext", "BuyerKeys", "KeyFileError", "rotation_elements"]

PUBLIC_KIND = "tip_hf.public_context"
SECRET_KIND = "tip_hf.secret_key"
SECRET_FILE = "secret.key"
PUBLIC_FILE = "public_context.tip"
QUERIES_FILE = "queries.json"


@dataclass
class PublicContext:
    """Parameters, public key and the Galois keys the seller needs: complex conjugation, and
    (keys made by this release) one rotation per power of two below N/2, for packed queries.

    ``hash`` (SHA-256 over the three) binds queries and results to this context. It names
    the *key*, not the buyer: a buyer can mint any number of contexts, so nothing the seller
    counts (query budgets, DP versions) is keyed by it (:class:`tip_hf.he.SellerLedger`)."""

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

    @property
    def can_rotate(self) -> bool:
        """Whether these keys rotate by every power of two below N/2 (a packed query needs it;
        keys made before tip_hf's packed layout do not)."""
        return all(self.galois_keys.has_key(element) for element in rotation_elements(self.params))

    def to_message(self) -> Message:
        return Message(PUBLIC_KIND, {"params": self.params.to_dict(), "context_hash": self.hash}, list(self.blobs))

    def save(self, path: str | os.PathLike[str]) -> None:
        self.to_message().save(path)

    @classmethod
    def load(cls, source: bytes | str | os.PathLike[str] | Message) -> PublicContext:
        """Load and validate: SEAL checks every key against the parameters; 128-bit enforced.
        Anything malformed raises a one-line :class:`MessageError`."""
        msg = read_message(source, PUBLIC_KIND)
        try:
            params = CKKSParams.from_dict(msg.header.get("params"))  # refuses sub-128-bit parameters
        except ParamsError as e:
            raise MessageError(f"The public context's parameters are refused: {e}") from None
        if len(msg.blobs) != 3:
            raise MessageError(f"A public context has 3 parts (parms, public key, Galois key), got {len(msg.blobs)}.")
        parms_blob, pk_blob, gk_blob = msg.blobs
        if parms_blob != S.parms_bytes(params):
            raise MessageError("The public context's SEAL parameters do not match its declared parameters.")
        context = S.make_context(params)
        try:
            public_key = S.load(seal.PublicKey, context, pk_blob)
            galois_keys = S.load(seal.GaloisKeys, context, gk_blob)
        except S.SealLoadError as e:
            raise MessageError(f"The public context's keys do not load for these parameters: {e}") from None
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
    its own new file (mode 0600, never over an existing one, never through a symlink, never
    via a temporary file), and :attr:`public` (what the seller gets) does not hold it.

    ``query_exponents`` records, per query id, the power of two the query was divided by
    before encryption, so decryption can restore the true scale; ``query_checks`` the hex
    seed of the query's secret header-check values (:mod:`tip_hf.he.binding`). Both are
    buyer-private, kept in ``queries.json`` (0600). A query recorded by a tip_hf before the
    header check has an exponent and no check: :func:`tip_hf.he.decrypt_scores` refuses its
    results (they cannot be told from edited ones) and asks for a new query."""

    public: PublicContext
    secret_key: seal.SecretKey
    query_exponents: dict[str, int] = field(default_factory=dict)
    directory: Path | None = None
    query_checks: dict[str, str] = field(default_factory=dict)

    @classmethod
    def generate(cls, preset: str | CKKSParams = "n8192") -> BuyerKeys:
        """New keys for a named preset (``"n8192"`` default, ``"n16384"``) or a
        :class:`CKKSParams`; parameters below 128-bit security raise ``ParamsError`` saying why."""
        params = get_preset(preset) if isinstance(preset, str) else preset
        context = S.make_context(params)
        keygen = seal.KeyGenerator(context)
        secret_key = keygen.secret_key()
        public_key = seal.PublicKey()
        keygen.create_public_key(public_key)
        elements = [2 * params.poly_modulus_degree - 1, *rotation_elements(params)]
        galois_blob = S.to_bytes(keygen.create_galois_keys(elements))  # seeded: half the bytes
        galois_keys = S.load(seal.GaloisKeys, context, galois_blob)
        blobs = (S.parms_bytes(params), S.to_bytes(public_key), galois_blob)
        return cls(PublicContext(params, context, public_key, galois_keys, blobs), secret_key)

    @property
    def context_hash(self) -> str:
        return self.public.hash

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``secret.key`` (0600), ``public_context.tip`` (send this) and ``queries.json``.

        Refuses a directory that already holds keys: replacing ``secret.key`` would make every
        earlier query undecryptable. ``overwrite=True`` replaces them on purpose."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        target = path / SECRET_FILE
        if (target.exists() or target.is_symlink()) and not overwrite:
            raise FileExistsError(
                f"'{path}' already holds buyer keys ({SECRET_FILE}); replacing them would make earlier "
                "queries undecryptable. Choose a new directory, or pass overwrite=True."
            )
        secret = Message(
            SECRET_KIND,
            {"params": self.public.params.to_dict(), "context_hash": self.context_hash},
            [S.to_bytes(self.secret_key)],
        )
        if overwrite:
            target.unlink(missing_ok=True)
        _write_private(target, secret.to_bytes(), exclusive=True)
        self.public.save(path / PUBLIC_FILE)
        self.directory = path
        self._save_queries()
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BuyerKeys:
        path = Path(directory)
        target = path / SECRET_FILE
        if target.is_symlink():
            raise KeyFileError(f"'{target}' is a symbolic link; buyer keys are read only from a regular file.")
        if not target.is_file():
            raise FileNotFoundError(f"No buyer keys in '{path}' ({SECRET_FILE} missing). Run `tip keygen` first.")
        mode = target.stat().st_mode & 0o077
        if mode:
            raise PermissionError(f"'{target}' is readable by others (mode {oct(mode)}); chmod 600 it.")
        public = PublicContext.load(path / PUBLIC_FILE)
        secret = read_message(target, SECRET_KIND)
        if secret.header.get("context_hash") != public.hash or len(secret.blobs) != 1:
            raise MessageError(f"The secret key in '{path}' belongs to another public context.")
        try:
            secret_key = S.load(seal.SecretKey, public.context, secret.blobs[0])
        except S.SealLoadError as e:
            raise MessageError(f"The secret key in '{path}' does not load: {e}") from None
        queries = path / QUERIES_FILE
        if queries.is_symlink():
            raise KeyFileError(f"'{queries}' is a symbolic link; buyer keys are read only from regular files.")
        if queries.is_file() and queries.stat().st_mode & 0o077:  # it holds the header-check seeds
            raise PermissionError(
                f"'{queries}' is readable by others (mode {oct(queries.stat().st_mode & 0o077)}): it holds the "
                "secret seeds that bind scores headers; chmod 600 it."
            )
        exponents, checks = _read_queries(queries)
        return cls(public, secret_key, exponents, path, checks)

    def remember_query(self, query_id: str, exponent: int, check: str | None = None) -> None:
        """Record a query's scale exponent and the hex seed of its header check (private)."""
        self.query_exponents[query_id] = exponent
        if check is None:
            self.query_checks.pop(query_id, None)
        else:
            self.query_checks[query_id] = check
        self._save_queries()

    def _save_queries(self) -> None:
        if self.directory is not None:
            records: dict[str, object] = {}
            for query_id, exponent in self.query_exponents.items():
                check = self.query_checks.get(query_id)
                records[query_id] = exponent if check is None else {"exponent": exponent, "check": check}
            _write_private(self.directory / QUERIES_FILE, json.dumps(records, indent=1).encode())


def rotation_elements(params: CKKSParams) -> list[int]:
    """Galois elements of the left rotations by 1, 2, 4, ..., N/4 slots (``3^step mod 2N``)."""
    n = params.poly_modulus_degree
    return [pow(3, 1 << i, 2 * n) for i in range((n // 2).bit_length() - 1)]


def _read_queries(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """``queries.json``: query id -> ``{"exponent": int, "check": hex seed}``, or -> a bare
    exponent (written before the header check: such a query has no check)."""
    records: object = {}
    if path.is_file():
        try:
            records = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            records = None
    damaged = KeyFileError(
        f'\'{path}\' is damaged (expected a JSON object of query id -> {{"exponent": int, "check": hex}}).'
    )
    if not isinstance(records, dict):
        raise damaged
    exponents, checks = {}, {}
    for query_id, record in records.items():
        if type(record) is int:  # an older tip_hf's record: no header check
            exponents[query_id] = record
            continue
        if not isinstance(record, dict) or type(record.get("exponent")) is not int:
            raise damaged
        check = record.get("check")
        if not isinstance(check, str) or len(check) != 2 * SEED_BYTES or not _is_hex(check):
            raise damaged
        exponents[query_id], checks[query_id] = record["exponent"], check
    return exponents, checks


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write a 0600 file: created with ``O_EXCL | O_NOFOLLOW`` so a planted file or symlink is
    refused, never read back or followed. ``exclusive``: the file itself is created in place
    (the secret key); otherwise a fresh private sibling is renamed over it atomically."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    target = path if exclusive else path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"'{target}' appeared while writing it (a planted file or symlink?); refusing.") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if not exclusive:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
