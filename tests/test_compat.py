"""Artifacts written by the previous release (tests/fixtures/release-0.1, made by
tests/fixtures/make_release_0_1.py with that release's code) still load, give the same
sketches and ids, or are refused with a one-line version message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from tip_hf import SketchStore, sketch_dataset
from tip_hf.bundle import load_bundle
from tip_hf.he import BuyerKeys, MessageError, score_encrypted

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD = FIXTURES / "release-0.1"


def maker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_release_0_1", FIXTURES / "make_release_0_1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_old_store_loads_and_matches_this_release(tmp_path):
    m = maker()
    old = SketchStore(OLD / "store", spec=m.SPEC, model=m.model())
    new = sketch_dataset(m.model(), Dataset.from_list(m.rows()), m.SPEC, tmp_path / "new", corpus_column="corpus",
                         shard_size=8, progress=False)  # fmt: skip
    assert old.complete and old.ids() == new.ids() and old.corpus_labels() == new.corpus_labels()
    torch.testing.assert_close(old.sketches(), new.sketches(), rtol=1e-6, atol=1e-7)
    shutil.copytree(OLD / "store", tmp_path / "resumed")  # resuming an old store: nothing to redo, nothing changed
    again = sketch_dataset(m.model(), Dataset.from_list(m.rows()), m.SPEC, tmp_path / "resumed",
                           corpus_column="corpus", shard_size=8, progress=False)  # fmt: skip
    assert again.ids() == old.ids()


def test_old_bundle_loads():
    m = maker()
    bundle = load_bundle(OLD / "bundle", fingerprint=m.SPEC.fingerprint(m.model()))
    torch.testing.assert_close(bundle.query, torch.linspace(-1, 1, 4, dtype=torch.float64))
    assert bundle.spec == m.SPEC and bundle.curvature.shape == (4, 4)


def test_old_query_is_refused_with_a_version_message(tmp_path):
    keys = BuyerKeys.generate("n8192")
    with pytest.raises(MessageError, match=r"layout 'complex-pairs/2'.*new query with this tip_hf release") as err:
        score_encrypted(OLD / "query.tip", OLD / "store", keys.public, progress=False)
    assert "\n" not in str(err.value)


def test_bundles_carry_a_format_and_a_foreign_one_is_refused(tmp_path):
    import json

    from tip_hf.bundle import BUNDLE_FORMAT, BundleError

    shutil.copytree(OLD / "bundle", tmp_path / "b")
    head = json.loads((tmp_path / "b" / "spec.json").read_text())
    assert "format" not in head  # release 0.1: no tag, read as tip_hf.bundle/1 (test_old_bundle_loads)
    bundle = load_bundle(tmp_path / "b")
    from tip_hf.bundle import write_bundle

    write_bundle(tmp_path / "new", bundle)
    assert json.loads((tmp_path / "new" / "spec.json").read_text())["format"] == BUNDLE_FORMAT
    head.update(format="tip_hf.bundle/9", tip_hf_version="9.0")
    (tmp_path / "b" / "spec.json").write_text(json.dumps(head))
    with pytest.raises(BundleError, match=r"format 'tip_hf.bundle/9' \(written by tip_hf 9.0\).*Install the tip_hf"):
        load_bundle(tmp_path / "b")
