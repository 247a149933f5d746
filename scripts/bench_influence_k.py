"""Sketched influence vs exact influence as the sketch dimension k shrinks (Lemma 3.1, k < D).

Problem: the real pretrained MiniLM (BERT) with a seeded 2-way classifier head on real
movie-review sentiment; targets = the whole head (D = 2 x 384 = 768). Exact values
``-grad L_eval^T (H + lambda I)^-1 grad L_z`` use the full Hessian of the training loss from
``torch.autograd.functional.hessian``; sketched values use our projection P (D x k) with
``F = P^T H P`` and the same relative damping. Candidates: 80 real snippets from five
sources (movie reviews, the same with flipped labels, Amazon reviews, NYT editorials, movie
reviews with random labels). Spearman rank correlation per k, mean and min over projection
seeds, next to a dense Gaussian JL map of the same k.

    python scripts/bench_influence_k.py
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tip_hf import GradientSketcher, ValuationSpec
from tip_hf.assets import Snippet, minilm_path, sentiment_snippets
from tip_hf.curvature import solve_query


@dataclass
class LemmaProblem:
    model: torch.nn.Module
    hessian: torch.Tensor  # D x D, float64
    eval_gradient: torch.Tensor  # D (mean over the eval set)
    candidate_gradients: torch.Tensor  # N x D
    candidates: dict[str, torch.Tensor]  # the tokenised candidate batch (to check the sketcher)

    @property
    def dim(self) -> int:
        return self.eval_gradient.numel()

    def exact(self, damping: float) -> torch.Tensor:
        lam = damping * torch.trace(self.hessian).item() / self.dim
        eye = torch.eye(self.dim, dtype=torch.float64)
        return self.candidate_gradients @ torch.linalg.solve(self.hessian + lam * eye, self.eval_gradient)

    def sketched(self, projection: torch.Tensor, damping: float) -> torch.Tensor:
        """Values in sketch space with ``F = P^T H P`` and ``lambda = damping * tr(F) / k``."""
        p = projection.double()
        solution = solve_query(p.T @ self.hessian @ p, self.eval_gradient @ p, damping, "fisher")
        return (self.candidate_gradients @ p) @ solution.query

    def spec(self, k: int, damping: float, seed: int = 0) -> ValuationSpec:
        return ValuationSpec(
            targets=["classifier"], proj_dim=k, seed=seed, task="sequence_classification", damping=damping
        )


def lemma_problem(n_train: int = 96, n_eval: int = 32) -> LemmaProblem:
    movies = sentiment_snippets("movies")
    amazon, nyt = sentiment_snippets("amazon"), sentiment_snippets("nyt")
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)  # the new classifier head
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()

    def encode(rows: list[Snippet]) -> dict[str, torch.Tensor]:
        batch = tokenizer([r.text for r in rows], padding=True, truncation=True, max_length=48, return_tensors="pt")
        return {**batch, "labels": torch.tensor([r.label for r in rows])}

    train, evaluation = encode(movies[:n_train]), encode(movies[n_train : n_train + n_eval])
    cand = encode(movies[200:216] + movies[216:232] + amazon[:16] + nyt[:16] + movies[232:248])
    cand["labels"][16:32] = 1 - cand["labels"][16:32]  # flipped labels
    cand["labels"][64:80] = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(1))  # random labels

    # targets = the head only, so the body is fixed: logits = pooled @ W^T + b exactly
    def pooled(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            body = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return body.pooler_output.double()

    w0 = model.classifier.weight.detach().double().flatten()
    bias = model.classifier.bias.detach().double()

    def loss(w: torch.Tensor, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(h @ w.view(2, -1).T + bias, y)

    def per_example(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h, y = pooled(batch), batch["labels"]
        rows = []
        for i in range(len(y)):
            w = w0.clone().requires_grad_(True)
            rows.append(torch.autograd.grad(loss(w, h[i : i + 1], y[i : i + 1]), w)[0])
        return torch.stack(rows)

    h_train = pooled(train)
    hessian = torch.autograd.functional.hessian(lambda w: loss(w, h_train, train["labels"]), w0)
    return LemmaProblem(
        model=model,
        hessian=(hessian + hessian.T) / 2,
        eval_gradient=per_example(evaluation).mean(0),
        candidate_gradients=per_example(cand),
        candidates=cand,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--dampings", type=float, nargs="+", default=[0.1, 1.0])
    args = parser.parse_args()
    problem = lemma_problem()
    d = problem.dim
    ks = [d // 32, d // 16, d // 8, d // 4, d // 2, d]
    print(f"D = {d}; Spearman(sketched, exact) over 80 candidates, mean [min] over {args.seeds} projection seeds\n")
    print("| damping | projection | " + " | ".join(f"k={k} (D/{d // k})" for k in ks) + " |")
    print("|---|---|" + "---|" * len(ks))
    for damping in args.dampings:
        exact = problem.exact(damping)
        for name in ("tip_hf (Kronecker+fold)", "dense Gaussian"):
            cells = []
            for k in ks:
                rhos = []
                for seed in range(args.seeds):
                    if name.startswith("tip_hf"):
                        p = GradientSketcher(problem.model, problem.spec(k, damping, seed)).projection_matrix()
                    else:
                        gen = torch.Generator().manual_seed(seed)
                        p = torch.randn(d, k, generator=gen, dtype=torch.float64) / k**0.5
                    rhos.append(spearmanr(exact.numpy(), problem.sketched(p, damping).numpy())[0])
                cells.append(f"{sum(rhos) / len(rhos):.3f} [{min(rhos):.3f}]")
            print(f"| {damping} | {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
