"""GPT-2: encrypted vs plaintext values and the cost per scored example, on real books.

The buyer trains a GPT-2-shaped causal LM (2 layers, width 128) with the real GPT-2 tokenizer
on three of Jane Austen's novels, with the real ``transformers.Trainer`` and
:class:`tip_hf.TIPCallback` valuing the MLP layers (``c_fc``, ``c_proj``); its evaluation
set is held-out passages of a fourth novel (*Persuasion*). Candidate corpora: passages of
Austen's two other novels and of Shakespeare's comedies, tragedies, histories and poems,
plus a token-shuffled copy of Austen. Every per-example and per-corpus value is computed
under CKKS and compared with plaintext. :func:`buyer_lm` is shared with the book market.

    python examples/gpt2_fidelity.py            # full
    python examples/gpt2_fidelity.py --quick    # CI subset
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from assets import Book, books, gpt2_tokenizer_path
from datasets import Dataset, concatenate_datasets
from market import corpus_bars, fidelity_plot, parser, score_privately, seed_everything, training_args, write_json
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, Trainer

from tip_hf import SketchStore, TIPCallback, ValuationSpec, load_bundle, sketch_dataset
from tip_hf.bundle import Bundle

NAME = "gpt2_fidelity"
PAPER = {"model": "GPT-2", "encrypted_vs_plaintext_pearson": 1.00, "fhe_seconds_per_sample": 0.15}
TARGETS = ["transformer.h.*.mlp.c_fc", "transformer.h.*.mlp.c_proj"]
BUYER_TRAIN = ("Pride & Prejudice", "Emma", "Sense & Sensibility")
BUYER_EVAL = "Persuasion"
CHUNK = 64  # tokens per example


@dataclass
class Buyer:
    model: Any  # a causal LM (GPT2LMHeadModel here; a peft-wrapped SmolLM2 in the book market)
    tokenizer: Any
    spec: ValuationSpec
    bundle: Bundle
    eval_chunks: list[list[int]]
    seconds: float


def chunks(tokenizer: Any, text: str, count: int | None = None, skip: int = 0) -> list[list[int]]:
    """``count`` evenly spaced ``CHUNK``-token passages of a text (all of them if None)."""
    ids = tokenizer(text)["input_ids"]
    windows = [ids[i : i + CHUNK] for i in range(0, len(ids) - CHUNK + 1, CHUNK)][skip:]
    if count is None or count >= len(windows):
        return windows
    return [windows[int(i)] for i in np.linspace(0, len(windows) - 1, count)]


def lm_rows(passages: list[list[int]], corpus: str | None = None) -> Dataset:
    data: dict[str, Any] = {"input_ids": passages, "attention_mask": [[1] * len(p) for p in passages]}
    if corpus is not None:
        data["corpus"] = [corpus] * len(passages)
    return Dataset.from_dict(data)


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([r["input_ids"] for r in rows])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def lm_trainer(model: torch.nn.Module, data: Dataset, out: Path, steps: int, lr: float, seed: int, **kw) -> Trainer:
    args = training_args(out, 16, lr, seed, max_steps=steps, remove_unused_columns=False)
    return Trainer(model=model, args=args, train_dataset=data, data_collator=collate, **kw)


@torch.no_grad()
def eval_loss(model: torch.nn.Module, passages: list[list[int]]) -> float:
    model.eval()
    total = 0.0
    for lo in range(0, len(passages), 32):
        batch = collate([{"input_ids": p} for p in passages[lo : lo + 32]])
        total += float(model(**batch).loss) * len(batch["input_ids"])
    return total / len(passages)


def library() -> dict[str, Book]:
    return {b.title: b for b in books()}


def buyer_lm(quick: bool, seed: int = 0, work: Path | None = None, proj_dim: int | None = None) -> Buyer:
    """Train the Austen LM with the callback; return it with its bundle and eval passages."""
    clock = time.perf_counter()
    seed_everything(seed)
    work = work or Path(tempfile.mkdtemp(prefix="tip-gpt2-"))
    tokenizer = GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_path())
    lib = library()
    per_book = 150 if quick else None
    train = [c for title in BUYER_TRAIN for c in chunks(tokenizer, lib[title].text, per_book)]
    eval_chunks = chunks(tokenizer, lib[BUYER_EVAL].text, 32 if quick else 128)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=128, n_layer=2, n_head=4,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    spec = ValuationSpec(
        targets=TARGETS, proj_dim=proj_dim or (256 if quick else 1024), seed=seed, preconditioner="fisher"
    )
    callback = TIPCallback(
        spec,
        eval_dataset=lm_rows(eval_chunks),
        output_dir=work / "bundle",
        last_epoch_only=False,
        every_n_steps=1 if quick else 4,
    )
    steps = 40 if quick else 300
    lm_trainer(model, lm_rows(train), work / "buyer", steps, 2e-3, seed, callbacks=[callback]).train()
    model.eval()
    return Buyer(model, tokenizer, spec, load_bundle(work / "bundle"), eval_chunks, time.perf_counter() - clock)


def candidate_corpora(tokenizer: GPT2TokenizerFast, per_corpus: int, seed: int) -> dict[str, list[list[int]]]:
    lib = library()
    genres = {
        "shakespeare-comedies": [
            "As You Like It",
            "Twelfth Night",
            "A Midsummer Night's Dream",
            "Much Ado About Nothing",
        ],
        "shakespeare-tragedies": ["Hamlet", "Macbeth", "Othello", "King Lear"],
        "shakespeare-histories": ["King Henry V", "King Richard III", "King John", "King Richard II"],
        "shakespeare-poems": ["Sonnets", "The Rape of Lucrece", "A Lover's Complaint"],
        "austen-unseen-novels": ["Mansfield Park", "Northanger Abbey"],
    }
    out = {}
    for name, titles in genres.items():
        share = -(-per_corpus // len(titles))
        out[name] = [c for t in titles for c in chunks(tokenizer, lib[t].text, share)][:per_corpus]
    rng = np.random.default_rng(seed)
    out["austen-tokens-shuffled"] = [list(rng.permutation(c)) for c in out["austen-unseen-novels"]]
    return out


def seller_store(buyer: Buyer, corpora: dict[str, list[list[int]]], path: Path) -> tuple[SketchStore, float]:
    """The seller sketches its passages with the buyer's published model (checked against the
    bundle's fingerprint); returns the store and the seconds it took."""
    clock = time.perf_counter()
    data = concatenate_datasets([lm_rows(p, name) for name, p in corpora.items()])
    store = sketch_dataset(
        buyer.model, data, buyer.spec, path, corpus_column="corpus", batch_size=16,
        fingerprint=buyer.bundle.fingerprint, progress=False,
    )  # fmt: skip
    return store, time.perf_counter() - clock


