"""Fuzzing every parser of untrusted bytes with hypothesis.

Real messages (public context, encrypted query, scores) and a real store are made with the
public API, then mutated: bytes flipped, inserted, deleted, truncated (with and without a
recomputed checksum, so mutations reach past it), and structured mutations of the JSON
header, the parts, the kind and the framing, re-serialised with a valid checksum (SHA-256
over the body: either party can recompute it). Stores get mutated manifests and shards (raw
bytes with a recomputed manifest checksum, and well-formed safetensors with wrong tensors).

Property: every call either succeeds or raises a ``TIPError`` subclass; any other exception
(AttributeError, KeyError, TypeError, struct.error, SafetensorError, RuntimeError, ...)
fails the test. Bounded and derandomised: the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import synthetic_store
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from safetensors.torch import save as save_safetensors

from tip_hf import SketchStore
from tip_hf.errors import TIPError
from tip_hf.he import BuyerKeys, PublicContext, ReleasePolicy, decrypt_scores, encrypt_query, score_encrypted
from tip_hf.he.messages import MAGIC, Message, MessageError, header_field, read_message
from tip_hf.store import MANIFEST, read_shard_tensors

SCALE = float(os.environ.get("TIP_HF_FUZZ_SCALE", "1"))  # e.g. 20 for a deep run (minutes)


def fuzz(examples: int, shrink: bool = True) -> settings:
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


K = 8
KINDS = ["tip_hf.public_context", "tip_hf.query", "tip_hf.scores", "tip_hf.secret_key"]


def as_bytes(x: Any) -> bytes:
    """Bytes of a message, an EncryptedQuery, or a typed result with ``.message`` / ``.to_bytes()``."""
    if isinstance(x, bytes | bytearray | memoryview):
        return bytes(x)
    if hasattr(x, "to_bytes"):
        return x.to_bytes()
    return x.message.to_bytes()


def note(what: str) -> None:
    if currently_in_test_context():  # outcome statistics: pytest --hypothesis-show-statistics
        event(what)


def refused_or_ok(call: Callable[[], object]) -> bool:
    """True if ``call`` succeeds, False if it raises a TIPError; anything else propagates."""
    try:
        call()
    except TIPError as e:
        assert "\n" not in str(e).strip() or type(e).__name__ == "SpecMismatchError", f"multi-line error: {e!r}"
        shown = re.sub(r"'[^']*'", "'...'", str(e))[:70]  # no temporary paths: fewer distinct events
        note(f"refused: {type(e).__name__}: {shown}")
        return False
    note("accepted")
    return True


# -- material made with the real API (once per module) ---------------------------------------
@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    keys = BuyerKeys.generate()
    query = encrypt_query(np.random.default_rng(0).normal(size=K), keys)
    ctx_bytes = as_bytes(keys.public.to_message())
    path = tmp_path_factory.mktemp("fuzz") / "store"
    sketches = np.random.default_rng(1).normal(size=(10, K)) / 4
    store = synthetic_store(path, sketches, ["a", "b", "c", "a", "b"] * 2, shard_size=4)
    results = {
        release: as_bytes(
            score_encrypted(query, store, ctx_bytes, release=release, policy=ReleasePolicy(), progress=False)
        )
        for release in ("corpus", "example")
    }
    results = {release: Sample(blob) for release, blob in results.items()}
    query_bytes, ctx_bytes = Sample(as_bytes(query)), Sample(ctx_bytes)
    return Material(keys=keys, query=query_bytes, ctx=ctx_bytes, store=store, store_path=path, results=results)


class Material(dict):
    """The fixture's real messages and store; a short repr keeps hypothesis' reports readable."""

    def __repr__(self) -> str:
        return "material"


# -- mutations -----------------------------------------------------------------------------------
def frame(
    kind: bytes, header: bytes, blobs: list[bytes], *, version: int = 1, count: int | None = None, tail: bytes = b""
) -> bytes:
    """A message in the wire format of Message.to_bytes, from raw parts, with a valid checksum."""
    parts = [MAGIC, struct.pack("<HB", version, len(kind)), kind, struct.pack("<I", len(header)), header]
    parts.append(struct.pack("<I", len(blobs) if count is None else count))
    for blob in blobs:
        parts += [struct.pack("<Q", len(blob)), blob]
    body = b"".join(parts) + tail
    return body + hashlib.sha256(body).digest()


def with_checksum(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def edit_bytes(data: bytes, draw: st.DrawFn, max_ops: int = 4) -> bytes:
    """1..max_ops byte edits, mostly near the start (framing, JSON) and the end (checksum)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        n = max(len(out), 1)
        region = draw(st.sampled_from(["head", "tail", "anywhere"]))
        low, high = {"head": (0, min(n - 1, 600)), "tail": (max(n - 80, 0), n - 1), "anywhere": (0, n - 1)}[region]
        pos = draw(st.integers(low, high))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        if op == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and out:
            out[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, ord("{"), ord("["), ord('"'), ord("9")]))
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del out[pos:]
        elif op == "append":
            out += draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


