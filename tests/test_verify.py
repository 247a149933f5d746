"""A cheating seller against binding verification, and a curious buyer against commitments.

Finding 4: `tip verify` hashed ids only, so a seller could score valuable sketches under junk
ids and deliver the junk; ids came from truncated tokens, so text past `max_length` and case
or accent edits under an uncased tokenizer passed. Finding 5: unsalted per-corpus digests
were published even for withheld corpora and fell to dictionary search."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
from datasets import Dataset
from helpers import make_bert, minilm_dir

from tip_hf import SketchStore, ValuationSpec, plaintext_values, sketch_dataset
from tip_hf.data import example_ids_by_corpus
from tip_hf.dataset import text_example_id
from tip_hf.he import (
    BuyerKeys,
    ReleasePolicy,
    decrypt_scores,
    encrypt_query,
    score_encrypted,
    verify_commitment,
    verify_values,
)
from tip_hf.he.scoring import commitment_digest

SPEC = ValuationSpec(
    targets=["classifier", "bert.encoder.layer.1.output.dense"], proj_dim=32, task="sequence_classification"
)


def rows(n: int, seed: int, vocab: int = 97) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset.from_list(
        [
            {"input_ids": [int(t) for t in rng.integers(5, vocab, size=12)], "label": int(rng.integers(0, 2))}
            for _ in range(n)
        ]
    )


@pytest.fixture(scope="module")
def keys():
    return BuyerKeys.generate()


def test_substituted_sketches_ids_or_data_fail_verification(tmp_path, keys):
    model = make_bert(labels=2)
    gold, junk = rows(20, 0), rows(20, 1)
    honest = sketch_dataset(model, gold, SPEC, tmp_path / "gold", corpus="gold", progress=False)
    junk_store = sketch_dataset(model, junk, SPEC, tmp_path / "junk", corpus="gold", progress=False)
    q = honest.sketches().double().sum(0).numpy()  # a buyer whose eval gradient the gold data serves
    policy = ReleasePolicy(min_examples=10, allow_example_release=False)

    def check(store: SketchStore, delivered: Dataset, delivered_store: SketchStore) -> tuple[bool, bool]:
        result = score_encrypted(encrypt_query(q, keys), store, keys.public, policy=policy, progress=False)
        table = decrypt_scores(result, keys)
        ids = example_ids_by_corpus(delivered, SPEC, corpus="gold")
        committed = verify_commitment(result, ids, result.opening_for(["gold"]))["gold"]
        recomputed = {"gold": float(plaintext_values(q, delivered_store, clip_norm=table.clip_norm)["gold"]["sum"])}
        return committed, bool(verify_values(table, recomputed)["gold"]["ok"])

    assert check(honest, gold, honest) == (True, True)
    # valuable sketches scored under the junk's ids; the junk is delivered: ids pass, values do not
    cheat = SketchStore.from_arrays(
        tmp_path / "cheat", honest.sketches(), ["gold"] * 20, SPEC, honest.fingerprint,
        ids=[bytes.fromhex(i) for i in junk_store.ids()],
    )  # fmt: skip
    assert check(cheat, junk, junk_store) == (True, False)
    # honest sketches and ids, but other data delivered: the ids fail
    assert check(honest, junk, junk_store)[0] is False
    # under the default DP policy an honest delivery still passes (the tolerance is the stated noise)
    result = score_encrypted(
        encrypt_query(q, keys), honest, keys.public, policy=ReleasePolicy.conservative(), progress=False
    )
    table = decrypt_scores(result, keys)
    recomputed = {"gold": float(plaintext_values(q, honest, clip_norm=table.clip_norm)["gold"]["sum"])}
    assert verify_values(table, recomputed)["gold"]["ok"]


def test_ids_hash_the_raw_example_not_truncated_or_normalised_tokens():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())  # uncased, strips accents
    spec = ValuationSpec(targets=["classifier"], proj_dim=8, task="sequence_classification")
    text = "the film was a delight from start to finish and i would see it again tomorrow"
    variants = {
        "past max_length": text.replace("tomorrow", "never"),
        "case": text.replace("the film", "The Film"),
        "accent": text.replace("delight", "délight"),
    }
    for what, edited in variants.items():
        same_tokens = tokenizer(text)["input_ids"][:8] == tokenizer(edited)["input_ids"][:8]
        assert same_tokens, what  # what the old token-based ids (after truncation to 8) could not see
        ids = [
            example_ids_by_corpus(Dataset.from_list([{"text": t, "label": 1}]), spec, tokenizer=tokenizer, max_length=8)
            for t in (text, edited)
        ]
        assert ids[0] != ids[1], what
    assert text_example_id(text, 1) != text_example_id(text, 0)  # the label is part of the example


def test_dictionary_search_on_commitments_fails(tmp_path, keys):
    dictionary = [f"patient {i} reports symptom {i % 7}" for i in range(300)]
    secret_pair = [dictionary[17], dictionary[230]]
    hidden = dictionary[99]  # a one-example corpus: withheld by the policy
    texts = [*secret_pair, hidden]
    ids = [text_example_id(t, None) for t in texts]
    sketches = np.random.default_rng(0).normal(size=(3, 8))
    spec = ValuationSpec(targets=["synthetic"], proj_dim=8)
    store = SketchStore.from_arrays(tmp_path / "s", sketches, ["pair", "pair", "solo"], spec, "f" * 64, ids=ids)
    result = score_encrypted(
        encrypt_query(np.ones(8), keys), store, keys.public, policy=ReleasePolicy(min_examples=2), progress=False
    )
    entries = {c["name"]: c for c in result.header["corpora"]}
    assert entries["solo"] == {"name": "solo", "released": False}  # nothing published for it
    published = entries["pair"]["commitment"]
    candidates = [text_example_id(t, None) for t in dictionary]
    for a, b in itertools.combinations(candidates, 2):  # 44,850 guesses, unsalted and in every form
        assert published not in (
            commitment_digest(b"", [a, b]),
            hashlib.sha256(a + b).hexdigest(),
            hashlib.sha256(b + a).hexdigest(),
        )
    opening = result.opening_for(["pair"])
    assert verify_commitment(result, {"pair": ids[:2]}, opening) == {"pair": True}
    with pytest.raises(Exception, match="No commitment to open"):
        result.opening_for(["solo"])


def test_delivery_diff_names_missing_extra_and_changed_rows(tmp_path):
    """The opening's id list is checked against the commitment; then the diff is exact."""
    import torch

    from tip_hf.he import BuyerKeys, ReleasePolicy, VerificationError, delivery_diff, encrypt_query, score_encrypted

    spec = ValuationSpec(targets=["x"], proj_dim=8)
    ids = [bytes([i]) * 32 for i in range(12)]
    store = SketchStore.from_arrays(tmp_path / "s", torch.randn(12, 8), ["a"] * 12, spec, "f" * 64, ids=ids)
    keys = BuyerKeys.generate("n8192")
    result = score_encrypted(encrypt_query(torch.randn(8), keys, spec), store, keys.public, "corpus",
                             ReleasePolicy(min_examples=1), progress=False)  # fmt: skip
    opening = result.opening_for(["a"])
    delivered = [ids[i] for i in (3, 1, 0, 2, 4, 5, 6, 7, 8, 9)] + [b"\x77" * 32]  # 10, 11 missing; one extra
    diff = delivery_diff(result, {"a": delivered}, opening)
    assert diff == {"a": {"missing": 2, "extra": [10]}}
    assert delivery_diff(result, {"a": list(reversed(ids))}, opening) == {"a": {"missing": 0, "extra": []}}
    forged = {**opening, "ids": {"a": [i.hex() for i in delivered]}}  # a list other than the scored one
    with pytest.raises(VerificationError, match="does not match the seller's commitment"):
        delivery_diff(result, {"a": delivered}, forged)
