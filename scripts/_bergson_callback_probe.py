"""Probe: overhead of EleutherAI bergson's ``GradientCollectorCallback`` on a plain
``transformers.Trainer`` run, in-process on CPU.

Run with the separate venv that has bergson==2.5.1 installed (not the project's
own environment)::

    /tmp/bergson-venv/bin/python scripts/_bergson_callback_probe.py

Attaching the callback takes two steps (bergson 2.5.1, ``bergson/huggingface.py``):

1. ``Trainer(..., callbacks=[make_bergson_callback(...)])``
2. ``bergson.huggingface.prepare_for_gradient_collection(trainer)`` before
   ``trainer.train()``. It maps an ``_idx`` column onto ``trainer.train_dataset``,
   adds ``_idx`` to the kept signature columns, wraps ``trainer.data_collator``
   so each batch carries ``_idx``, and sets
   ``args.__gradient_collection_enabled__`` (``on_train_begin`` raises without
   it). The callback's forward pre-hook pops ``_idx`` from the model kwargs and
   uses it as the row index into the on-disk gradient store.

The callback hooks every Linear/Conv1D of ``model.base_model`` (for GPT-2: the
``transformer`` -- 4 per block: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj;
``lm_head`` is excluded), projecting each per-example gradient to
``projection_dim x projection_dim``. It writes, per epoch, a memmapped index
under ``<output_dir>/train/epoch_<e>/`` (fp16 by default) plus the processor
config (``processor.save``) at epoch end.

``normalizer=False`` maps to ``use_optimizer_state=False``: with the default
(True) the callback reads Adam's ``exp_avg_sq`` off the optimizer in every
``on_step_end`` and, from the next step on, divides each per-example gradient by
``sqrt(v)`` (scaled by lr) *before* projection, which forces bergson to form the
full [N, O, I] per-example gradient per module instead of projecting the
activations / output grads first.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers


def make_bergson_callback(
    model,
    train_dataset,
    output_dir: str,
    projection_dim: int,
    normalizer: bool,
) -> transformers.TrainerCallback:
    """Build a bergson ``GradientCollectorCallback`` for ``model`` trained on
    ``train_dataset``.

    The caller must still run
    ``bergson.huggingface.prepare_for_gradient_collection(trainer)`` on the
    Trainer that holds this callback, before ``trainer.train()``.

    ``model`` and ``train_dataset`` are only checked here: bergson discovers the
    target modules in ``on_train_begin`` (from the model Trainer passes it) and
    sizes its store in ``on_epoch_begin`` (from ``len(train_dataloader.dataset)``).
    """
    from bergson.huggingface import GradientCollectorCallback

    if "input_ids" not in getattr(train_dataset, "column_names", []):
        raise ValueError("train_dataset needs an 'input_ids' column")
    if "_idx" in train_dataset.column_names:
        raise ValueError(
            "train_dataset already has '_idx'; prepare_for_gradient_collection "
            "adds it"
        )
    if not hasattr(model, "base_model"):
        raise ValueError("expected a transformers PreTrainedModel")

    return GradientCollectorCallback(
        path=Path(output_dir),
        projection_dim=projection_dim,
        use_optimizer_state=normalizer,
        # Everything else at bergson 2.5.1's defaults, spelled out:
        # include_bias=False, dtype=np.float16, accumulate_grads=False,
        # scale_by_lr=True, track_order=False, attention_cfgs={}.
    )


# --------------------------------------------------------------------------- #
# Benchmark
# --------------------------------------------------------------------------- #

N_LAYER, N_EMBD, N_HEAD, SEQ, VOCAB = 4, 256, 4, 128, 50257
BATCH = 16
STEPS = 3
PROJ = 16


def _collate(features):
    ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}


class _StepTimer(transformers.TrainerCallback):
    def __init__(self):
        self.t_begin = None
        self.step_ends: list[float] = []

    def on_step_begin(self, args, state, control, **kw):
        if self.t_begin is None:
            self.t_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.step_ends.append(time.perf_counter())


def _make_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=N_LAYER, n_embd=N_EMBD, n_head=N_HEAD, n_positions=SEQ,
        vocab_size=VOCAB,
    )
    return GPT2LMHeadModel(cfg).float()


def _run(mode: str, ds, workdir: str, steps: int = STEPS) -> dict:
    from transformers import Trainer, TrainingArguments

    model = _make_model()
    args = TrainingArguments(
        output_dir=os.path.join(workdir, f"trainer_{mode}"),
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        num_train_epochs=1,
        learning_rate=1e-4,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    timer = _StepTimer()
    callbacks = [timer]
    bergson_dir = os.path.join(workdir, f"bergson_{mode}")
    if mode != "plain":
        callbacks.append(
            make_bergson_callback(
                model, ds, bergson_dir, projection_dim=PROJ,
                normalizer=(mode == "bergson_default"),
            )
        )
    trainer = Trainer(
        model=model, args=args, train_dataset=ds, data_collator=_collate,
        callbacks=callbacks,
    )
    if mode != "plain":
        from bergson.huggingface import prepare_for_gradient_collection

        prepare_for_gradient_collection(trainer)  # untimed: a tiny .map()

    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0

    out = {"mode": mode, "total_s": total, "ex_per_s": steps * BATCH / total}
    ends = timer.step_ends
    if len(ends) >= 2:  # steady state: steps 2..N (step 1 has no Adam state yet)
        out["steady_ex_per_s"] = (len(ends) - 1) * BATCH / (ends[-1] - ends[0])

    if mode != "plain":
        cb = callbacks[-1]
        out["n_modules"] = len(cb.grad_sizes)
        out["dims"] = sum(cb.grad_sizes.values())
        files = sorted(
            str(p.relative_to(bergson_dir)) for p in Path(bergson_dir).rglob("*")
            if p.is_file()
        )
        out["files"] = files
        from bergson.data import load_gradients

        try:
            import numpy as np

            g = np.asarray(load_gradients(os.path.join(bergson_dir, "train", "epoch_0")))
            out["store_shape"] = g.shape
            out["rows_nonzero"] = int((np.abs(g).sum(1) > 0).sum())
            out["all_finite"] = bool(np.isfinite(g).all())
        except Exception as e:  # noqa: BLE001 - probe: report, don't die
            out["load_error"] = repr(e)
    return out


def main() -> None:
    from datasets import Dataset

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    n = STEPS * BATCH  # exactly one epoch of STEPS steps
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, VOCAB, (n, SEQ), generator=g).tolist()
    ds = Dataset.from_dict({"input_ids": rows})

    workdir = tempfile.mkdtemp(prefix="bergson_cb_probe_")
    try:
        _run("plain", ds, workdir, steps=1)  # warm-up, untimed
        results = [
            _run(m, ds, workdir)
            for m in ("plain", "bergson_default", "bergson_no_normalizer")
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    base = results[0]
    print(f"\nGPT-2 {N_LAYER}x{N_EMBD}, batch {BATCH}x{SEQ}, {STEPS} steps, "
          f"{torch.get_num_threads()} CPU threads, fp32, proj {PROJ}x{PROJ}/module")
    for r in results:
        rel = base["ex_per_s"] / r["ex_per_s"] - 1
        line = (f"{r['mode']:>22}: {r['ex_per_s']:6.2f} ex/s overall "
                f"({r['total_s']:.2f}s, overhead {rel:+.0%})")
        if "steady_ex_per_s" in r:
            srel = base["steady_ex_per_s"] / r["steady_ex_per_s"] - 1
            line += f"; steps 2-{STEPS}: {r['steady_ex_per_s']:6.2f} ex/s ({srel:+.0%})"
        print(line)
        for k in ("n_modules", "dims", "store_shape", "rows_nonzero", "all_finite", "files",
                  "load_error"):
            if k in r:
                print(f"{'':>24}{k}: {r[k]}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
