#!/usr/bin/env bash
# Set up a virtual environment (CPU PyTorch first) and run the linters and the test suite.
#   ./scripts/test.sh            # all tests
#   ./scripts/test.sh -k store   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
ruff check tip_hf tests scripts examples
ruff format --check tip_hf tests scripts examples
python -m pytest -q "$@"
