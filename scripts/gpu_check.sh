#!/usr/bin/env bash
# One command to check tip_hf's GPU paths on a lent GPU (a few minutes): the CUDA test,
# CUDA == CPU / batch invariance / bf16 table, and sketching throughput at real shapes.
# Uses the current interpreter's torch (PYTHON=...; default python3); no install step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_sketcher_behaviour.py
"$PY" scripts/gpu_check.py ${OUT:+--json "$OUT/gpu_check.json"}
"$PY" scripts/gpu_callback_check.py
"$PY" scripts/bench_sketch.py --gpt2-small --device cuda --skip-slow-baselines --rounds 1 --batches 3
