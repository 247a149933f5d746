#!/usr/bin/env bash
# One command to check tip_hf's GPU paths on a lent GPU (~3 min on an H200): the CUDA test,
# CUDA == CPU / batch invariance / bf16 table, and sketch-pass vs training-step throughput
# (GPT-2 small, BERT base; float32 and bf16 autocast; all linear modules and LoRA r=8).
# Uses the current interpreter's torch (PYTHON=...; default python3); no install step.
# Without a GPU it runs gpu_check.py's tiny CPU smoke configuration and stops there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device visible; running the CPU smoke configuration only."
    "$PY" scripts/gpu_check.py --smoke
    exit 0
fi
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_sketcher_behaviour.py
"$PY" scripts/gpu_check.py ${OUT:+--json "$OUT/gpu_check.json"}
"$PY" scripts/gpu_callback_check.py
"$PY" scripts/bench_sketch.py --gpt2-small --device cuda --skip-slow-baselines --skip-memory --rounds 1 --batches 3