INTS = st.one_of(
    st.integers(-3, 70),
    st.sampled_from([-(2**63), -1, 2**31, 2**32 - 1, 2**53 + 1, 2**63, 2**64, 10**30, 10**400]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "a", "tip_hf.query", "complex-pairs/1", "0" * 64, "../x", "\x00", "é" * 3]),
    st.text(max_size=12),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


def with_value(document: dict, path: tuple, bad: object) -> dict:
    """A deep copy of a JSON document with the value at ``path`` replaced by ``bad`` (or removed)."""
    edited = json.loads(json.dumps(document))
    parent = edited
    for key in path[:-1]:
        parent = parent[key]
    if bad is _REMOVE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = bad
    return edited


def paths(value: object, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path (tuple of keys / indices) into a JSON value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:6]):
            yield from paths(child, (*prefix, index))


def edit_json(value: object, draw: st.DrawFn) -> object:
    """One structured edit of a JSON value: replace, delete or add at a random path."""
    value = json.loads(json.dumps(value))
    path = draw(st.sampled_from(list(paths(value))))
    if not path:
        return draw(JSON_VALUES)
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if op == "replace":
        parent[path[-1]] = draw(JSON_VALUES)
    elif op == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(JSON_VALUES)
    else:
        parent.append(draw(JSON_VALUES))
    return value


HEADER_BYTES = st.sampled_from(
    [
        b"",
        b"[]",
        b"null",
        b"3",
        b'"x"',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'{"a":' + b"9" * 5000 + b"}",
        b'{"a": NaN, "b": Infinity}',
        b'{"a": 1, "a": 2}',
        b"\xff\xfe{}",
        b'{"\xc3\x28": 1}',
        b"\x00" * 7,
    ]
)


def mutate_message(message: bytes, draw: st.DrawFn) -> bytes:
    """A structured mutation of a valid message, re-framed with a valid checksum, or raw byte
    edits (with or without a recomputed checksum)."""
    how = draw(st.sampled_from(["header"] * 4 + ["blobs"] * 2 + ["kind", "frame", "bytes", "bytes-rechecksum"]))
    if how == "bytes":
        return edit_bytes(message, draw)
    if how == "bytes-rechecksum":
        return with_checksum(edit_bytes(message[:-32], draw))
    msg = Message.from_bytes(message)
    kind, header, blobs = msg.kind.encode(), json.dumps(msg.header, sort_keys=True).encode(), list(msg.blobs)
    if how == "header":
        if draw(st.integers(0, 3)):
            edited = msg.header
            for _ in range(draw(st.integers(1, 2))):
                edited = edit_json(edited, draw)
            header = json.dumps(edited).encode()
        else:
            header = draw(HEADER_BYTES)
    elif how == "blobs":
        op = draw(st.sampled_from(["drop", "duplicate", "swap", "garbage", "truncate", "empty", "clear", "edit"]))
        i = draw(st.integers(0, max(len(blobs) - 1, 0)))
        if op == "drop" and blobs:
            del blobs[i]
        elif op == "duplicate" and blobs:
            blobs.insert(i, blobs[i])
        elif op == "swap" and len(blobs) > 1:
            blobs[0], blobs[-1] = blobs[-1], blobs[0]
        elif op == "garbage":
            blobs.insert(i, draw(st.binary(max_size=64)))
        elif op == "truncate" and blobs:
            blobs[i] = blobs[i][: draw(st.integers(0, len(blobs[i])))]
        elif op == "empty" and blobs:
            blobs[i] = b""
        elif op == "clear":
            blobs = []
        elif blobs:
            blobs[i] = edit_bytes(blobs[i], draw, max_ops=2)
    elif how == "kind":
        kind = draw(st.one_of(st.sampled_from([k.encode() for k in KINDS]), st.binary(max_size=12)))
    else:
        version = draw(st.sampled_from([0, 1, 2, 0xFFFF]))
        count = draw(st.sampled_from([None, 0, len(blobs) + 1, 2**31, 2**32 - 1]))
        tail = draw(st.sampled_from([b"", b"\x00", b"\xff" * 9]))
        return frame(kind, header, blobs, version=version, count=count, tail=tail)
    return frame(kind, header, blobs)


