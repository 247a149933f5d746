#!/usr/bin/env bash
# Set up the virtual environment and run the end-to-end quickstart: a buyer's encrypted query,
# a seller's three corpora sketched and scored under the buyer's key, the decrypted ranking.
#   ./scripts/demo.sh [quickstart.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
python examples/quickstart.py "$@"
