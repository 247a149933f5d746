"""The scores header is bound to its ciphertexts by a check only the buyer can verify.

Bug report: a scores header edited with its checksum recomputed (scale exponent +3, a count
30 -> 3000) decrypted as real. Every attack here edits a real result, recomputes every hash
the message format has (``blob_sha256``, the check's ``sha256``, the message checksum), and
shows the buyer refuses it; the same edit passes when the check is switched off, so each
test would fail without the binding."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tenseal.sealapi as seal
from helpers import synthetic_store

from tip_hf.he import (
    BuyerKeys,
    CKKSParams,
    KeyFileError,
    Message,
    MessageError,
    ParamsError,
    ReleasePolicy,
    binding,
    decrypt_scores,
    encrypt_query,
    score_encrypted,
)
from tip_hf.he import query as query_module
from tip_hf.he import seal as S
from tip_hf.he.kernel import QueryKernel
from tip_hf.he.params import COLUMNS, LAYOUT
from tip_hf.he.scoring import RESULT_KIND

K = 16
EDITED = "does not match its ciphertexts"
SIZES = {"alpha": 30, "beta": 30, "gamma": 45, "trio": 3}  # trio: withheld below min_examples=10


def sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


@pytest.fixture(scope="module")
def keys():
    return BuyerKeys.generate()


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    rng = np.random.default_rng(0)
    labels = [name for name, size in SIZES.items() for _ in range(size)]
    sketches = rng.normal(size=(len(labels), K))
    store = synthetic_store(tmp_path_factory.mktemp("m") / "s", sketches, labels)
    return store, sketches.astype(np.float32).astype(np.float64), np.array(labels)


@pytest.fixture(scope="module")
def scored(keys, market):
    """One query, its honest per-corpus result (bytes, as the buyer receives it) and the truth."""
    store, sketches, labels = market
    q = np.random.default_rng(1).normal(size=K)
    query = encrypt_query(q, keys)
    policy = ReleasePolicy(min_examples=10, clip_norm=100.0)  # clip far above every norm: no effect
    result = score_encrypted(query, store, keys.public, policy=policy, progress=False)
    truth = {c: float((sketches[labels == c] @ q).sum()) for c in SIZES}
    return query, result.to_bytes(), truth


def reframe(
    result: bytes,
    edit: Callable[[dict[str, Any]], None] | None = None,
    blobs: Callable[[list[bytes]], list[bytes]] | None = None,
) -> bytes:
    """The attacker's edit: change the header and/or the ciphertexts, then recompute every hash
    the format has (value ciphertexts, check ciphertext, message checksum). It parses."""
    msg = Message.from_bytes(result, RESULT_KIND)
    header = copy.deepcopy(msg.header)
    parts = list(msg.blobs) if blobs is None else blobs(list(msg.blobs))
    if edit is not None:
        edit(header)
    header["blob_sha256"] = [sha(blob) for blob in parts[:-1]]
    header["check"] = dict(header["check"], sha256=sha(parts[-1]))
    out = Message(msg.kind, header, parts).to_bytes()
    assert Message.from_bytes(out, RESULT_KIND).header == header  # a well-formed, checksummed message
    return out


def corpus(header: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in header["corpora"] if c["name"] == name)


def inflate(header: dict[str, Any]) -> None:
    """The bug report's edit: scale exponent +3 (every sum x8) and a count 30 -> 3000."""
    header["exponent"] += 3
    corpus(header, "alpha")["count"] = 3000