class Sample(bytes):
    """Bytes with a short repr: hypothesis prints strategies' arguments and drawn values."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes: {bytes(self[:400])!r}{' ...' if len(self) > 400 else ''}>"


@st.composite
def mutated(draw: st.DrawFn, message: bytes) -> Sample:
    return Sample(mutate_message(message, draw))


# -- tip_hf/he/messages.py: must refuse everything malformed with MessageError ------------
@fuzz(400)
@given(data=st.data())
def test_message_parser_refuses_every_mutation_with_message_error(material, data):
    source = data.draw(st.sampled_from(["ctx", "query", "corpus", "example"]), label="source")
    original = material["results"][source] if source in ("corpus", "example") else material[source]
    blob = data.draw(mutated(original), label="mutated")
    kind = data.draw(st.sampled_from([None, *KINDS]), label="kind")
    try:
        message = Message.from_bytes(blob, kind)
    except MessageError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(message.header, dict) and isinstance(message.kind, str)
    assert all(isinstance(b, bytes) for b in message.blobs)
    again = Message.from_bytes(message.to_bytes(), kind)  # what parses, round-trips (NaN != NaN: compare bytes)
    assert again.to_bytes() == message.to_bytes() and again.kind == message.kind
    refused_or_ok(lambda: read_message(blob, message.kind))


def test_message_parser_edge_cases():
    ok = frame(b"k", b"{}", [b"x"])
    assert Message.from_bytes(ok) == Message("k", {}, [b"x"])
    cases = {
        "not an object": frame(b"k", b"[1, 2]", []),
        "deeper than": frame(b"k", b"[" * 100_000 + b"]" * 100_000, []),
        "deeper than ": frame(b"k", b'{"a":' * 70 + b"1" + b"}" * 70, []),
        "not UTF-8 text": frame(b"k", b'{"\xff": 1}', []),
        "kind in bytes that are not UTF-8": frame(b"\xff\xfe", b"{}", []),
        "declares 4294967295 parts": frame(b"k", b"{}", [], count=2**32 - 1),
        "truncated": frame(b"k", b"{}", [b"xy"])[:-40] + b"\0" * 32,
        "not valid JSON": frame(b"k", b'{"a": ' + b"9" * 5000 + b"}", []),
        "format version": frame(b"k", b"{}", [], version=7),
    }
    for expected, blob in cases.items():
        with pytest.raises(MessageError, match=expected.strip()):
            Message.from_bytes(blob)
    nested = Message.from_bytes(frame(b"k", b'{"a":' * 60 + b"1" + b"}" * 60, []))  # 60 levels: fine
    assert isinstance(nested.header["a"], dict)
    with pytest.raises(TypeError):
        Message.from_bytes("not bytes")  # type: ignore[arg-type]


def test_typed_header_access():
    msg = Message("tip_hf.query", {"k": 8, "flag": True, "x": 1, "nan": float("nan"), "s": "v", "none": None})
    assert msg.field("k", int) == 8 and msg.field("s", str) == "v" and msg.field("flag", bool) is True
    assert msg.field("x", float) == 1.0 and isinstance(msg.field("x", float), float)
    assert msg.field("missing", (str, type(None))) is None and msg.field("none", (str, type(None))) is None
    for name, kind, match in [
        ("missing", int, "lacks the `missing` field"),
        ("flag", int, "malformed `flag` field: expected int, got bool"),
        ("nan", float, "malformed `nan`"),
        ("s", (int, float), "expected int or float, got str"),
        ("none", int, "got null"),
    ]:
        with pytest.raises(MessageError, match=match):
            msg.field(name, kind)
    with pytest.raises(MessageError, match="not a JSON object"):
        header_field([1], "k", int, "'x' message")


# -- tip_hf/he: public context, query, scores -----------------------------------------------------
@fuzz(150)
@given(data=st.data())
def test_public_context_load(material, data):
    blob = data.draw(mutated(material["ctx"]), label="mutated")
    refused_or_ok(lambda: PublicContext.load(blob))


@fuzz(150)
@given(data=st.data())
def test_score_encrypted_with_mutated_query(material, data):
    blob = data.draw(mutated(material["query"]), label="mutated")
    refused_or_ok(lambda: score_encrypted(blob, material["store"], material["ctx"], progress=False))


@fuzz(100)
@given(data=st.data())
def test_score_encrypted_with_mutated_context(material, data):
    blob = data.draw(mutated(material["ctx"]), label="mutated")
    refused_or_ok(lambda: score_encrypted(material["query"], material["store"], blob, progress=False))


@fuzz(150)
@given(data=st.data())
def test_decrypt_scores_with_mutated_scores(material, data):
    release = data.draw(st.sampled_from(["corpus", "example"]), label="release")
    blob = data.draw(mutated(material["results"][release]), label="mutated")
    refused_or_ok(lambda: decrypt_scores(blob, material["keys"]))


# A deterministic sweep next to the random search: every header field of every message, set
# to each wrong-typed value (or removed), re-serialised with a valid checksum.
_REMOVE = object()
BAD_VALUES = [_REMOVE, None, True, -1, 2**64, 1.5, float("nan"), "", "\n", [], [1], {}, {"a": 1}]


def sweep_header(message: bytes, call: Callable[[bytes], object]) -> list[str]:
    msg = Message.from_bytes(message)
    problems = []
    for path in paths(msg.header):
        for bad in BAD_VALUES if path else []:
            header = with_value(msg.header, path, bad)
            what = f"header{''.join(f'[{key!r}]' for key in path)} = {'<removed>' if bad is _REMOVE else repr(bad)}"
            try:
                call(Message(msg.kind, header, msg.blobs).to_bytes())
            except TIPError as e:
                if "\n" in str(e).strip() and type(e).__name__ != "SpecMismatchError":
                    problems.append(f"{what}: multi-line {type(e).__name__}: {str(e)!r}")
            except Exception as e:
                problems.append(f"{what}: {type(e).__name__}: {e}")
    return problems


SWEEPS: dict[str, Callable[[Material], tuple[bytes, Callable[[bytes], object]]]] = {
    "public_context": lambda m: (m["ctx"], PublicContext.load),
    "query": lambda m: (m["query"], lambda b: score_encrypted(b, m["store"], m["ctx"], progress=False)),
    "scores-corpus": lambda m: (m["results"]["corpus"], lambda b: decrypt_scores(b, m["keys"])),
    "scores-example": lambda m: (m["results"]["example"], lambda b: decrypt_scores(b, m["keys"])),
}


@pytest.mark.parametrize(
    "target",
    [
        "public_context",
        "query",
        "scores-corpus",
        "scores-example",
    ],
)
def test_every_header_field_forged(material, target):
    message, call = SWEEPS[target](material)
    problems = sweep_header(message, call)
    assert not problems, f"{len(problems)} forged headers escape as non-TIPError:\n" + "\n".join(problems[:40])


# -- tip_hf/store.py: manifest and shards ---------------------------------------------------------
@contextmanager
def store_copy(material: dict[str, Any]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tip_hf-fuzz-") as tmp:
        path = Path(tmp) / "store"
        shutil.copytree(material["store_path"], path)
        yield path


def read_everything(path: Path) -> None:
    """Every reader of a store: what scoring, verify and the CLI use."""
    store = SketchStore(path)
    repr(store)
    assert len(store) >= 0
    shards = list(store.shards())
    assert all(s.sketches.shape == (len(s.ids), store.proj_dim) for s in shards)
    store.verify()
    labels = store.corpus_labels()
    assert len(labels) == len(store.ids()) == len(store.sketches())
    for entry in store.manifest["shards"]:
        read_shard_tensors(path, entry)


@fuzz(200)
@given(data=st.data())
def test_store_with_mutated_manifest(material, data):
    with store_copy(material) as path:
        manifest = path / MANIFEST
        text = manifest.read_bytes()
        if data.draw(st.booleans(), label="structured"):
            edited = edit_json(json.loads(text), data.draw)
            for _ in range(data.draw(st.integers(0, 2), label="more edits")):
                edited = edit_json(edited, data.draw)
            text = json.dumps(edited).encode()
        else:
            text = edit_bytes(text, data.draw)
        manifest.write_bytes(text)
        refused_or_ok(lambda: read_everything(path))


def tensor_edit(tensors: dict[str, torch.Tensor], draw: st.DrawFn) -> dict[str, torch.Tensor]:
    tensors = dict(tensors)
    name = draw(st.sampled_from(["sketches", "ids", "corpus"]))
    op = draw(st.sampled_from(["drop", "dtype", "rows", "cols", "flat", "codes", "nan", "extra", "empty"]))
    t = tensors[name]
    if op == "drop":
        del tensors[name]
    elif op == "dtype":
        dtype = draw(st.sampled_from([torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool]))
        tensors[name] = t.to(dtype)
    elif op == "rows":
        tensors[name] = t[: draw(st.integers(0, max(len(t) - 1, 0)))].contiguous()
    elif op == "cols" and t.dim() == 2:
        tensors[name] = t[:, : draw(st.integers(0, t.shape[1] - 1))].contiguous()
    elif op == "flat":
        tensors[name] = t.reshape(-1).contiguous() if t.dim() > 1 else t.reshape(-1, 1).contiguous()
    elif op == "codes":
        tensors["corpus"] = torch.full_like(tensors["corpus"], draw(st.sampled_from([-1, 3, 2**31 - 1])))
    elif op == "nan":
        tensors["sketches"] = tensors["sketches"].clone()
        tensors["sketches"][0, 0] = draw(st.sampled_from([float("nan"), float("inf")]))
    elif op == "extra":
        tensors["extra"] = torch.zeros(2)
    elif op == "empty":
        tensors = {}
    return tensors


@fuzz(200)
@given(data=st.data())
def test_store_with_mutated_shard(material, data):
    with store_copy(material) as path:
        manifest = json.loads((path / MANIFEST).read_text())
        index = data.draw(st.integers(0, len(manifest["shards"]) - 1), label="shard")
        entry = manifest["shards"][index]
        shard = path / entry["file"]
        how = data.draw(st.sampled_from(["bytes", "bytes-rechecksum", "header", "tensors"]), label="how")
        raw = shard.read_bytes()
        if how in ("bytes", "bytes-rechecksum"):
            raw = edit_bytes(raw, data.draw)
        elif how == "header":  # the safetensors JSON header, its length prefix kept consistent
            (size,) = struct.unpack("<Q", raw[:8])
            header = json.loads(raw[8 : 8 + size])
            text = json.dumps(edit_json(header, data.draw)).encode()
            raw = struct.pack("<Q", len(text)) + text + raw[8 + size :]
        else:
            from safetensors.torch import load

            tensors = tensor_edit(load(raw), data.draw)
            raw = save_safetensors(tensors) if tensors else b"\0" * 8
        shard.write_bytes(raw)
        if how != "bytes":  # keep the manifest's checksum valid: reach the tensor checks
            entry["sha256"] = hashlib.sha256(raw).hexdigest()
            (path / MANIFEST).write_text(json.dumps(manifest))
        refused_or_ok(lambda: read_everything(path))


@fuzz(60)
@given(data=st.data())
def test_scoring_a_mutated_store_refuses_with_tip_error(material, data):
    """What a damaged store does to the seller's scorer (store.py validates, scoring consumes)."""
    with store_copy(material) as path:
        manifest = json.loads((path / MANIFEST).read_text())
        entry = manifest["shards"][data.draw(st.integers(0, len(manifest["shards"]) - 1), label="shard")]
        from safetensors.torch import load

        shard = path / entry["file"]
        tensors = tensor_edit(load(shard.read_bytes()), data.draw)
        raw = save_safetensors(tensors) if tensors else b"\0" * 8
        shard.write_bytes(raw)
        entry["sha256"] = hashlib.sha256(raw).hexdigest()
        (path / MANIFEST).write_text(json.dumps(manifest))
        release = data.draw(st.sampled_from(["corpus", "example"]), label="release")
        keys = material["keys"]
        refused_or_ok(lambda: score_encrypted(material["query"], path, keys.public, release=release, progress=False))


