"""The CKKS scorer: decrypted values equal plaintext values; policy and bindings enforced."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from helpers import synthetic_store

from tip_hf import SpecMismatchError, ValuationSpec, plaintext_values
from tip_hf.he import BuyerKeys, PolicyError, ReleasePolicy, decrypt_scores, encrypt_query, score_encrypted
from tip_hf.he.dp import MOMENT_SHARE
from tip_hf.he.params import COLUMNS, PACKED


@pytest.fixture(scope="module")
def keys():
    return BuyerKeys.generate()


def market(n: int, k: int, seed: int = 0):
    """Uneven corpora: sizes ~ 1 : 2 : 3 ... plus a corpus of a single example."""
    rng = np.random.default_rng(seed)
    sketches = rng.normal(size=(n, k)) * rng.uniform(0.2, 3.0, size=(n, 1))
    labels = np.array([f"c{min(int(x), 5)}" for x in rng.exponential(1.0, n)], dtype=object)
    labels[-1] = "single"
    sketches[labels == "c2"] += 0.3  # a corpus aligned with the query's direction below
    return sketches, labels


def plaintext(sketches, labels, q):
    values = sketches.astype(np.float32).astype(np.float64) @ q
    return {c: (values[labels == c].sum(), values[labels == c].mean()) for c in np.unique(labels)}, values


@pytest.mark.parametrize("k", [256, 1024, 4096])
def test_corpus_values_match_plaintext(tmp_path, keys, k):
    n = 8000 if k < 4096 else 2500
    sketches, labels = market(n, k, seed=k)
    store = synthetic_store(tmp_path / "s", sketches, labels)
    q = np.random.default_rng(1).normal(size=k) * 0.01 + 0.3 / k**0.5
    query = encrypt_query(q, keys, store.spec, fingerprint=store.fingerprint)
    result = score_encrypted(
        query.to_bytes(),
        store,
        keys.public.to_message().to_bytes(),
        progress=False,
    )
    table = decrypt_scores(result.to_bytes(), keys)
    expected, _ = plaintext(sketches, labels, q)
    largest = max(abs(s) for s, _ in expected.values())
    for row in table.rows:
        s, m = expected[row["corpus"]]
        assert abs(row["sum"] - s) <= 1e-6 * largest, (row, s)
        assert abs(row["mean"] - m) <= 1e-6 * largest / row["count"]  # mean = sum / count (one slot per corpus)
        assert row["count"] == int((labels == row["corpus"]).sum())
    ranking = [row["corpus"] for row in table.rows]
    assert ranking == sorted(expected, key=lambda c: -expected[c][0])
    reference = plaintext_values(q, store)  # the library's own plaintext reference agrees
    assert [r["corpus"] for r in reference.rows] == ranking
    assert np.allclose([r["sum"] for r in reference.rows], [expected[c][0] for c in ranking])
    assert "single" in ranking
    if k < 4096:  # one corpus holds more examples than a ciphertext has slots
        assert max(np.unique(labels, return_counts=True)[1]) > keys.public.params.slots


@pytest.mark.parametrize("layout", [COLUMNS, pytest.param(PACKED, marks=pytest.mark.slow)])  # packed: ~5 ms a row
def test_example_values_match_plaintext_across_blocks(tmp_path, keys, layout):
    k = 1024
    sketches, labels = market(9000, k, seed=3)  # > 2 blocks of 4096 slots, shards of 3000
    store = synthetic_store(tmp_path / "s", sketches, labels)
    q = np.random.default_rng(2).normal(size=k)
    query = encrypt_query(q, keys, store.spec, layout=layout)
    result = score_encrypted(
        query, store, keys.public, release="example", policy=ReleasePolicy(allow_example_release=True), progress=False
    )
    table = decrypt_scores(result, keys)
    _, values = plaintext(sketches, labels, q)
    assert table.values.shape == values.shape and table.corpus_labels == list(labels)
    assert np.abs(table.values - values).max() <= 1e-5 * np.abs(values).max()  # flooding: 2^-25 of a block's max
    assert np.corrcoef(table.values, values)[0, 1] > 0.99999
    assert np.array_equal(np.argsort(-table.values, kind="stable")[:100], np.argsort(-values, kind="stable")[:100])
    assert result.header["commitment"]["examples"] == 9000


def test_min_examples_withholds_small_corpora(tmp_path, keys):
    sketches, labels = market(400, 64)
    store = synthetic_store(tmp_path / "s", sketches, labels)
    policy = ReleasePolicy.conservative()
    result = score_encrypted(encrypt_query(np.ones(64), keys), store, keys.public, policy=policy, progress=False)
    table = decrypt_scores(result, keys)
    single = table["single"]
    assert not single["released"] and "sum" not in single
    assert table.as_dict()["c0"]["released"] and len(table) == len(store.corpora)
    assert "withheld" in str(table)


def test_policy_example_release_budget_and_dp(tmp_path, keys):
    sketches, labels = market(300, 64)
    store = synthetic_store(tmp_path / "s", sketches, labels)
    query = encrypt_query(np.ones(64), keys)
    with pytest.raises(PolicyError, match="per-example"):
        score_encrypted(query, store, keys.public, "example", ReleasePolicy.conservative(), progress=False)
    policy = ReleasePolicy(max_queries=2, ledger=str(tmp_path / "ledger.json"))
    for _ in range(2):
        score_encrypted(query, store, keys.public, policy=policy, buyer="acme", progress=False)
    with pytest.raises(PolicyError, match="budget"):
        score_encrypted(query, store, keys.public, policy=policy, buyer="acme", progress=False)
    score_encrypted(query, store, keys.public, policy=policy, buyer="other", progress=False)  # per buyer
    # DP by input perturbation: one noised sum per corpus version, whatever is asked; a new
    # version (here: the seller discards the stored noise) draws sigma = 2 * clip * m afresh (the
    # sum's share of the Gaussian precision is 1 - MOMENT_SHARE: the curvature scalar takes the rest)
    dp = ReleasePolicy(noise_multiplier=2.0, clip_norm=1.0, min_examples=1, allow_example_release=False)
    assert dp.version_epsilon() == pytest.approx(2.2541, rel=1e-3)  # dp-accounting, analytic Gaussian

    def sums() -> np.ndarray:
        table = decrypt_scores(score_encrypted(query, store, keys.public, policy=dp, progress=False), keys)
        assert table.dp["sigma"] == pytest.approx(4.0 / math.sqrt(1 - MOMENT_SHARE))
        assert table.dp["moment_sigma"] == pytest.approx(2.0 / math.sqrt(MOMENT_SHARE))  # clip^2 m / sqrt(share)
        assert table.dp["epsilon"] == pytest.approx(dp.version_epsilon())
        return np.array([r["sum"] for r in sorted(table.rows, key=lambda r: r["corpus"])])

    first = sums()
    assert np.allclose(sums(), first, atol=1e-3)  # the same version: the same noise
    versions = []
    for _ in range(12):
        shutil.rmtree(store.path / "dp")
        versions.append(sums())
    assert 0.6 < np.std(versions, axis=0).mean() / (4.0 * 8.0) < 1.4  # |q| = 8


def test_query_bound_to_spec_and_context(tmp_path, keys):
    sketches, labels = market(100, 32)
    store = synthetic_store(tmp_path / "s", sketches, labels)
    with pytest.raises(SpecMismatchError, match="fingerprint"):
        score_encrypted(encrypt_query(np.ones(32), keys, fingerprint="0" * 64), store, keys.public, progress=False)
    other_spec = ValuationSpec(targets=["synthetic"], proj_dim=32, seed=5)
    with pytest.raises(SpecMismatchError, match="spec"):
        score_encrypted(encrypt_query(np.ones(32), keys, other_spec), store, keys.public, progress=False)
    with pytest.raises(SpecMismatchError, match="dimension"):
        score_encrypted(encrypt_query(np.ones(16), keys), store, keys.public, progress=False)
    with pytest.raises(ValueError, match="proj_dim"):
        encrypt_query(np.ones(16), keys, store.spec)
    with pytest.raises(ValueError, match="real"):
        encrypt_query(np.ones(32) + 1j, keys)


def test_parallel_workers_give_the_same_values(tmp_path, keys):
    k = 64
    sketches, labels = market(9000, k, seed=5)
    store = synthetic_store(tmp_path / "s", sketches, labels)
    query = encrypt_query(np.random.default_rng(0).normal(size=k), keys, layout=COLUMNS)
    policy = ReleasePolicy(allow_example_release=True)
    one = decrypt_scores(score_encrypted(query, store, keys.public, "example", policy, progress=False), keys)
    two = decrypt_scores(score_encrypted(query, store, keys.public, "example", policy, workers=2, progress=False), keys)
    assert np.abs(one.values - two.values).max() < 1e-6 * np.abs(one.values).max()
    assert one.corpus_labels == two.corpus_labels


def test_commitment_verifies_delivered_data(tmp_path, keys):
    from tip_hf.he import VerificationError, verify_commitment

    sketches, labels = market(200, 16)
    store = synthetic_store(tmp_path / "s", sketches, labels)
    result = score_encrypted(encrypt_query(np.ones(16), keys), store, keys.public, progress=False)
    ids, codes = store.ids(), store.corpus_labels()
    delivered = {c: [i for i, lab in zip(ids, codes, strict=True) if lab == c] for c in ("c0", "c1")}
    opening = result.opening_for(["c0", "c1"])
    assert verify_commitment(result, delivered, opening) == {"c0": True, "c1": True}
    shuffled = {c: list(reversed(v)) for c, v in delivered.items()}  # a set: any row order
    assert verify_commitment(result, shuffled, opening) == {"c0": True, "c1": True}
    swapped = dict(delivered, c1=delivered["c1"][:-1] + delivered["c0"][:1])  # one example replaced
    assert verify_commitment(result.to_bytes(), swapped, opening)["c1"] is False
    with pytest.raises(VerificationError, match="not released"):
        verify_commitment(result, {"nope": []}, opening)
    with pytest.raises(VerificationError, match="no salt"):
        verify_commitment(result, {"c2": []}, opening)  # not opened: the seller keeps its salt


def test_duplicates_inside_a_corpus_count_once(tmp_path, keys):
    """Copies of one example cannot carry it past `min_examples` (its value would be released);
    values stay additive and the distinct count shows the padding."""
    from tip_hf import SketchStore

    rng = np.random.default_rng(3)
    unique = rng.normal(size=(12, 64))
    one = rng.normal(size=(1, 64))
    sketches = np.concatenate([unique, unique[:4], unique[:4], np.repeat(one, 15, axis=0)])
    labels = ["padded"] * 20 + ["one-example"] * 15
    ids = [bytes([i]) * 32 for i in range(12)] + [bytes([i]) * 32 for i in range(4)] * 2 + [b"\xff" * 32] * 15
    spec = ValuationSpec(targets=["synthetic"], proj_dim=64)
    store = SketchStore.from_arrays(tmp_path / "s", sketches, labels, spec, "f" * 64, ids=ids)
    q = rng.normal(size=64)
    table = decrypt_scores(
        score_encrypted(
            encrypt_query(q, keys), store, keys.public, policy=ReleasePolicy(min_examples=10), progress=False
        ),
        keys,
    )
    expected = float((sketches[:20] @ q).sum())
    precision = 1e-6 * np.linalg.norm(sketches[:20].sum(0)) * np.linalg.norm(q)  # flooding: 2^-25 of |sum||q|
    assert table["padded"]["count"] == 20 and table["padded"]["distinct"] == 12
    assert table["padded"]["sum"] == pytest.approx(expected, abs=precision)
    assert table["padded"]["mean"] == pytest.approx(expected / 20, abs=precision / 20)
    assert not table["one-example"]["released"] and "sum" not in table["one-example"]
    reference = plaintext_values(q, store)
    assert reference["padded"]["sum"] == pytest.approx(expected) and reference["one-example"]["distinct"] == 1
