"""Book market (paper section 4.3.2): how is value spread over 44 real books?

The buyer is the real pretrained SmolLM2-135M (Llama architecture) adapted with peft LoRA
to Jane Austen: fine-tuned on three of her novels with the real ``transformers.Trainer`` and
:class:`tip_hf.TIPCallback` (Fisher preconditioner over the LoRA weights), evaluated on
passages of a fourth (*Persuasion*). Each of 44 real books (42 by Shakespeare, Austen's
*Mansfield Park* and *Northanger Abbey*) is a seller offering the same number of evenly
spaced passages; each is valued by its encrypted per-corpus sum under the buyer's key.
Reported: the distribution of values (the paper's Figure 2), its skewness, the share of
positive value held by the top 10% of books, the fraction with negative value, payouts of one
budget under flat-rate vs value-proportional pricing with their Gini coefficients, and a
realized check: fine-tune the buyer's adapter on the top, middle and bottom books and
measure its eval loss.

    python examples/books_market.py            # 12 passages per book (about 10 minutes on 2 CPU cores)
    python examples/books_market.py --quick    # CI subset
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
from assets import smollm2_135m
from gpt2_fidelity import (
    BUYER_EVAL,
    BUYER_TRAIN,
    Buyer,
    chunks,
    eval_loss,
    library,
    lm_rows,
    lm_trainer,
    seller_store,
)
from market import parser, pyplot, save_figure, score_privately, seed_everything, spearman, write_json
from scipy.stats import skew

from tip_hf import TIPCallback, ValuationSpec, load_bundle
from tip_hf.pricing import flat_rate_payouts, gini, top_share, value_proportional_payouts

NAME = "books_market"
BUDGET = 10_000.0
PAPER = {"finding": "heavy-tailed value distribution: a few books hold most of the value; flat rates overpay the rest"}


LORA_LR = 1e-3  # the buyer's own fine-tuning rate
REALIZED_LR = {"gentle": 1e-4, "buyer_lr": LORA_LR}


def buyer_smollm(quick: bool, seed: int, work: Path) -> Buyer:
    """SmolLM2-135M + LoRA (r=8 on q/v) fine-tuned on Austen with the callback."""
    from peft import LoraConfig, get_peft_model

    clock = time.perf_counter()
    seed_everything(seed)
    base, tokenizer = smollm2_135m()
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    lib = library()
    train = [c for title in BUYER_TRAIN for c in chunks(tokenizer, lib[title].text, 24 if quick else 200)]
    eval_chunks = chunks(tokenizer, lib[BUYER_EVAL].text, 16 if quick else 48)
    spec = ValuationSpec(targets="lora", proj_dim=256 if quick else 1024, seed=seed, preconditioner="fisher")
    callback = TIPCallback(spec, eval_dataset=lm_rows(eval_chunks), output_dir=work / "bundle")
    steps = 4 if quick else 40
    lm_trainer(model, lm_rows(train), work / "buyer", steps, LORA_LR, seed, callbacks=[callback]).train()
    model.eval()
    return Buyer(model, tokenizer, spec, load_bundle(work / "bundle"), eval_chunks, time.perf_counter() - clock)


def run(quick: bool, out: Path, seed: int = 0) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tip-books-"))
    buyer = buyer_smollm(quick, seed, work)
    lib = library()
    titles = [t for t in lib if t not in (*BUYER_TRAIN, BUYER_EVAL)]
    per_book = 2 if quick else 12
    passages = {t: chunks(buyer.tokenizer, lib[t].text, per_book) for t in titles}
    store, sketch_seconds = seller_store(buyer, passages, work / "store")
    scored = score_privately(buyer.bundle.query, store)
    values = {t: scored.corpus_enc[t]["sum"] for t in titles}
    ranked = sorted(titles, key=lambda t: -values[t])
    v = np.array([values[t] for t in ranked])
    flat = flat_rate_payouts({t: len(passages[t]) for t in titles}, BUDGET)
    proportional = value_proportional_payouts(values, BUDGET)
    stats = {
        "books": len(titles),
        "passages_per_book": per_book,
        "skewness": float(skew(v)),
        "top10_share_of_positive_value": top_share(v, 0.1),
        "fraction_negative": float((v < 0).mean()),
        "gini_flat_rate": gini(list(flat.values())),
        "gini_value_proportional": gini(list(proportional.values())),
        "flat_rate_paid_to_negative_value_books": float(sum(flat[t] for t in titles if values[t] < 0)),
        "austen_ranks": [ranked.index(t) + 1 for t in titles if "austen" in lib[t].author.lower()],
    }

    # realized: fine-tune the buyer's adapter on the top, middle and bottom books' passages,
    # gently (influence is a local prediction) and at the buyer's own learning rate
    clock = time.perf_counter()
    k = 1 if quick else 3
    mid = len(ranked) // 2
    checks = {"top": ranked[:k], "middle": ranked[mid - k // 2 : mid - k // 2 + k], "bottom": ranked[-k:]}
    before = eval_loss(buyer.model, buyer.eval_chunks)
    realized = []
    for group, picked in checks.items():
        for title in picked:
            row = {"group": group, "book": title, "value": values[title]}
            for recipe, lr in REALIZED_LR.items():
                model = copy.deepcopy(buyer.model)
                steps = 2 * -(-per_book // 16)  # two epochs over the book's passages
                lm_trainer(model, lm_rows(passages[title]), work / "realized", steps, lr, seed).train()
                row[f"drop_{recipe}"] = before - eval_loss(model, buyer.eval_chunks)
            realized.append(row)
    realized_seconds = time.perf_counter() - clock
    group_means = {
        recipe: {g: float(np.mean([r[f"drop_{recipe}"] for r in realized if r["group"] == g])) for g in checks}
        for recipe in REALIZED_LR
    }
    norms = store.sketches().norm(dim=1).numpy()
    labels = np.array(store.corpus_labels())
    median = float(np.median(norms))
    outliers = {t: float(norms[labels == t].max() / median) for t in titles}
    table = [
        {
            "rank": i + 1,
            "book": t,
            "author": lib[t].author,
            "value_sum": values[t],
            "plaintext_sum": scored.corpus_plain[t]["sum"],
            "flat_rate_payout": flat[t],
            "value_proportional_payout": proportional[t],
            "largest_passage_norm_over_median": outliers[t],
        }
        for i, t in enumerate(ranked)
    ]
    result = {
        "experiment": "Book market (paper 4.3.2): 44 real books valued for SmolLM2-135M + LoRA adapted to Austen",
        "quick": quick,
        "settings": {
            "model": "SmolLM2-135M-Instruct (real weights, dequantised GGUF) + peft LoRA r=8 on q_proj/v_proj",
            "buyer_train_books": list(BUYER_TRAIN),
            "buyer_eval_book": BUYER_EVAL,
            "passages_per_book": per_book,
            "bundle": buyer.bundle.summary,
            "budget": BUDGET,
            "realized": {
                recipe: f"2 epochs of AdamW lr {lr} on the LoRA weights" for recipe, lr in REALIZED_LR.items()
            },
        },
        "stats": stats,
        "table": table,
        "realized": realized,
        "realized_group_means": group_means,
        "realized_order_matches_value": {
            recipe: means["top"] > means["middle"] > means["bottom"] for recipe, means in group_means.items()
        },
        "spearman_value_vs_realized": {
            recipe: spearman([r["value"] for r in realized], [r[f"drop_{recipe}"] for r in realized])
            if len(realized) > 2
            else None
            for recipe in REALIZED_LR
        },
        "fidelity": scored.fidelity(),
        "seconds": {
            "buyer_training_and_bundle": buyer.seconds,
            "seller_sketching": sketch_seconds,
            "realized_fine_tuning": realized_seconds,
            **scored.seconds,
        },
        "paper": PAPER,
    }
    result["figures"] = [_figure(table, stats, out / f"{NAME}.png").name]
    write_json(NAME, result, out)
    return result


def _figure(table: list[dict], stats: dict, path: Path) -> Path:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    v = np.array([r["value_sum"] for r in table])
    austen = np.array(["austen" in r["author"].lower() for r in table])
    top = np.log10(max(np.abs(v).max(), 10.0)) + 0.05
    side = np.logspace(0, top, 14)
    a.hist(v, bins=np.concatenate([-side[::-1], [0.0], side]), color="tab:blue", alpha=0.85)
    a.set_xscale("symlog", linthresh=1.0)
    for x in v[austen]:
        a.axvline(x, color="tab:red", lw=1.2)
    a.axvline(0, color="0.4", lw=0.8, ls="--")
    a.set_xlabel("decrypted value of a book's passages (sum, symmetric log scale)", fontsize=8)
    a.set_ylabel("books", fontsize=8)
    a.set_title(
        f"{stats['books']} books: skewness {stats['skewness']:.2f}, top 10% hold "
        f"{100 * stats['top10_share_of_positive_value']:.0f}% of positive value (red: Austen)",
        fontsize=8,
    )
    order = np.arange(len(table))
    b.plot(
        order,
        [r["value_proportional_payout"] for r in table],
        label=f"value-proportional (Gini {stats['gini_value_proportional']:.2f})",
    )
    b.plot(order, [r["flat_rate_payout"] for r in table], label=f"flat rate (Gini {stats['gini_flat_rate']:.2f})")
    b.set_xlabel("books, by decreasing value", fontsize=8)
    b.set_ylabel(f"payout of a {BUDGET:,.0f} budget", fontsize=8)
    b.legend(fontsize=8)
    return save_figure(fig, path)


def main() -> None:
    args = parser(__doc__).parse_args()
    result = run(args.quick, args.out, args.seed)
    for r in result["table"][:5] + result["table"][-3:]:
        print(f"{r['rank']:>3} {r['book']:<34} {r['value_sum']:>12.5g}  pays {r['value_proportional_payout']:>8.1f}")
    for key, value in result["stats"].items():
        print(f"{key}: {value}")
    for recipe, means in result["realized_group_means"].items():
        print(f"realized eval-loss drop by group ({recipe}):", means)


if __name__ == "__main__":
    main()