def run(quick: bool, out: Path, seed: int = 0) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tip-gpt2-"))
    buyer = buyer_lm(quick, seed, work)
    per_corpus = 8 if quick else 48
    corpora = candidate_corpora(buyer.tokenizer, per_corpus, seed)
    store, sketch_seconds = seller_store(buyer, corpora, work / "store")
    scored = score_privately(buyer.bundle.query, store)
    table = scored.corpus_table()
    result = {
        "experiment": "GPT-2-shaped LM (real GPT-2 tokenizer) trained on Austen; MLP layers valued",
        "quick": quick,
        "settings": {
            "model": "GPT2LMHeadModel(n_layer=2, n_embd=128, n_head=4), trained from scratch",
            "tokenizer": "real GPT-2 BPE (50,257 tokens)",
            "buyer_train_books": list(BUYER_TRAIN),
            "buyer_eval_book": BUYER_EVAL,
            "tokens_per_example": CHUNK,
            "per_corpus": per_corpus,
            "targets": TARGETS,
            "proj_dim": buyer.spec.proj_dim,
            "preconditioner": buyer.spec.preconditioner,
        },
        "bundle_summary": buyer.bundle.summary,
        "table": table,
        "fidelity": scored.fidelity(),
        "seconds": {
            "buyer_training_and_bundle": buyer.seconds,
            "seller_sketching": sketch_seconds,
            "seller_sketching_per_example": sketch_seconds / len(store),
            **scored.seconds,
        },
        "paper": PAPER,
    }
    figures = [fidelity_plot(scored, "GPT-2 (Austen LM): encrypted vs plaintext", out / f"{NAME}.png")]
    figures.append(corpus_bars(table, out / f"{NAME}_corpora.png", "decrypted mean value per passage", "tab:purple"))
    result["figures"] = [p.name for p in figures]
    write_json(NAME, result, out)
    return result


def main() -> None:
    args = parser(__doc__).parse_args()
    result = run(args.quick, args.out, args.seed)
    for r in result["table"]:
        print(f"{r['corpus']:<26} {r['encrypted_mean']:>12.5g} {r['plaintext_mean']:>12.5g}")
    fid = result["fidelity"]
    print(
        f"per-example Pearson {fid['pearson_examples']:.10f} over {fid['n_examples']}; "
        f"FHE {fid['fhe_seconds_per_example'] * 1e3:.3f} ms per example; "
        f"buyer eval loss {result['bundle_summary']['eval_loss']:.3f}"
    )


if __name__ == "__main__":
    main()
