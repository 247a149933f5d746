"""Self-describing, versioned, checksummed messages exchanged by buyer and seller.

Wire format (all integers little-endian)::

    b"TIPHF\\0" | u16 version | u8 len + kind | u32 len + header JSON | u32 count
    | count x (u64 len + blob) | SHA-256 of everything before

The checksum catches truncation and accidental or third-party modification; it is not a
signature (either party can recompute it). Every parse error names what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TIPError

__all__ = ["MessageError", "Message", "read_message"]

MAGIC = b"TIPHF\0"
VERSION = 1


class MessageError(TIPError, ValueError):
    """A message is not a tip_hf message, is truncated, corrupted, or of the wrong kind."""


@dataclass
class Message:
    kind: str
    header: dict[str, Any]
    blobs: list[bytes] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        kind = self.kind.encode()
        header = json.dumps(self.header, sort_keys=True).encode()
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
    def from_bytes(cls, data: bytes, kind: str | None = None) -> Message:
        where = f"{kind or 'tip_hf'} message"
        if len(data) < len(MAGIC) + 32 or not data.startswith(MAGIC):
            raise MessageError(f"This is not a {where} (bad magic bytes or empty file).")
        body, digest = data[:-32], data[-32:]
        reader = _Reader(body, where)
        reader.take(len(MAGIC))
        version, kind_len = struct.unpack("<HB", reader.take(3))
        if version != VERSION:
            raise MessageError(f"The {where} has format version {version}; this tip_hf reads version {VERSION}.")
        found = reader.take(kind_len).decode(errors="replace")
        (header_len,) = struct.unpack("<I", reader.take(4))
        header_bytes = reader.take(header_len)
        (count,) = struct.unpack("<I", reader.take(4))
        blobs = []
        for _ in range(count):
            (size,) = struct.unpack("<Q", reader.take(8))
            blobs.append(reader.take(size))
        if reader.remaining:
            raise MessageError(f"The {where} has {reader.remaining} unexpected trailing bytes: it was modified.")
        if hashlib.sha256(body).digest() != digest:
            raise MessageError(f"The {where} fails its checksum: it was corrupted or tampered with in transit.")
        if kind is not None and found != kind:
            raise MessageError(f"Expected a '{kind}' message, got a '{found}' message. Check which file you passed.")
        try:
            header = json.loads(header_bytes)
        except json.JSONDecodeError as e:
            raise MessageError(f"The {where} header is not valid JSON.") from e
        return cls(found, header, blobs)


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
