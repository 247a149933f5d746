"""`load_corpus`: every local form a seller's data comes in, and the Hub path's offline error."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict

from tip_hf.data import DataSourceError, load_corpus

ROWS = [{"text": f"sentence {i}", "label": i % 2, "corpus": "a" if i < 3 else "b"} for i in range(5)]


def test_jsonl_csv_parquet_and_globs(tmp_path):
    with open(tmp_path / "d.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in ROWS)
    Dataset.from_list(ROWS).to_csv(tmp_path / "d.csv")
    Dataset.from_list(ROWS).to_parquet(tmp_path / "p1.parquet")
    Dataset.from_list(ROWS).to_parquet(tmp_path / "p2.parquet")
    for source in (tmp_path / "d.jsonl", tmp_path / "d.csv", tmp_path / "p1.parquet"):
        data = load_corpus(source)
        assert data["text"] == [r["text"] for r in ROWS] and data["corpus"] == [r["corpus"] for r in ROWS]
    assert len(load_corpus(str(tmp_path / "p*.parquet"))) == 10
    streamed = load_corpus(tmp_path / "d.jsonl", streaming=True)
    assert [r["text"] for r in streamed] == [r["text"] for r in ROWS]


def test_save_to_disk_dirs_and_splits(tmp_path):
    Dataset.from_list(ROWS).save_to_disk(tmp_path / "one")
    assert load_corpus(tmp_path / "one")["label"] == [r["label"] for r in ROWS]
    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:2])}).save_to_disk(tmp_path / "dd")
    assert len(load_corpus(tmp_path / "dd", split="test")) == 2
    with pytest.raises(DataSourceError, match="splits"):
        load_corpus(tmp_path / "dd", split="validation")


def test_folder_of_txt_files_is_one_corpus_per_file(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "austen.txt").write_text(
        "It is a truth\nuniversally acknowledged.\n\nSecond paragraph.\n\n\n"
    )
    (tmp_path / "books" / "melville.txt").write_text("Call me Ishmael.\r\n\r\nSome years ago.")
    data = load_corpus(tmp_path / "books")
    assert data["corpus"] == ["austen", "austen", "melville", "melville"]
    assert data["text"][0] == "It is a truth universally acknowledged."


def test_bad_sources_are_clear(tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(DataSourceError, match="empty"):
        load_corpus(tmp_path / "empty.csv")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataSourceError, match="empty"):
        load_corpus(tmp_path / "empty.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(DataSourceError, match="Could not read"):
        load_corpus(tmp_path / "broken.jsonl")
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(DataSourceError, match="unsupported file type"):
        load_corpus(tmp_path / "notes.docx")
    with pytest.raises(DataSourceError, match="not a dataset"):
        load_corpus(tmp_path / "missing-dir/")
    with pytest.raises(DataSourceError, match="download it once") as err:
        load_corpus("no-such-user/no-such-corpus")  # HF_HUB_OFFLINE=1 in the test environment
    assert "no-such-user/no-such-corpus" in str(err.value)