def no_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch the check off (any slot passes): what the buyer accepted before the binding."""
    monkeypatch.setattr(binding, "check_tolerance", lambda flood_std: math.inf)


def decode(blob: bytes, keys: BuyerKeys) -> np.ndarray:
    context = keys.public.context
    plain = seal.Plaintext()
    seal.Decryptor(context, keys.secret_key).decrypt(S.load(seal.Ciphertext, context, blob), plain)
    return np.asarray(seal.CKKSEncoder(context).decode_complex(plain))


def fresh_encryption(keys: BuyerKeys, values: np.ndarray) -> bytes:
    """Enc_pk(values) at the scale a result ciphertext has: anyone can make one."""
    context, params = keys.public.context, keys.public.params
    plain, ct = seal.Plaintext(), seal.Ciphertext()
    encoder = seal.CKKSEncoder(context)
    encoder.encode(values.tolist(), context.first_parms_id(), 2.0**params.product_scale_bits, plain)
    seal.Encryptor(context, keys.public.public_key).encrypt(plain, ct)
    return S.to_bytes(ct)


# -- (a) honest results ---------------------------------------------------------------------------
def test_honest_result_decrypts_to_the_plaintext_values(keys, scored):
    query, result, truth = scored
    assert query.message.header["layout"] == LAYOUT == "packed/1"
    assert len(query.message.blobs) == 2  # the vector's complex pairs in one ciphertext, then the check
    header = Message.from_bytes(result, RESULT_KIND).header
    assert header["check"]["slots"] == binding.CHECK_SLOTS
    assert len(Message.from_bytes(result, RESULT_KIND).blobs) == len(header["blob_sha256"]) + 1
    table = decrypt_scores(result, keys)
    for name in ("alpha", "beta", "gamma"):
        assert table[name]["count"] == SIZES[name]
        assert table[name]["sum"] == pytest.approx(truth[name], abs=1e-4)
    assert not table["trio"]["released"]


def test_check_slots_hold_the_secret_combination_and_flooding_only(keys, scored):
    """Slot i of the check decrypts to <H_i, R_i> + flooding; every other slot and every
    imaginary part to flooding alone (nothing of the seller's data is in it)."""
    query, result, _ = scored
    msg = Message.from_bytes(result, RESULT_KIND)
    sigma = msg.header["flood_std"]
    slots = decode(msg.blobs[-1], keys)
    seed = bytes.fromhex(keys.query_checks[query.query_id])
    expected = np.zeros(len(slots))
    expected[: binding.CHECK_SLOTS] = binding.expected_check(msg.header, seed)
    residual = slots.real - expected
    assert np.abs(residual).max() < 8 * sigma and np.abs(slots.imag).max() < 8 * sigma
    assert abs(residual.std() / sigma - 1) < 0.1 and abs(slots.imag.std() / sigma - 1) < 0.1
    # the check values themselves are far above the tolerance: a zero or noise slot cannot pass
    assert np.abs(expected[: binding.CHECK_SLOTS]).max() > 1e3 * binding.check_tolerance(sigma)


def test_tolerance_never_fails_an_honest_seller_and_is_capped():
    assert binding.check_tolerance(2.0**-25) == 8 * 2.0**-25
    assert binding.check_tolerance(2.0**-16) == 8 * 2.0**-16  # the largest flooding a seller accepts
    assert binding.check_tolerance(1.0) == binding.TOLERANCE_CAP  # an editor cannot widen it
    assert binding.check_tolerance(-1.0) == 0.0


# -- (b) the bug report's attack --------------------------------------------------------------
def test_inflated_exponent_and_count_with_recomputed_checksums_are_refused(keys, scored, monkeypatch):
    _query, result, truth = scored
    forged = reframe(result, inflate)
    with pytest.raises(MessageError, match=EDITED):
        decrypt_scores(forged, keys)
    no_check(monkeypatch)  # before the binding this decrypted "as real": sums x8, 3000 examples
    table = decrypt_scores(forged, keys)
    assert table["alpha"]["count"] == 3000
    assert table["alpha"]["sum"] == pytest.approx(8 * truth["alpha"], abs=1e-3)


# -- (c) every other class of header field ----------------------------------------------------
def _swap_names(header: dict[str, Any]) -> None:
    a, b = corpus(header, "alpha"), corpus(header, "gamma")
    a["name"], b["name"] = "gamma", "alpha"


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(header: dict[str, Any]) -> None:
        target: Any = header
        for key in path[:-1]:
            target = corpus(header, key) if key in SIZES else target[key]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value

    return edit


HEADER_EDITS = {
    "corpus names swapped": _swap_names,
    "count": _set(("gamma", "count"), lambda n: n + 1),
    "distinct": _set(("beta", "distinct"), lambda n: n - 5),
    "slot": _set(("alpha", "slot"), lambda s: s + 1),
    "released flag off": _set(("beta", "released"), False),
    "withheld corpus dropped": lambda h: h["corpora"].pop(),
    "clip_norm": _set(("clip_norm",), lambda c: c / 2),
    "flood_std up": _set(("flood_std",), lambda f: f * 1000),
    "flood_std down": _set(("flood_std",), lambda f: f / 2),
    "commitment root": _set(("commitment", "root"), "0" * 64),
    "corpus commitment": _set(("alpha", "commitment"), "f" * 64),
    "policy": _set(("policy", "min_examples"), 1),
    "store fingerprint": _set(("store_fingerprint",), "e" * 64),
    "dp added": _set(("dp",), {"epsilon": 0.1, "delta": 1e-9, "sigma": 0.0, "clip_norm": 1.0}),
    "extra field": _set(("note",), "certified"),
}


@pytest.mark.parametrize("name", sorted(HEADER_EDITS))
def test_every_header_field_is_bound(keys, scored, monkeypatch, name):
    _query, result, _truth = scored
    forged = reframe(result, HEADER_EDITS[name])
    with pytest.raises(MessageError, match=EDITED):
        decrypt_scores(forged, keys)
    no_check(monkeypatch)
    try:  # without the check the edit is accepted or, at worst, refused for another reason
        decrypt_scores(forged, keys)
    except MessageError as e:
        assert EDITED not in str(e)


def test_dp_statement_is_bound(keys, market, monkeypatch):
    store, _, _ = market
    policy = ReleasePolicy.conservative(clip_norm=1.0)
    result = score_encrypted(encrypt_query(np.ones(K), keys), store, keys.public, policy=policy, progress=False)
    honest = decrypt_scores(result, keys)
    assert honest.dp is not None and honest.dp["epsilon"] == pytest.approx(2.0, rel=1e-3)
    edits = [
        _set(("dp", "epsilon"), lambda e: e / 20),  # claims 20x more privacy than given
        _set(("dp", "sigma"), lambda s: s / 10),  # claims 10x less noise in the values
        _set(("dp", "clip_norm"), lambda c: c * 4),
        _set(("dp",), None),
    ]
    for edit in edits:
        with pytest.raises(MessageError, match=EDITED):
            decrypt_scores(reframe(result.to_bytes(), edit), keys)
    no_check(monkeypatch)
    assert decrypt_scores(reframe(result.to_bytes(), edits[0]), keys).dp["epsilon"] == pytest.approx(0.1, rel=1e-3)


def test_check_field_itself_must_be_present_and_exact(keys, scored):
    _query, result, _ = scored
    with pytest.raises(MessageError, match="no valid header check"):
        decrypt_scores(reframe(result, _set(("check", "slots"), 1)), keys)
    msg = Message.from_bytes(result, RESULT_KIND)
    stripped = dict(msg.header)
    del stripped["check"]
    with pytest.raises(MessageError, match="no valid header check"):
        decrypt_scores(Message(msg.kind, stripped, msg.blobs[:-1]).to_bytes(), keys)
    with pytest.raises(MessageError, match="do not match their header"):
        decrypt_scores(Message(msg.kind, msg.header, msg.blobs[:-1]).to_bytes(), keys)  # check dropped


# -- (d) ciphertexts swapped or replaced ------------------------------------------------------
def test_replaced_or_swapped_value_ciphertexts_are_refused(keys, market, scored):
    store, _, _ = market
    query, result, truth = scored
    other = score_encrypted(query, store, keys.public, policy=ReleasePolicy(min_examples=10), progress=False)
    value = decode(Message.from_bytes(result, RESULT_KIND).blobs[0], keys).real
    attempts = {
        "fresh Enc_pk of 8x the values": lambda b: [fresh_encryption(keys, 8 * value), *b[1:]],
        "fresh Enc_pk of noise": lambda b: [fresh_encryption(keys, np.full(len(value), 0.01)), *b[1:]],
        "value block of another result": lambda b: [other.blobs[0], *b[1:]],
        "check of another result (replay)": lambda b: [*b[:-1], other.blobs[-1]],
    }
    for what, blobs in attempts.items():
        try:
            decrypt_scores(reframe(result, blobs=blobs), keys)
        except MessageError as e:
            assert EDITED in str(e), (what, str(e))
        else:
            pytest.fail(f"accepted: {what}")
    # the other result is itself honest: the refusal is about the mix, not the parts
    assert decrypt_scores(other, keys)["gamma"]["sum"] == pytest.approx(truth["gamma"], abs=1e-4)


def test_result_for_another_query_is_refused(keys, scored):
    """A result for query A relabelled as query B's (both the buyer's): B's secret differs."""
    _query, result, _ = scored
    second = encrypt_query(np.ones(K), keys)
    with pytest.raises(MessageError, match=EDITED):
        decrypt_scores(reframe(result, _set(("query_id",), second.query_id)), keys)


# -- (e) forging the check without the query --------------------------------------------------
def test_check_cannot_be_forged_without_the_query(keys, scored):
    """What a party without the query can do to the check ciphertext: integer multiples (exact,
    same scale), adding fresh encryptions of guesses, and (the strongest) multiplying every
    slot by a public constant of its choice. All fail for an edited header."""
    query, result, _ = scored
    context = keys.public.context
    evaluator = seal.Evaluator(context)
    msg = Message.from_bytes(result, RESULT_KIND)
    edited = copy.deepcopy(msg.header)
    inflate(edited)

    def forged(check: bytes) -> bytes:
        return reframe(result, inflate, blobs=lambda b: [*b[:-1], check])

    def multiple(n: int) -> bytes:
        ct = S.load(seal.Ciphertext, context, msg.blobs[-1])
        out = S.load(seal.Ciphertext, context, msg.blobs[-1])
        for _ in range(abs(n) - 1):
            evaluator.add_inplace(out, ct)
        if n < 0:
            evaluator.negate_inplace(out)
        return S.to_bytes(out)

    for n in (2, 3, 8, -1, -2):
        with pytest.raises(MessageError, match=EDITED):
            decrypt_scores(forged(multiple(n)), keys)
    rng = np.random.default_rng(2)
    slots = keys.public.params.slots
    for _ in range(8):  # add Enc_pk(guess): guesses of the difference the edit needs
        guess = np.zeros(slots)
        guess[: binding.CHECK_SLOTS] = rng.uniform(-1.0, 1.0, binding.CHECK_SLOTS)
        ct = S.load(seal.Ciphertext, context, msg.blobs[-1])
        evaluator.add_inplace(ct, S.load(seal.Ciphertext, context, fresh_encryption(keys, guess)))
        with pytest.raises(MessageError, match=EDITED):
            decrypt_scores(forged(S.to_bytes(ct)), keys)
    # Slot-wise scaling by public constants c_i (plaintext multiplication), given here its
    # ideal precision: the seller's kernel releases c_i <H_i, R_i>. Without R_i's direction the
    # best c_i (the projection of H'_i on H_i) misses.
    old, new = binding.header_rows(msg.header), binding.header_rows(edited)
    c = (old * new).sum(axis=1) / (old * old).sum(axis=1)
    kernel = QueryKernel(query.message, keys.public, 40)
    with pytest.raises(MessageError, match=EDITED):
        decrypt_scores(forged(kernel.release_check(c[:, None] * old)), keys)


def test_a_single_secret_in_every_slot_would_be_forgeable(keys, market, monkeypatch):
    """Why a secret pair per slot: with one secret r in every slot (check slot i = r h_i),
    slot-wise scaling by h'_i / h_i forges the check of any edited header without knowing r."""
    store, _, _ = market
    r = 0.3

    def single(seed: bytes) -> np.ndarray:
        return np.column_stack([np.full(binding.CHECK_SLOTS, r), np.zeros(binding.CHECK_SLOTS)])

    monkeypatch.setattr(binding, "secret_rows", single)
    monkeypatch.setattr(query_module, "secret_rows", single)
    query = encrypt_query(np.ones(K), keys)
    result = score_encrypted(query, store, keys.public, progress=False).to_bytes()
    msg = Message.from_bytes(result, RESULT_KIND)
    edited = copy.deepcopy(msg.header)
    inflate(edited)
    old, new = binding.header_rows(msg.header), binding.header_rows(edited)
    c = new[:, 0] / old[:, 0]  # public: needs no secret
    scaled = np.column_stack([c * old[:, 0], np.zeros(binding.CHECK_SLOTS)])  # slot i: c_i r h_i = r h'_i
    check = QueryKernel(query.message, keys.public, 40).release_check(scaled)
    table = decrypt_scores(reframe(result, inflate, blobs=lambda b: [*b[:-1], check]), keys)
    assert table["alpha"]["count"] == 3000  # accepted: the forgery works against one secret


# -- (f) per-example results ------------------------------------------------------------------
def test_per_example_results_are_bound(keys, tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    n = 5000  # two blocks of 4096 slots
    sketches = rng.normal(size=(n, K))
    labels = [f"c{i % 3}" for i in range(n)]
    store = synthetic_store(tmp_path / "s", sketches, labels)
    q = rng.normal(size=K)
    policy = ReleasePolicy(allow_example_release=True)
    query = encrypt_query(q, keys, layout=COLUMNS)  # the binding is the same in both layouts
    result = score_encrypted(query, store, keys.public, "example", policy, progress=False)
    assert len(result.header["blocks"]) == 2 and len(result.blobs) == 3  # two blocks, then the check
    honest = decrypt_scores(result, keys)
    np.testing.assert_allclose(honest.values, sketches.astype(np.float32).astype(np.float64) @ q, atol=1e-4)
    blob = result.to_bytes()
    edits = {
        "block exponent": lambda h: h["blocks"][0].update(exponent=h["blocks"][0]["exponent"] + 3),
        "block labels": lambda h: h["blocks"][1]["corpus"].reverse(),
        "block count": lambda h: h["blocks"][1].update(count=h["blocks"][1]["count"] - 1),
        "commitment": lambda h: h["commitment"].update(examples=n + 1),
    }
    for edit in edits.values():
        with pytest.raises(MessageError, match=EDITED):
            decrypt_scores(reframe(blob, edit), keys)
    swap = lambda b: [b[1], b[0], b[2]]  # noqa: E731
    with pytest.raises(MessageError, match=EDITED):
        decrypt_scores(reframe(blob, blobs=swap), keys)
    no_check(monkeypatch)  # past the check, the block count is still checked against the value ciphertexts
    with pytest.raises(MessageError, match="another number of blocks"):
        decrypt_scores(reframe(blob, lambda h: h["blocks"].pop()), keys)
    inflated = decrypt_scores(reframe(blob, edits["block exponent"]), keys).values
    np.testing.assert_allclose(inflated[:4096], 8 * honest.values[:4096], rtol=1e-6, atol=1e-6)


# -- query layout, keys and queries.json ------------------------------------------------------
def test_query_layout_and_old_queries(keys, market):
    store, _, _ = market
    odd = encrypt_query(np.ones(15), keys, layout=COLUMNS)
    assert len(odd.message.blobs) == math.ceil(15 / 2) + 1
    assert len(encrypt_query(np.ones(8193 * 2), keys).message.blobs) == 3 + 1  # packed: 4096 pairs a ciphertext
    query = encrypt_query(np.ones(K), keys, layout=COLUMNS)
    old = Message("tip_hf.query", dict(query.message.header, layout="complex-pairs/2"), query.message.blobs[:-1])
    with pytest.raises(MessageError, match=r"layout 'complex-pairs/2'.*new query"):
        score_encrypted(old, store, keys.public, progress=False)
    short = Message("tip_hf.query", query.message.header, query.message.blobs[:-1])
    with pytest.raises(MessageError, match=r"so 9 ciphertexts \(8 for the vector, 1 header check\), but holds 8"):
        score_encrypted(short, store, keys.public, progress=False)
    packed = encrypt_query(np.ones(K), keys).message
    with pytest.raises(MessageError, match=r"packed/1 and so 2 ciphertexts \(1 for the vector"):
        score_encrypted(Message(packed.kind, packed.header, packed.blobs * 2), store, keys.public, progress=False)
    # keys of the previous layout are the same keys: they still load
    params = dict(keys.public.params.to_dict(), layout="complex-pairs/2")
    assert CKKSParams.from_dict(params) == keys.public.params
    with pytest.raises(ParamsError, match="complex-pairs/1"):
        CKKSParams.from_dict(dict(params, layout="complex-pairs/1"))


def test_queries_file_keeps_the_check_private_and_reads_the_old_format(keys, market, tmp_path):
    store, _, _ = market
    buyer = BuyerKeys.generate()
    folder = buyer.save(tmp_path / "buyer")
    query = encrypt_query(np.ones(K), buyer)
    result = score_encrypted(query, store, buyer.public, progress=False)
    path = folder / "queries.json"
    assert path.stat().st_mode & 0o777 == 0o600
    record = json.loads(path.read_text())[query.query_id]
    assert set(record) == {"exponent", "check"} and len(bytes.fromhex(record["check"])) == 32
    assert record["check"] not in query.to_bytes().hex() and record["check"] not in result.to_bytes().hex()
    loaded = BuyerKeys.load(folder)
    assert loaded.query_checks == buyer.query_checks
    assert decrypt_scores(result, loaded)["alpha"]["count"] == SIZES["alpha"]
    # an older tip_hf wrote {query id: exponent}: it loads, and that query's results are refused
    path.write_text(json.dumps({query.query_id: record["exponent"]}))
    old = BuyerKeys.load(folder)
    assert old.query_exponents == {query.query_id: record["exponent"]} and old.query_checks == {}
    with pytest.raises(MessageError, match=r"older tip_hf.*make a new query"):
        decrypt_scores(result, old)
    newer = encrypt_query(np.ones(K), old)  # a new query next to the old record: both kept
    both = json.loads(path.read_text())
    assert both[query.query_id] == record["exponent"] and set(both[newer.query_id]) == {"exponent", "check"}
    assert BuyerKeys.load(folder).query_checks == {newer.query_id: both[newer.query_id]["check"]}
    for damaged in ({"x": {"exponent": 1}}, {"x": {"exponent": 1, "check": "zz" * 32}}, {"x": "1"}, [1]):
        path.write_text(json.dumps(damaged))
        with pytest.raises(KeyFileError, match="damaged"):
            BuyerKeys.load(folder)


def test_header_digest_is_canonical():
    """The seller hashes the header as the buyer reads it back from JSON: key order and
    whitespace do not matter, every value does, and the check field is left out."""
    header = {"b": [1, 2.5, None], "a": {"y": "é", "x": True}, "check": {"slots": 16, "sha256": "0"}}
    reordered = json.loads(json.dumps(header, indent=3))
    assert np.array_equal(binding.header_rows(header), binding.header_rows(dict(reversed(reordered.items()))))
    assert np.array_equal(binding.header_rows(header), binding.header_rows(dict(header, check=None)))
    assert not np.array_equal(binding.header_rows(header), binding.header_rows(dict(header, b=[1, 2.5000001, None])))
    rows = binding.header_rows(header)
    assert rows.shape == (binding.CHECK_SLOTS, 2) and np.all(np.abs(rows) <= 0.5)
    seed = secrets.token_bytes(32)
    assert np.array_equal(binding.secret_rows(seed), binding.secret_rows(seed))
    assert not np.array_equal(binding.secret_rows(seed), binding.secret_rows(secrets.token_bytes(32)))
