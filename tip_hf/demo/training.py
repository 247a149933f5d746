"""Fine-tuning for the demo: the ``transformers.Trainer`` it uses (buyer and realized check), the
eval loss it measures, and a scope that leaves the process's global state as it found it."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .assets import Snippet

__all__ = ["TARGETS", "build_trainer", "eval_loss", "freeze_all_but_targets", "process_state_restored"]

TARGETS = ["encoder.layer.5.*.dense", "classifier"]


@contextlib.contextmanager
def process_state_restored(quiet: bool = True) -> Iterator[None]:
    """Within: seed and log freely; after: the process as before.

    Restores the random-number generators (``random``, NumPy's global one, torch on the CPU and
    every CUDA device) that model initialisation and ``Trainer``'s ``set_seed`` move, the
    ``transformers`` log level and ``datasets``' progress bars. ``quiet``: inside, transformers
    logs errors only (load reports would bury the demo's output) and ``datasets`` shows no bars.
    """
    import datasets
    import numpy as np
    import transformers

    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    verbosity = transformers.logging.get_verbosity()
    bars = datasets.is_progress_bar_enabled()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            if quiet:
                transformers.logging.set_verbosity_error()
                datasets.disable_progress_bars()
            yield
    finally:
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
        transformers.logging.set_verbosity(verbosity)
        if bars and not datasets.is_progress_bar_enabled():
            datasets.enable_progress_bars()


def freeze_all_but_targets(model: torch.nn.Module, targets: list[str] = TARGETS) -> None:
    """Train what is valued: the target modules' weights (and nothing else)."""
    from ..targets import resolve_targets

    names = {t.name for t, _ in resolve_targets(model, targets)}
    for name, param in model.named_parameters():
        param.requires_grad_(name.rsplit(".", 1)[0] in names and name.endswith("weight"))


def build_trainer(
    model: Any,
    tokenizer: Any,
    train: Any,
    out: Path,
    epochs: float,
    lr: float,
    seed: int,
    optim: str = "adamw_torch",
    progress: bool = False,
    **kw: Any,
) -> Any:
    """A ``Trainer`` (constant learning rate, no weight decay, batches of 16, seeded by ``seed``)
    that saves and prints nothing; ``progress`` keeps its progress bar, without the metrics."""
    from transformers import DataCollatorWithPadding, PrinterCallback, ProgressCallback, Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=16,
        num_train_epochs=epochs,
        learning_rate=lr,
        optim=optim,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),  # else a warning per run on CPU
        disable_tqdm=not progress,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        **kw,
    )
    # the demo prints its own headings and summary: no raw metrics dict ({'train_runtime': ...})
    trainer.remove_callback(PrinterCallback)
    bar = trainer.pop_callback(ProgressCallback)
    if bar is not None:  # keep the progress bar, without its metrics printout
        bar.on_log = lambda *args, **kwargs: None
        trainer.add_callback(bar)
    return trainer


@torch.no_grad()
def eval_loss(model: torch.nn.Module, tokenizer: Any, rows: list[Snippet], max_length: int) -> float:
    """Mean cross-entropy (nats) of ``model`` on ``rows``, in eval mode."""
    model.eval()
    total = 0.0
    for lo in range(0, len(rows), 64):
        chunk = rows[lo : lo + 64]
        batch = tokenizer(
            [r.text for r in chunk], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = model(**batch).logits.float()
        labels = torch.tensor([r.label for r in chunk], device=logits.device)
        total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
    return total / len(rows)
