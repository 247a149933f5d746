#!/usr/bin/env bash
# Set up the virtual environment and run the marketplace demo (`tip demo`): a buyer fine-tunes
# the real pretrained MiniLM with TIPCallback, eight seller corpora are valued under CKKS, and
# a realized check fine-tunes on each corpus. Report and figure under tip_demo/.
#   ./scripts/demo.sh [--quick] [--out DIR] [--seed N]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
tip demo "$@"
