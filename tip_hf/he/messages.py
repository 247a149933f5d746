"""Self-describing, versioned, checksummed messages exchanged by buyer and seller.

Wire format (all integers little-endian)::

    b"TIPHF\\0" | u16 version | u8 len + kind | u32 len + header JSON | u32 count
    | count x (u64 len + blob) | SHA-256 of everything before

The checksum catches truncation and accidental or third-party modification; it is not a
signature (either party can recompute it). Every parse error is a one-line
:class:`MessageError` that names what is wrong, whatever the bytes: the header must be a
JSON object (UTF-8, bounded nesting) and the kind UTF-8. Code that reads header fields
should use :meth:`Message.field` (or :func:`header_field`), which turns a missing or
mistyped field into a :class:`MessageError` too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import Any

from ..errors import MessageError
from ..json_depth import MAX_JSON_DEPTH, too_deep

__all__ = ["MessageError", "Message", "header_field", "read_message"]

MAGIC = b"TIPHF\0"
VERSION = 1
MAX_HEADER_DEPTH = MAX_JSON_DEPTH
_TOO_DEEP = object()


@dataclass
class Message:
    kind: str
    header: dict[str, Any]
    blobs: list[bytes] = _field(default_factory=list)

    def field(self, name: str, kind: type | tuple[type, ...]) -> Any:
        """``header[name]``, checked to be of type ``kind``; else a one-line :class:`MessageError`.

        See :func:`header_field`, e.g. ``msg.field("proj_dim", int)`` or
        ``msg.field("fingerprint", (str, type(None)))`` (a missing field then reads ``None``)."""
        return header_field(self.header, name, kind, f"{self.kind[:80]!r} message")

    def to_bytes(self) -> bytes:
        kind = self.kind.encode()
        header = json.dumps(self.header, sort_keys=True).encode()
        if len(kind) > 0xFF or len(header) > 0xFFFFFFFF or len(self.blobs) > 0xFFFFFFFF:
            raise ValueError(f"A message kind is at most 255 bytes and a header at most 4 GiB (kind {self.kind!r}).")
        parts = [
            MAGIC,
            struct.pack("<HB", VERSION, len(kind)),
            kind,
            struct.pack("<I", len(header)),
            header,
            struct.pack("<I", len(self.blobs)),
        ]
        for blob in self.blobs:
            parts += [struct.pack("<Q", len(blob)), blob]
        body = b"".join(parts)
        return body + hashlib.sha256(body).digest()

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, kind: str | None = None) -> Message:
        """Parse and check a message; anything malformed raises a one-line :class:`MessageError`."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"Message.from_bytes expects bytes, got {type(data).__name__}.")
        data = bytes(data)
        where = f"{kind or 'tip_hf'} message"
        if len(data) < len(MAGIC) + 32 or not data.startswith(MAGIC):
            raise MessageError(f"This is not a {where} (bad magic bytes or empty file).")
        body, digest = data[:-32], data[-32:]
        reader = _Reader(body, where)
        reader.take(len(MAGIC))
        version, kind_len = struct.unpack("<HB", reader.take(3))
        if version != VERSION:
            raise MessageError(f"The {where} has format version {version}; this tip_hf reads version {VERSION}.")
        kind_bytes = reader.take(kind_len)
        header_bytes = reader.take(reader.u32())
        count = reader.u32()
        if count > reader.remaining // 8:  # every part takes at least its 8-byte length
            raise MessageError(
                f"The {where} declares {count} parts but only {reader.remaining} bytes follow: it is truncated "
                "or corrupted."
            )
        blobs = [reader.take(reader.u64()) for _ in range(count)]
        if reader.remaining:
            raise MessageError(f"The {where} has {reader.remaining} unexpected trailing bytes: it was modified.")
        if hashlib.sha256(body).digest() != digest:
            raise MessageError(f"The {where} fails its checksum: it was corrupted or tampered with in transit.")
        try:
            found = kind_bytes.decode()
        except UnicodeDecodeError:
            raise MessageError(f"The {where} names its kind in bytes that are not UTF-8: it is corrupted.") from None
        if kind is not None and found != kind:
            raise MessageError(
                f"Expected a '{kind}' message, got a {found[:80]!r} message. Check which file you passed."
            )
        return cls(found, _parse_header(header_bytes, where), blobs)


def header_field(header: object, name: str, kind: type | tuple[type, ...], where: str = "tip_hf message") -> Any:
    """``header[name]`` if it has type ``kind`` (a type or a tuple of types), else a one-line
    :class:`MessageError` naming the message (``where``) and the field.

    ``bool`` is not an ``int`` here unless ``bool`` is asked for; ``float`` accepts ``int`` and
    refuses NaN and infinities; a ``kind`` that includes ``type(None)`` makes the field
    optional (a missing field reads ``None``). Only the top level is checked: the items of a
    list or dict are the caller's to check."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
    if not isinstance(header, dict):
        raise MessageError(f"The {where}'s header is not a JSON object.")
    if name not in header:
        if type(None) in kinds:
            return None
        raise MessageError(f"The {where}'s header lacks the `{name}` field ({names}).")
    value = header[name]
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok and float in kinds and type(value) is int and abs(value) < 2**1023:
        value, ok = float(value), True  # JSON does not tell 1 from 1.0
    if isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        found = "null" if value is None else type(value).__name__
        raise MessageError(f"The {where}'s header has a malformed `{name}` field: expected {names}, got {found}.")
    return value


def _parse_header(data: bytes, where: str) -> dict[str, Any]:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise MessageError(f"The {where} header is not UTF-8 text: it is corrupted.") from None
    try:
        header: object = json.loads(text)
    except RecursionError:
        header = _TOO_DEEP
    except ValueError as e:  # JSONDecodeError, or an integer literal of more than 4300 digits
        raise MessageError(f"The {where} header is not valid JSON ({str(e).splitlines()[0][:120]}).") from None
    if header is _TOO_DEEP or too_deep(header):
        raise MessageError(f"The {where} header nests deeper than {MAX_HEADER_DEPTH} levels: it is malformed.")
    if not isinstance(header, dict):
        raise MessageError(f"The {where} header is a JSON {type(header).__name__}, not an object: it is malformed.")
    return header


def read_message(source: bytes | str | os.PathLike[str] | Message, kind: str) -> Message:
    """A message from bytes, a file path or an already parsed :class:`Message`."""
    if isinstance(source, Message):
        if source.kind != kind:
            raise MessageError(f"Expected a '{kind}' message, got a '{source.kind}' message.")
        return source
    if isinstance(source, bytes | bytearray | memoryview):
        return Message.from_bytes(bytes(source), kind)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: '{path}' (expected a '{kind}' message).")
    return Message.from_bytes(path.read_bytes(), kind)


class _Reader:
    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.pos, self.where = data, 0, where

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n > self.remaining:
            raise MessageError(f"The {self.where} is truncated: it ends {n - self.remaining} bytes early.")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")
