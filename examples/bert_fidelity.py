"""BERT with LoRA: encrypted vs plaintext values and the cost per scored example.

The buyer fine-tunes the real pretrained all-MiniLM-L6-v2 (BERT architecture) with peft LoRA
(rank 8 on query/value, trained head) on real movie-review sentiment sentences, with the real
``transformers.Trainer`` and :class:`tip_hf.TIPCallback` (Fisher preconditioner over the
LoRA weights). Candidate corpora: held-out movie reviews, Amazon reviews, NYT editorials,
tweets, SMS messages (spam labels), and corrupted movie reviews (flipped labels, shuffled
words). The seller sketches every sentence with the buyer's published model; every
per-example and per-corpus value is computed under CKKS and compared with plaintext.

    python examples/bert_fidelity.py            # 8 x 64 candidates
    python examples/bert_fidelity.py --quick    # CI subset
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from assets import Snippet, minilm_path
from datasets import Dataset, concatenate_datasets
from market import corpus_bars, fidelity_plot, parser, score_privately, seed_everything, write_json
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tip_hf import TIPCallback, ValuationSpec, load_bundle, sketch_dataset
from tip_hf.demo import demo_corpora
from tip_hf.demo.corpora import as_dataset, buyer_split
from tip_hf.demo.training import build_trainer

NAME = "bert_fidelity"
PAPER = {"model": "BERT-base on SST-2", "encrypted_vs_plaintext_pearson": 0.97, "fhe_seconds_per_sample": 0.15}


def shuffled_words(rows: list[Snippet], seed: int) -> list[Snippet]:
    rng = random.Random(seed)
    out = []
    for r in rows:
        words = r.text.split()
        rng.shuffle(words)
        out.append(Snippet(" ".join(words), r.label))
    return out


def run(quick: bool, out: Path, seed: int = 0) -> dict:
    from peft import LoraConfig, get_peft_model

    seed_everything(seed)
    n_train, n_eval, per_corpus = (64, 32, 12) if quick else (256, 128, 64)
    train_rows, eval_rows = buyer_split(n_train, n_eval, seed)
    corpora = demo_corpora(per_corpus, seed, {r.text for r in train_rows + eval_rows})
    corpora.pop("movie-duplicates")
    corpora["movie-reviews-shuffled-words"] = shuffled_words(corpora["movie-reviews"], seed)
    seconds: dict[str, float] = {}

    clock = time.perf_counter()
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0)
    lora.modules_to_save = ["classifier"]
    model = get_peft_model(base, lora)
    spec = ValuationSpec(
        targets="lora",
        proj_dim=512 if quick else 2048,
        seed=seed,
        task="sequence_classification",
        preconditioner="fisher",
    )

    def tokenised(rows: list[Snippet], corpus: str | None = None) -> Dataset:
        return as_dataset(rows, corpus).map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=64), batched=True, remove_columns=["text"]
        )

    work = Path(tempfile.mkdtemp(prefix="tip-bert-"))
    callback = TIPCallback(spec, eval_dataset=tokenised(eval_rows), output_dir=work / "bundle", tokenizer=tokenizer)
    build_trainer(
        model, tokenizer, tokenised(train_rows), work / "trainer", 2, 5e-4, seed, callbacks=[callback]
    ).train()
    bundle = load_bundle(work / "bundle")
    seconds["buyer_lora_fine_tuning_and_bundle"] = time.perf_counter() - clock

    clock = time.perf_counter()
    data = concatenate_datasets([tokenised(rows, name) for name, rows in corpora.items()])
    store = sketch_dataset(
        model, data, spec, work / "store", tokenizer=tokenizer, corpus_column="corpus", batch_size=32,
        fingerprint=bundle.fingerprint, progress=False,
    )  # fmt: skip
    seconds["seller_sketching"] = time.perf_counter() - clock
    seconds["seller_sketching_per_example"] = seconds["seller_sketching"] / len(store)
    scored = score_privately(bundle.query, store)
    table = scored.corpus_table()
    result = {
        "experiment": "BERT (real MiniLM-L6, LoRA r=8 on query/value) on movie-review sentiment",
        "quick": quick,
        "settings": {
            "model": "sentence-transformers/all-MiniLM-L6-v2 (BertModel, 6 layers, 22.7M) + peft LoRA r=8",
            "buyer_train": n_train,
            "eval": n_eval,
            "per_corpus": per_corpus,
            "targets": "lora",
            "lora_params": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n),
            "proj_dim": spec.proj_dim,
            "preconditioner": spec.preconditioner,
        },
        "bundle_summary": bundle.summary,
        "table": table,
        "fidelity": scored.fidelity(),
        "seconds": {**seconds, **scored.seconds},
        "paper": PAPER,
    }
    figures = [fidelity_plot(scored, "BERT (MiniLM + LoRA): encrypted vs plaintext", out / f"{NAME}.png")]
    figures.append(corpus_bars(table, out / f"{NAME}_corpora.png", "decrypted mean value per example"))
    result["figures"] = [p.name for p in figures]
    write_json(NAME, result, out)
    return result


def main() -> None:
    args = parser(__doc__).parse_args()
    result = run(args.quick, args.out, args.seed)
    for r in result["table"]:
        print(f"{r['corpus']:<30} {r['encrypted_mean']:>12.5g} {r['plaintext_mean']:>12.5g}")
    fid = result["fidelity"]
    print(
        f"per-example Pearson {fid['pearson_examples']:.10f} over {fid['n_examples']}; "
        f"FHE {fid['fhe_seconds_per_example'] * 1e3:.3f} ms per example"
    )


if __name__ == "__main__":
    main()
