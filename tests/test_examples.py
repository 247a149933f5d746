"""The quickstart runs end to end (real MiniLM, real CKKS) and ranks the corpora sensibly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import minilm_dir

pytestmark = pytest.mark.slow  # minutes: the quickstart and a small `tip demo`

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_ranks_clean_data_first_and_flipped_labels_last(tmp_path):
    minilm_dir()  # skip with a clear reason if the offline model is not installed
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=True,
    ).stdout
    ranked = [line.split()[1] for line in out.splitlines() if line.strip()[:1].isdigit() and "  " in line]
    assert ranked[:3] == ["in-domain", "off-topic", "flipped-labels"], out
    assert (tmp_path / "scores.tip").is_file() and (tmp_path / "buyer" / "secret.key").is_file()


def test_tip_demo_small(tmp_path, capsys):
    """`tip demo`'s pipeline end to end on a few examples per corpus: real Trainer + callback,
    CKKS, realized fine-tuning; files written, encrypted == plaintext; step headings with timings
    on stdout as it goes, and no raw Trainer metrics dict."""
    import json
    import random

    import torch
    import transformers

    from tip_hf.demo import DemoConfig, run_demo

    rng_before, python_before = torch.get_rng_state(), random.getstate()
    verbosity_before = transformers.logging.get_verbosity()
    config = DemoConfig(
        out_dir=str(tmp_path / "demo"),
        per_corpus=12,
        n_train=32,
        n_eval=24,
        proj_dim=256,
        realized_epochs=1,
        realized_repeats=1,
        buyer_epochs=1,
        progress=True,
    )
    result = run_demo(config)
    printed = capsys.readouterr()
    headings = [line for line in printed.out.splitlines() if line.startswith("[")]
    assert [h[:5] for h in headings] == [f"[{i}/6]" for i in range(1, 7)], printed.out
    assert "fine-tuning MiniLM on 32 movie reviews (1 epoch)" in headings[0]
    assert printed.out.count("done in ") == 6
    assert "realized check 8/8: sms-spam-labels ... drop " in printed.out
    assert "train_runtime" not in printed.out + printed.err  # the Trainer's metrics dict is not printed
    assert len(result.rows) == 8 and -1.0 <= result.spearman <= 1.0
    assert result.dp is not None and result.dp["epsilon"] == pytest.approx(2.0, rel=1e-3)  # the seller's default
    # released values: scale x (the clipped first-order sum plus DP noise of the stated size); the
    # scale itself comes from DP-noised moments, so the first-order parts are compared
    first_order = [r["plaintext_value"] / r["plaintext_scale"] for r in result.rows]
    for row, plain in zip(result.rows, first_order, strict=True):
        tolerance = 6 * row["noise_std"] / row["scale"] + 1e-6 * max(abs(v) for v in first_order)
        assert abs(row["value"] / row["scale"] - plain) <= tolerance
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["spearman"] == result.spearman and saved["bundle_summary"]["n_examples"] == 32
    assert (tmp_path / "demo" / "valuation.png").stat().st_size > 10_000
    assert "Spearman" in (tmp_path / "demo" / "report.md").read_text()
    # run_demo seeds and quietens only within its own scope: the caller's process is as it was
    assert torch.equal(torch.get_rng_state(), rng_before) and random.getstate() == python_before
    assert transformers.logging.get_verbosity() == verbosity_before


def test_demo_scope_restores_process_state():
    """What run_demo runs in: seeds, log level and progress bars set inside are undone after."""
    import random

    import datasets
    import numpy as np
    import torch
    import transformers

    from tip_hf.demo.training import process_state_restored

    def seed_all(seed: int) -> None:
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)

    def draws() -> tuple[list[float], float, float]:
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    verbosity, bars = transformers.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    try:
        transformers.logging.set_verbosity_warning()
        datasets.enable_progress_bars()
        seed_all(123)
        expected = draws()
        seed_all(123)
        with process_state_restored():
            assert transformers.logging.get_verbosity() == transformers.logging.ERROR
            assert not datasets.is_progress_bar_enabled()
            seed_all(0)
            draws()
        assert transformers.logging.get_verbosity() == transformers.logging.WARNING
        assert datasets.is_progress_bar_enabled()
        assert draws() == expected
    finally:  # this test's own changes, undone for the tests after it
        transformers.logging.set_verbosity(verbosity)
        (datasets.enable_progress_bars if bars else datasets.disable_progress_bars)()
