"""`accelerate launch --multi_gpu --num_processes 2` (two gloo processes on a CPU machine; note
that `--cpu` would silently run one) gives what one process gives: the buyer bundle, the
sketch store (map-style and streaming, and after a killed rank is resumed), encrypted scores."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import accelerate_command

from tip_hf.bundle import load_bundle

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS / "scripts" / "train_with_callback.py"
SKETCH = TESTS / "scripts" / "sketch_distributed.py"
SCORE = TESTS / "scripts" / "score_distributed.py"


def launch(
    processes: int, script: Path, *args: str, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`accelerate launch --multi_gpu --num_processes N script` (gloo on a CPU machine), or
    plain python for 1."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    command = (
        [sys.executable, str(script), *args] if processes == 1 else accelerate_command(processes, str(script), *args)
    )
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=TESTS, timeout=600)


@pytest.mark.slow
def test_two_processes_give_the_one_process_bundle(tmp_path):
    one = launch(1, SCRIPT, str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(2, SCRIPT, str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("world=2 examples=32") == 2  # really two processes, F summed over both
    a, b = load_bundle(tmp_path / "one" / "bundle"), load_bundle(tmp_path / "two" / "bundle")
    assert a.fingerprint == b.fingerprint and a.summary["n_examples"] == b.summary["n_examples"] == 32
    torch.testing.assert_close(b.curvature, a.curvature, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.query, a.query, rtol=0, atol=1e-5)


def shards_per_rank(stdout: str) -> dict[int, int]:
    """``{rank: shards it sketched}`` from the script's report lines (ranks' prints can share a line)."""
    import re

    return {int(r): int(n) for r, n in re.findall(r"rank=(\d+) world=2 sketched_shards=(\d+)", stdout)}


def same_store(a, b) -> None:
    assert b.complete and a.ids() == b.ids()  # same examples, same order: none lost, none repeated
    assert a.corpus_labels() == b.corpus_labels() and a.corpora == b.corpora
    torch.testing.assert_close(b.sketches(), a.sketches(), rtol=1e-5, atol=1e-6)
    b.verify()


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
def test_two_processes_sketch_the_one_process_store(tmp_path, streaming):
    from tip_hf import SketchStore

    flag = ["--streaming"] if streaming else []
    one = launch(1, SKETCH, str(tmp_path / "one"), *flag)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(2, SKETCH, str(tmp_path / "two"), *flag)
    assert two.returncode == 0, two.stderr[-3000:]
    # both ranks ran, each sketched only its own shards (7 shards of 8 rows: 4 + 3)
    assert sorted(shards_per_rank(two.stdout).values()) == [3, 4]
    same_store(SketchStore(tmp_path / "one"), SketchStore(tmp_path / "two"))
    assert not list((tmp_path / "two").glob(".rank-*"))  # per-rank records merged away


@pytest.mark.slow
def test_killed_rank_then_resume_redoes_only_missing_shards(tmp_path):
    import json

    from tip_hf import SketchStore

    one = launch(1, SKETCH, str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    crashed = launch(
        2, SKETCH, str(tmp_path / "two"), env_extra={"TIP_TEST_CRASH_RANK": "1", "TIP_TEST_CRASH_AFTER": "1"}
    )
    assert crashed.returncode != 0, crashed.stdout  # rank 1 died after its first shard; the launcher stopped the job
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert not manifest["complete"]
    done = sum(len(json.loads(p.read_text())["shards"]) for p in (tmp_path / "two").glob(".rank-*.json"))
    assert 1 <= done < 7, done
    shutil.copytree(tmp_path / "two", tmp_path / "plain")  # the same crash, relaunched without accelerate
    plain = launch(1, SKETCH, str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr[-3000:]
    redone_plain = [int(n) for n in re.findall(r"rank=0 world=1 sketched_shards=(\d+)", plain.stdout)]
    assert redone_plain == [7 - done], (done, plain.stdout)  # only the missing shards
    assert not list((tmp_path / "plain").glob(".rank-*.json")) and not (tmp_path / "plain" / ".lock").exists()
    same_store(SketchStore(tmp_path / "one"), SketchStore(tmp_path / "plain"))
    resumed = launch(2, SKETCH, str(tmp_path / "two"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    redone = sum(shards_per_rank(resumed.stdout).values())
    assert len(shards_per_rank(resumed.stdout)) == 2, resumed.stdout
    assert redone == 7 - done, (done, resumed.stdout, crashed.stderr[-2000:])  # only the missing shards
    same_store(SketchStore(tmp_path / "one"), SketchStore(tmp_path / "two"))


@pytest.mark.slow
def test_two_processes_score_like_one(tmp_path):
    """Per-example blocks spread over two ranks (block b on rank b mod 2), per-corpus on the
    main one: the decrypted values equal the plaintext reference, as with one process."""
    import numpy as np
    from helpers import synthetic_store

    from tip_hf import plaintext_values
    from tip_hf.he import BuyerKeys, decrypt_scores, encrypt_query

    rng = np.random.default_rng(0)
    sketches = rng.normal(size=(9000, 64))  # 3 ciphertext blocks of 4096 slots
    labels = [f"c{i % 5}" for i in range(9000)]
    store = synthetic_store(tmp_path / "store", sketches, labels)
    keys = BuyerKeys.generate()
    keys.save(tmp_path / "keys")
    q = rng.normal(size=64)
    query = encrypt_query(q, keys, store.spec, fingerprint=store.fingerprint, layout="complex-pairs/3")  # per example
    query.save(tmp_path / "query.tip")
    (tmp_path / "public_context.tip").write_bytes((tmp_path / "keys" / "public_context.tip").read_bytes())
    out = launch(2, SCORE, str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("world=2 blocks=3") == 2
    keys = BuyerKeys.load(tmp_path / "keys")
    reference = plaintext_values(q, store)
    scale = np.abs(reference.per_example).max()
    per_example = decrypt_scores(tmp_path / "example.tip", keys)
    np.testing.assert_allclose(per_example.values, reference.per_example, atol=1e-6 * scale)
    assert per_example.corpus_labels == labels
    table = decrypt_scores(tmp_path / "corpus.tip", keys)
    for row in reference.rows:
        assert table[row["corpus"]]["sum"] == pytest.approx(row["sum"], abs=1e-6 * scale * 9000)


def launch_machines(
    script: Path, *args: str, env_extra: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Two "machines" on this host: two `accelerate launch --num_machines 2 --machine_rank r
    --main_process_ip 127.0.0.1` commands, one process each, run at once (as two nodes sharing
    a filesystem would), joined over gloo."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    commands = []
    for rank in (0, 1):
        command = accelerate_command(2, str(script), *args)
        at = command.index("--num_machines")
        command[at : at + 2] = ["--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"]
        command[command.index("--main_process_port") + 1] = str(port)
        commands.append(command)
    running = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=TESTS)
        for c in commands
    ]
    done = []
    for command, process in zip(commands, running, strict=True):
        out, err = process.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return done


@pytest.mark.slow
def test_two_machines_sketch_and_resume_like_one_process(tmp_path):
    """Multi-node as accelerate runs it: machine 0 and machine 1 each launch their processes;
    the store equals one process's, and after machine 1 dies mid-run, relaunching both
    machines redoes only the missing shards."""
    import json

    from tip_hf import SketchStore

    one = launch(1, SKETCH, str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    machines = launch_machines(SKETCH, str(tmp_path / "two"))
    assert all(m.returncode == 0 for m in machines), [m.stderr[-2000:] for m in machines]
    assert sorted(shards_per_rank(machines[0].stdout + machines[1].stdout).values()) == [3, 4]
    same_store(SketchStore(tmp_path / "one"), SketchStore(tmp_path / "two"))

    crashed = launch_machines(
        SKETCH, str(tmp_path / "crash"), env_extra={"TIP_TEST_CRASH_RANK": "1", "TIP_TEST_CRASH_AFTER": "1"}
    )
    assert any(m.returncode != 0 for m in crashed)  # machine 1's process died; the job stopped
    assert not json.loads((tmp_path / "crash" / "manifest.json").read_text())["complete"]
    done = sum(len(json.loads(p.read_text())["shards"]) for p in (tmp_path / "crash").glob(".rank-*.json"))
    assert 1 <= done < 7, done
    resumed = launch_machines(SKETCH, str(tmp_path / "crash"))
    assert all(m.returncode == 0 for m in resumed), [m.stderr[-2000:] for m in resumed]
    assert sum(shards_per_rank(resumed[0].stdout + resumed[1].stdout).values()) == 7 - done
    same_store(SketchStore(tmp_path / "one"), SketchStore(tmp_path / "crash"))
