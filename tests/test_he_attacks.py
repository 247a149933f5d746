"""Attacks on the CKKS protocol, each shown to fail (or its leak bounded, where it is inherent).

The buyer holds the secret key and decodes *every* slot, real and imaginary, of every
ciphertext the seller returns (tenseal.sealapi)."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
import tenseal.sealapi as seal
from conftest import synthetic_store

from tip_hf.he import (
    BuyerKeys,
    CKKSParams,
    Message,
    MessageError,
    PublicContext,
    ReleasePolicy,
    decrypt_scores,
    encrypt_query,
    score_encrypted,
)
from tip_hf.he import seal as S

K = 64


@pytest.fixture(scope="module")
def keys():
    return BuyerKeys.generate()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    sketches = rng.normal(size=(6000, K))  # 6000: correlations of pure noise have std 0.013
    labels = np.array(["big"] * 3000 + ["mid"] * 2980 + ["tiny"] * 20, dtype=object)
    labels[-3:] = "trio"  # below min_examples: withheld
    return synthetic_store(tmp_path_factory.mktemp("s") / "s", sketches, labels), sketches.astype(np.float32), labels


def decode_all(result: Message, keys: BuyerKeys) -> list[np.ndarray]:
    """Every slot of every returned ciphertext, as complex numbers (the attacker's view)."""
    context = keys.public.context
    decryptor, encoder = seal.Decryptor(context, keys.secret_key), seal.CKKSEncoder(context)
    out = []
    for blob in result.blobs:
        plain = seal.Plaintext()
        decryptor.decrypt(S.load(seal.Ciphertext, context, blob), plain)
        out.append(np.asarray(encoder.decode_complex(plain)))
    return out


def forge_query(keys: BuyerKeys, slot_values: list[complex], template) -> Message:
    """A query message whose ciphertext t encrypts ``slot_values[t]`` in every slot."""
    context = keys.public.context
    encoder, encryptor = seal.CKKSEncoder(context), seal.Encryptor(context, keys.secret_key)
    blobs = []
    for value in slot_values:
        plain = seal.Plaintext()
        encoder.encode(complex(value), 2.0**keys.public.params.scale_bits, plain)
        blobs.append(S.to_bytes(encryptor.encrypt_symmetric(plain)))
    header = dict(template.message.header, query_id=secrets.token_hex(16))
    keys.remember_query(header["query_id"], 0)
    return Message("tip_hf.query", header, blobs)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_unreleased_slots_carry_nothing(keys, store):
    st, sketches, _labels = store
    q = np.random.default_rng(1).normal(size=K)
    policy = ReleasePolicy.conservative()  # "trio" (3 examples) is withheld
    result = score_encrypted(encrypt_query(q, keys), st, keys.public, policy=policy, progress=False)
    (slots,) = decode_all(result, keys)
    header = result.header
    used = {c["sum_slot"] for c in header["corpora"] if c["released"]} | {
        c["mean_slot"] for c in header["corpora"] if c["released"]
    }
    rest = np.array([i for i in range(len(slots)) if i not in used])
    sigma = 2.0 ** header["flood_bits"]
    # unreleased slots, and every imaginary part, are flood noise only
    assert np.abs(slots[rest]).max() < 8 * sigma
    assert np.abs(slots.imag).max() < 8 * sigma
    assert abs(slots[rest].real.std() / sigma - 1) < 0.1
    withheld = next(c for c in header["corpora"] if c["name"] == "trio")
    assert abs(slots[withheld["sum_slot"]]) < 8 * sigma
    # ... and nothing in them correlates with any coordinate of the seller's data
    n = min(len(rest), len(sketches))
    correlations = np.array([corr(slots[rest][:n].real, sketches[:n, j]) for j in range(K)])
    assert np.abs(correlations).mean() < 0.05 and np.abs(correlations).max() < 4.5 / n**0.5


def test_suffix_sum_reconstruction_fails(keys, store):
    """TenSEAL's `dot` leaves partial sums in the slots, so slot differences give the
    seller's vector back. Here slot differences are noise."""
    st, sketches, _labels = store
    q = np.ones(K)
    result = score_encrypted(
        encrypt_query(q, keys),
        st,
        keys.public,
        release="example",
        policy=ReleasePolicy(allow_example_release=True),
        progress=False,
    )
    last = decode_all(result, keys)[-1]
    tail = last[result.header["blocks"][-1]["count"] :].real  # slots past the last example
    assert np.abs(tail).max() < 8 * 2.0 ** result.header["flood_bits"]
    # suffix-sum reconstruction of example 0, as from a `dot` result: x_t = slot_t - slot_{t+1}
    blocks = result.header["blocks"]
    first = decode_all(result, keys)[0].real * 2.0 ** blocks[0]["exponent"]
    recon = first[:K] - first[1 : K + 1]
    target = q * sketches[0].astype(np.float64)
    assert np.linalg.norm(recon - target) / np.linalg.norm(target) > 0.9  # `dot` would give 0
    # the released values are exactly <q, s_i> (per-example release was allowed) ...
    values = decrypt_scores(result, keys).values
    assert np.allclose(values, sketches.astype(np.float64) @ q, atol=1e-5)
    # ... and no slot holds a single coordinate or a partial sum of one example's sketch
    partial = np.cumsum(sketches[0].astype(np.float64))
    scaled = decode_all(result, keys)[0].real * 2.0 ** blocks[0]["exponent"]
    for target in (sketches[0, 0], partial[K // 2], sketches[0, -1]):
        assert np.min(np.abs(scaled[1:] - target)) > 1e-7 or abs(target) < 1e-6


def test_imaginary_channel_is_closed(keys, store):
    """Naive layout: a query q + i e_j makes the imaginary part of every slot read out
    coordinate j of each example. Here the conjugation leaves imaginary parts that are pure
    flood noise, and the real part is exactly what an honest real query would release."""
    st, sketches, _labels = store
    q = np.random.default_rng(2).normal(size=K) / K**0.5
    honest = encrypt_query(q, keys)
    j = 10
    pairs = [complex(q[2 * t], -q[2 * t + 1]) for t in range(K // 2)]
    pairs[j // 2] += 1j * 0.5  # the attack: an imaginary component on the pair holding coordinate j
    forged = forge_query(keys, pairs, honest)
    result = score_encrypted(
        forged, st, keys.public, release="example", policy=ReleasePolicy(allow_example_release=True), progress=False
    )
    slots = np.concatenate(
        [s[: b["count"]] for s, b in zip(decode_all(result, keys), result.header["blocks"], strict=True)]
    )
    assert abs(corr(slots.imag, sketches[:, j])) < 0.05
    assert np.abs(slots.imag).max() < 8 * 2.0 ** result.header["flood_bits"]
    # What the buyer gets is the value of an ordinary real query q' (here q' = q - 0.5 e_11):
    # every complex query is one real query, so the policy's budget accounts for it.
    q_equiv = q.copy()
    q_equiv[j + 1] -= 0.5
    scale = np.concatenate([np.full(b["count"], 2.0 ** b["exponent"]) for b in result.header["blocks"]])
    assert np.allclose(slots.real * scale, sketches.astype(np.float64) @ q_equiv, atol=1e-5)


def test_one_hot_and_wide_range_queries_under_default_policy(keys, store):
    """Corpus-level release (conservative policy): a one-hot query reveals one coordinate of each
    released corpus *sum*; k of them reveal the sums. Individual sketches stay hidden, and
    packing several coordinates at scales 1, 2^25, 2^50 into one query does not read them
    out separately: the small ones sink below the flood noise."""
    st, sketches, labels = store
    j = 3
    policy = ReleasePolicy.conservative()
    one_hot = score_encrypted(encrypt_query(np.eye(K)[j], keys), st, keys.public, policy=policy, progress=False)
    table = decrypt_scores(one_hot, keys)
    by_name = {r["corpus"]: r for r in table.rows}
    big = sketches[labels == "big"].astype(np.float64)
    assert by_name["big"]["sum"] == pytest.approx(big[:, j].sum(), abs=1e-4)  # what leaks: a sum coordinate
    assert not by_name["trio"]["released"]
    # best per-example reconstruction from the sums (the mean) is far from every example
    recovered = np.array([by_name["big"]["mean"]])
    errors = np.abs(big[:, j] - recovered) / np.abs(big[:, j]).mean()
    assert np.median(errors) > 0.5
    # wide dynamic range
    q = np.zeros(K)
    q[[0, 1, 2]] = [2.0**50, 2.0**25, 1.0]
    runs = [
        decrypt_scores(score_encrypted(encrypt_query(q, keys), st, keys.public, progress=False), keys) for _ in range(2)
    ]
    a, b = ({r["corpus"]: r["sum"] for r in t.rows if r["released"]} for t in runs)
    noise = np.std([a[c] - b[c] for c in a]) / 2**0.5
    small = sketches[labels == "big"][:, 2].astype(np.float64).sum()
    assert noise > 1e3 * abs(small)  # the coordinate at scale 1 is buried under noise


def test_results_are_flooded_and_rerandomised(tmp_path, keys, store):
    st, _sketches, _labels = store
    query = encrypt_query(np.ones(K), keys)
    first = score_encrypted(query, st, keys.public, progress=False)
    second = score_encrypted(query, st, keys.public, progress=False)
    assert first.blobs[0] != second.blobs[0]  # fresh encryption of zero added each time
    (a,), (b,) = decode_all(first, keys), decode_all(second, keys)
    sigma = 2.0 ** first.header["flood_bits"]
    assert abs(np.std(a.real - b.real) / (2**0.5 * sigma) - 1) < 0.1
    # the scheme's own noise, measured with flooding switched off, is >= 2^10 smaller
    quiet = CKKSParams(8192, (60, 55, 60), scale_bits=55, flood_bits=-80)
    quiet_keys = BuyerKeys.generate(quiet)
    q_msg = encrypt_query(np.ones(K), quiet_keys)
    (c,), (d,) = (
        decode_all(score_encrypted(q_msg, st, quiet_keys.public, progress=False), quiet_keys) for _ in range(2)
    )
    inherent = np.std(c.real - d.real) / 2**0.5
    assert sigma / inherent >= 2**10, np.log2(sigma / inherent)


def test_no_public_artifact_contains_the_secret_key(tmp_path, keys, store):
    st, _, _ = store
    keys.save(tmp_path / "buyer")
    assert (tmp_path / "buyer" / "secret.key").stat().st_mode & 0o777 == 0o600
    secret = S.to_bytes(keys.secret_key)
    query = encrypt_query(np.ones(K), keys)
    result = score_encrypted(query, st, keys.public, progress=False)
    public_bytes = [(tmp_path / "buyer" / "public_context.tip").read_bytes(), query.to_bytes(), result.to_bytes()]
    windows = {secret[i : i + 16] for i in range(16, len(secret) - 16, 8)}  # skip SEAL's header
    for blob in public_bytes:
        assert not any(w in blob for w in windows)
    assert len(PublicContext.load(tmp_path / "buyer" / "public_context.tip").blobs) == 3  # parms, pk, galois
    loaded = BuyerKeys.load(tmp_path / "buyer")
    assert loaded.context_hash == keys.context_hash


def test_weak_parameters_are_refused():
    with pytest.raises(ValueError, match="less than 128-bit security"):
        CKKSParams(8192, (60, 60, 60, 60), scale_bits=60, flood_bits=-30)
    with pytest.raises(ValueError, match="128-bit"):
        CKKSParams(4096, (60, 40, 60), scale_bits=40, flood_bits=-30)


def test_bad_messages_give_clear_errors(tmp_path, keys, store):
    st, _, _ = store
    query = encrypt_query(np.ones(K), keys).to_bytes()
    ctx = keys.public.to_message().to_bytes()
    with pytest.raises(MessageError, match=r"truncated|checksum"):
        score_encrypted(query[: len(query) // 2], st, ctx, progress=False)
    tampered = bytearray(query)
    tampered[len(tampered) // 3] ^= 0x40
    with pytest.raises(MessageError, match="checksum"):
        score_encrypted(bytes(tampered), st, ctx, progress=False)
    with pytest.raises(MessageError, match="not a"):
        score_encrypted(b"hello world" * 10, st, ctx, progress=False)
    with pytest.raises(MessageError, match=r"Expected a 'tip_hf\.query'"):
        score_encrypted(ctx, st, ctx, progress=False)
    other = BuyerKeys.generate()
    with pytest.raises(MessageError, match="different public context"):
        score_encrypted(query, st, other.public, progress=False)
    result = score_encrypted(query, st, ctx, progress=False)
    with pytest.raises(MessageError, match="wrong keys"):
        decrypt_scores(result, other)
    # a query ciphertext at the wrong level / with a foreign scale is refused before use
    honest = encrypt_query(np.ones(K), keys)
    context = keys.public.context
    evaluator = seal.Evaluator(context)
    ct = S.load(seal.Ciphertext, context, honest.message.blobs[0])
    evaluator.mod_switch_to_next_inplace(ct)
    bad = Message("tip_hf.query", honest.message.header, [S.to_bytes(ct), *honest.message.blobs[1:]])
    with pytest.raises(MessageError, match="malformed"):
        score_encrypted(bad, st, keys.public, progress=False)
    ct = S.load(seal.Ciphertext, context, honest.message.blobs[0])
    ct.scale = 2.0**20
    bad = Message("tip_hf.query", honest.message.header, [S.to_bytes(ct), *honest.message.blobs[1:]])
    with pytest.raises(MessageError, match="malformed"):
        score_encrypted(bad, st, keys.public, progress=False)
    with pytest.raises(MessageError, match="declares k"):
        score_encrypted(
            Message("tip_hf.query", honest.message.header, honest.message.blobs[:-1]), st, keys.public, progress=False
        )


def test_weak_explicit_parameters_are_refused_by_generate():
    with pytest.raises(ValueError, match="128-bit"):
        BuyerKeys.generate(poly_modulus_degree=4096, coeff_mod_bit_sizes=[60, 40, 60])
    keys = BuyerKeys.generate(poly_modulus_degree=16384)
    assert keys.public_context.params.slots == 8192
