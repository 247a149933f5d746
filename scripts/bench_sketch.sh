#!/usr/bin/env bash
# Side-by-side sketching benchmark including EleutherAI bergson, in its own venv (bergson
# drags in torchvision/torchaudio, which break transformers on CPU torch, so they are removed).
#   ./scripts/bench_sketch.sh [bench_sketch.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-bench}"
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q torch==2.13.0
pip install -q -c <(echo torch==2.13.0) bergson==2.5.1 -e ".[bench]"
pip uninstall -q -y torchvision torchaudio 2>/dev/null || true
export HF_HUB_OFFLINE=1
python scripts/bench_sketch.py "$@"
