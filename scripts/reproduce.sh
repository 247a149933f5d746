#!/usr/bin/env bash
# Regenerate reports/ from scratch: the paper's five evaluations on real offline data, each a
# script under examples/, then reports/README.md (tables with the paper's numbers beside ours),
# PNG figures and one JSON of every number per experiment.
#   ./scripts/reproduce.sh            # full sizes (about 17 minutes on 2 CPU cores)
#   ./scripts/reproduce.sh --quick    # CI sizes (about 4.5 minutes), written to reports/quick/
#   ./scripts/reproduce.sh --out DIR  # somewhere else
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
QUICK=()
OUT=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=(--quick) ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: scripts/reproduce.sh [--quick] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$OUT" ]; then
  if [ ${#QUICK[@]} -gt 0 ]; then OUT=reports/quick; else OUT=reports; fi
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.png "$OUT"/README.md  # only what the experiments write
for experiment in digits_market bert_fidelity gpt2_fidelity healthcare_market books_market; do
  echo "== $experiment"
  start=$SECONDS
  python "examples/$experiment.py" "${QUICK[@]}" --out "$OUT" 2>&1 | { grep -v -e "Warning" -e "warnings.warn" || true; }
  echo "   ($((SECONDS - start)) s)"
done
python examples/make_report.py --dir "$OUT"
