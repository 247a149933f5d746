"""Realized utility: per-corpus values from a real Trainer run (TIPTrainer) rank candidate
corpora like actually fine-tuning on each one and measuring the buyer's eval-loss change.

Six corpora differ in relevance and label noise; the buyer's model is fine-tuned for five SGD
steps on each, on the valued weights (the spec's targets, as the influence estimate
assumes), and the eval-loss drop is compared with the predicted mean value. Seed 0 is the
stated seed; seeds 1 and 2 also pass (Spearman 1.0 on all three when written)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from datasets import Dataset
from helpers import make_bert, tiny_training_args
from scipy.stats import spearmanr
from test_callback import collate_cls

from tip_hf import GradientSketcher, TIPTrainer, ValuationSpec

SEED = 0
FAMILY_A, FAMILY_B, NOISE = torch.arange(1, 20), torch.arange(40, 60), torch.arange(1, 97)


def rows(gen, pool, n, label_of) -> list[dict]:
    ids = pool[torch.randint(0, len(pool), (n, 10), generator=gen)]
    return [{"input_ids": ids[i].tolist(), "label": label_of(i)} for i in range(n)]


def eval_loss(model, batch) -> float:
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits, batch["labels"]).item()


def test_values_rank_corpora_like_fine_tuning(tmp_path):
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    train = rows(gen, FAMILY_A, 24, lambda i: 0) + rows(gen, FAMILY_B, 24, lambda i: 1)
    eval_rows = rows(gen, FAMILY_A, 16, lambda i: 0) + rows(gen, FAMILY_B, 16, lambda i: 1)
    flip = lambda rate: lambda i: int((i % 8) < 8 * rate)  # noqa: E731 - label 1 on a fraction of A
    corpora = {
        "clean": rows(gen, FAMILY_A, 16, lambda i: 0) + rows(gen, FAMILY_B, 16, lambda i: 1),
        "a-only": rows(gen, FAMILY_A, 32, lambda i: 0),
        "noisy-25": rows(gen, FAMILY_A, 32, flip(0.25)),
        "noisy-50": rows(gen, FAMILY_A, 32, flip(0.5)),
        "random": rows(gen, NOISE, 32, lambda i: i % 2),
        "flipped": rows(gen, FAMILY_A, 16, lambda i: 1) + rows(gen, FAMILY_B, 16, lambda i: 0),
    }
    model = make_bert(seed=SEED, labels=2)
    spec = ValuationSpec(
        targets=["bert.encoder.layer.*.output.dense", "classifier"], proj_dim=256, task="sequence_classification"
    )
    args = tiny_training_args(
        tmp_path / "run",
        per_device_train_batch_size=8,
        num_train_epochs=3,
        learning_rate=1e-3,
        seed=SEED,
        logging_strategy="steps",
    )
    trainer = TIPTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        data_collator=collate_cls,
        tip_spec=spec,
        tip_eval_dataset=Dataset.from_list(eval_rows),
    )
    trainer.train()
    candidates = Dataset.from_list([dict(r, corpus=name) for name, rs in corpora.items() for r in rs])
    store = trainer.sketch(candidates, tmp_path / "store", corpus_column="corpus", progress=False)
    predicted = {name: trainer.plaintext_values(store)[name]["mean"] for name in corpora}

    # realized: fine-tune a copy of the buyer's model on each corpus, measure the eval-loss drop
    model.eval()
    eval_batch = collate_cls(eval_rows)
    before = eval_loss(model, eval_batch)
    realized = {}
    for name, corpus_rows in corpora.items():
        tuned = copy.deepcopy(model).train()
        # fine-tune the valued weights (the spec's targets), as the influence estimate assumes
        weights = [w for _, w in GradientSketcher(tuned, spec).target_parameters()]
        optimizer = torch.optim.SGD(weights, lr=0.02)
        batch = collate_cls(corpus_rows)
        for _ in range(5):
            optimizer.zero_grad()
            F.cross_entropy(
                tuned(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
            ).backward()
            optimizer.step()
        realized[name] = before - eval_loss(tuned.eval(), eval_batch)
    names = list(corpora)
    rho = spearmanr([predicted[n] for n in names], [realized[n] for n in names])[0]
    assert rho >= 0.8, (rho, predicted, realized)
    assert predicted["clean"] > 0 > predicted["flipped"] and realized["clean"] > 0 > realized["flipped"]
