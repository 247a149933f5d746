"""The quickstart runs end to end (real MiniLM, real CKKS) and ranks the corpora sensibly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import minilm_dir

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