def test_every_manifest_field_forged(material):
    """The deterministic sweep of the header tests, on the store manifest (store.py's parser)."""
    manifest = json.loads((material["store_path"] / MANIFEST).read_text())
    problems = []
    with store_copy(material) as path:
        for field_path in paths(manifest):
            for bad in BAD_VALUES if field_path else []:
                edited = with_value(manifest, field_path, bad)
                (path / MANIFEST).write_text(json.dumps(edited))
                try:
                    refused_or_ok(lambda: read_everything(path))
                except Exception as e:
                    problems.append(f"manifest{list(field_path)} = {bad!r}: {type(e).__name__}: {e}")
    assert not problems, "\n".join(problems[:40])


def test_store_refuses_hostile_manifests(material):
    """Targeted cases: each names the manifest and says what is wrong."""
    cases: list[tuple[str, Callable[[dict], object]]] = [
        ("not a sketch store manifest", lambda m: [m]),
        ("lacks the `shards` field", lambda m: {k: v for k, v in m.items() if k != "shards"}),
        ("malformed `corpora`", lambda m: {**m, "corpora": [1, 2]}),
        ("malformed `shards`", lambda m: {**m, "shards": {"file": "x"}}),
        ("malformed `proj_dim`", lambda m: {**m, "proj_dim": -1}),
        ("malformed `complete`", lambda m: {**m, "complete": "yes"}),
        ("names a shard file '../x'", lambda m: {**m, "shards": [{**m["shards"][0], "file": "../x"}]}),
        ("names a shard file '/etc/passwd'", lambda m: {**m, "shards": [{**m["shards"][0], "file": "/etc/passwd"}]}),
        ("names a shard file int", lambda m: {**m, "shards": [{**m["shards"][0], "file": 3}]}),
        ("malformed `count`", lambda m: {**m, "shards": [{**m["shards"][0], "count": -4}]}),
        ("malformed `count`", lambda m: {**m, "shards": [{**m["shards"][0], "count": 10**30}]}),
        ("no valid SHA-256", lambda m: {**m, "shards": [{**m["shards"][0], "sha256": None}]}),
        ("invalid spec", lambda m: {**m, "spec": {**m["spec"], "proj_dim": "8"}}),
        ("says proj_dim 9", lambda m: {**m, "proj_dim": 9}),
    ]
    for expected, edit in cases:
        with store_copy(material) as path:
            manifest = json.loads((path / MANIFEST).read_text())
            (path / MANIFEST).write_text(json.dumps(edit(manifest)))
            with pytest.raises(TIPError, match=re.escape(expected)) as info:
                SketchStore(path)
            assert str(path / MANIFEST) in str(info.value) and "\n" not in str(info.value)


def test_rank_records_are_checked(material):
    from tip_hf.distributed import recorded_entries as _records

    for text in ["[1]", "{not json", '{"shards": [{"file": "../../x", "start": 0, "count": 1}]}', "\udcff"]:
        with store_copy(material) as path:
            (path / ".rank-0.json").write_bytes(text.encode(errors="surrogateescape"))
            with pytest.raises(TIPError, match=r"rank-0\.json"):
                _records(path)
