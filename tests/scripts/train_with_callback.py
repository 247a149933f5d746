"""Run by tests/test_distributed.py, alone or under `accelerate launch`: a Trainer run with the
TIPCallback at learning rate 0 (so every process sees the same weights) writing a bundle."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import GPT2_TARGETS, make_gpt2, tiny_training_args
from test_callback import collate_lm, lm_rows

from tip_hf import TIPCallback, ValuationSpec


def main(out: str) -> None:
    torch.manual_seed(0)
    model = make_gpt2()
    spec = ValuationSpec(targets=GPT2_TARGETS, proj_dim=64, proj_factor=8)
    args = tiny_training_args(Path(out) / "run", learning_rate=0.0, dataloader_num_workers=0, seed=0)
    callback = TIPCallback(spec, eval_dataset=Dataset.from_list(lm_rows(8, seed=1)), output_dir=Path(out) / "bundle")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(lm_rows(32)),
        data_collator=collate_lm,
        callbacks=[callback],
    )
    trainer.train()
    print(f"rank done: world={trainer.args.world_size} examples={callback.curvature.count}")


if __name__ == "__main__":
    main(sys.argv[1])
