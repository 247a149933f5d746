"""TIPCallback on a GPU: sketches recorded inside `Trainer.train()` under fp32, bf16 and fp16
(GradScaler) mixed precision equal `GradientSketcher` sketches of the same examples and
weights (learning rate 0, so the weights stay put). Part of `scripts/gpu_check.sh`.

    python scripts/gpu_callback_check.py
"""

from __future__ import annotations

import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from tip_hf import GradientSketcher, TIPCallback, ValuationSpec

TARGETS = ["transformer.h.*.attn.c_attn", "transformer.h.*.mlp.*"]


def rows(n: int) -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        length = int(torch.randint(5, 33, (1,), generator=gen))
        out.append({"input_ids": torch.randint(1, 97, (length,), generator=gen).tolist()})
    return out


def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    length = max(len(r["input_ids"]) for r in batch)
    ids = torch.zeros(len(batch), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(batch):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def check(precision: str, accumulation: int) -> float:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=64)
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
    model = GPT2LMHeadModel(config).cuda()
    spec = ValuationSpec(targets=TARGETS, proj_dim=128)
    data = rows(32)
    callback = TIPCallback(spec, record_sketches=True)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=1,
        learning_rate=0.0,
        report_to=[],
        logging_strategy="no",
        save_strategy="no",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=0,
    )
    Trainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[callback]).train()
    recorded = torch.cat(callback.sketches).double()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    sketcher = GradientSketcher(model, spec, autocast_dtype=dtype)
    reference = torch.cat([sketcher.sketch({k: v.cuda() for k, v in collate([r]).items()}).cpu() for r in data])
    reference = reference.double()
    nearest = torch.cdist(recorded, reference).argmin(1)  # the Trainer shuffles
    assert sorted(nearest.tolist()) == list(range(len(data))), "not a one-to-one match"
    err = (recorded - reference[nearest]).norm(dim=1) / reference[nearest].norm(dim=1)
    return err.max().item()


def main() -> None:
    print("| precision | grad. accumulation | max rel. error, callback vs GradientSketcher |")
    print("|---|---|---|")
    worst = {}
    for precision in ("fp32", "bf16", "fp16"):
        for accumulation in (1, 4):
            err = check(precision, accumulation)
            worst[precision] = max(worst.get(precision, 0.0), err)
            print(f"| {precision} | {accumulation} | {err:.2e} |", flush=True)
    limits = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}  # half precision: the forward pass itself differs
    ok = all(worst[p] < limits[p] for p in worst)
    print("\ncallback GPU check:", "PASS" if ok else "FAIL")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
