"""`accelerate launch --multi_gpu --num_processes 2` (two gloo processes on a CPU machine; note
that `--cpu` would silently run one) gives the same buyer bundle as one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tip_hf.bundle import load_bundle

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS / "scripts" / "train_with_callback.py"


@pytest.mark.slow
def test_two_processes_give_the_one_process_bundle(tmp_path):
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
        cwd=TESTS,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(SCRIPT),
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=TESTS,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("world=2 examples=32") == 2  # really two processes, F summed over both
    a, b = load_bundle(tmp_path / "one" / "bundle"), load_bundle(tmp_path / "two" / "bundle")
    assert a.fingerprint == b.fingerprint and a.summary["n_examples"] == b.summary["n_examples"] == 32
    torch.testing.assert_close(b.curvature, a.curvature, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.query, a.query, rtol=0, atol=1e-5)
