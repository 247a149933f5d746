"""What the structured projection costs in accuracy, against exact per-example gradients.

On a GPT-2-shaped model (random weights, trained a few steps so gradients are not
degenerate) it takes exact per-example gradients g_i (autograd, one example at a time) of
all target weights, then compares, for several projection settings and a dense Gaussian JL
baseline of the same k:

- inner-product error |<Pa,Pb> - <a,b>| / (|a||b|) over example pairs (mean and max),
- per-example value correlation: v_i = <mean eval gradient, g_i> vs its sketched version
  (Pearson / Spearman), the number valuation actually uses,
- sketch throughput of each setting (examples/s on this machine).

    python scripts/bench_projection_quality.py            # ~2 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from transformers import GPT2Config, GPT2LMHeadModel

from tip_hf import GradientSketcher, ValuationSpec


def build_model(layers: int, width: int, seq: int, vocab: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=4, n_positions=seq, vocab_size=vocab)
    model = GPT2LMHeadModel(config)
    # a few steps on a repeating pattern so the model is not at its random initialisation
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pattern = torch.arange(seq).remainder(17).repeat(8, 1)
    for _ in range(20):
        opt.zero_grad()
        model(input_ids=pattern, labels=pattern).loss.backward()
        opt.step()
    return model.eval()


def exact_gradients(model, params, ids: torch.Tensor) -> torch.Tensor:
    rows = []
    for i in range(ids.shape[0]):
        x = ids[i : i + 1]
        loss = model(input_ids=x, labels=x).loss
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows).double()


def dense_gaussian(grads: torch.Tensor, k: int, seed: int, chunk: int = 65536) -> torch.Tensor:
    """grads @ R / sqrt(k), R ~ N(0,1) of shape D x k, generated chunk by chunk."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(grads.shape[0], k, dtype=torch.float64)
    for start in range(0, grads.shape[1], chunk):
        block = torch.randn(min(chunk, grads.shape[1] - start), k, generator=gen, dtype=torch.float64)
        out += grads[:, start : start + chunk] @ block
    return out / k**0.5


def quality(exact: torch.Tensor, sketched: torch.Tensor, n_eval: int) -> dict[str, float]:
    ev_exact, ev_sk = exact[:n_eval].mean(0), sketched[:n_eval].mean(0)
    cand_exact, cand_sk = exact[n_eval:], sketched[n_eval:]
    v_exact, v_sk = (cand_exact @ ev_exact).numpy(), (cand_sk @ ev_sk).numpy()
    norms = cand_exact.norm(dim=1)
    gram_exact, gram_sk = cand_exact @ cand_exact.T, cand_sk @ cand_sk.T
    off = ~torch.eye(len(norms), dtype=torch.bool)
    rel = ((gram_sk - gram_exact).abs() / torch.outer(norms, norms))[off]
    return {
        "ip_err_mean": rel.mean().item(),
        "ip_err_max": rel.max().item(),
        "pearson": float(pearsonr(v_exact, v_sk)[0]),
        "spearman": float(spearmanr(v_exact, v_sk)[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--n-eval", type=int, default=16)
    parser.add_argument("--n-candidates", type=int, default=96)
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = build_model(args.layers, args.width, args.seq, args.vocab, args.seed)
    torch.manual_seed(args.seed + 1)
    n = args.n_eval + args.n_candidates
    eval_ids = torch.arange(args.seq).remainder(17).repeat(args.n_eval, 1)
    eval_ids = torch.where(torch.rand(eval_ids.shape) < 0.3, torch.randint(0, args.vocab, eval_ids.shape), eval_ids)
    cand_ids = torch.randint(0, args.vocab, (args.n_candidates, args.seq))
    mix = torch.rand(args.n_candidates, 1) < 0.5  # half the candidates look like the eval data
    cand_ids = torch.where(mix & (torch.rand(cand_ids.shape) < 0.7), torch.arange(args.seq).remainder(17), cand_ids)
    ids = torch.cat([eval_ids, cand_ids])

    targets = ["transformer.h.*.attn.c_attn", "transformer.h.*.attn.c_proj", "transformer.h.*.mlp.*"]
    base = GradientSketcher(model, ValuationSpec(targets=targets, proj_dim=1024))
    params = [p for _, p in base.target_parameters()]
    t0 = time.perf_counter()
    exact = exact_gradients(model, params, ids)
    t_exact = n / (time.perf_counter() - t0)
    print(
        f"model: GPT-2 {args.layers}x{args.width}, seq {args.seq}; targets: {len(params)} modules, "
        f"D = {exact.shape[1]:,}; exact gradients {t_exact:.1f} ex/s (batch of one)\n"
    )
    print(
        f"{'projection':<34}{'k':>6}{'M':>8}{'ip err mean':>13}{'ip err max':>12}"
        f"{'value r':>10}{'value rho':>11}{'ex/s':>8}"
    )
    for k in args.dims:
        rows = [("dense Gaussian JL (D x k)", None, None)]
        for factor in (16, 32, 64):
            for blocks in (1, 4):
                rows.append((f"kronecker r={factor} blocks={blocks}", factor, blocks))
        for label, factor, blocks in rows:
            if factor is None:
                t0 = time.perf_counter()
                sketched = dense_gaussian(exact, k, args.seed)
                rate, m = float("nan"), exact.shape[1]
            else:
                spec = ValuationSpec(targets=targets, proj_dim=k, proj_factor=factor, proj_blocks=blocks)
                sketcher = GradientSketcher(model, spec)
                sketcher.sketch({"input_ids": ids[:16]})  # warm-up: factor generation
                t0 = time.perf_counter()
                sketched = torch.cat([sketcher.sketch({"input_ids": ids[i : i + 16]}) for i in range(0, n, 16)])
                rate, m = n / (time.perf_counter() - t0), sketcher.projection.intermediate_dim
                sketched = sketched.double()
            q = quality(exact, sketched, args.n_eval)
            print(
                f"{label:<34}{k:>6}{m:>8}{q['ip_err_mean']:>13.4f}{q['ip_err_max']:>12.4f}"
                f"{q['pearson']:>10.4f}{q['spearman']:>11.4f}{rate:>8.0f}"
            )
        print()


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
