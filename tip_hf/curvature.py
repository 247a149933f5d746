"""Curvature in sketch space and the buyer's query ``q = (F + lambda I)^-1 g``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CurvatureAccumulator", "solve_query"]


class CurvatureAccumulator:
    """Running ``sum_i s_i s_i^T`` (``float64``) and the example count; ``F = sum / n``."""

    def __init__(self, dim: int) -> None:
        self.sum = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = 0

    def add(self, sketches: torch.Tensor) -> None:
        s = sketches.detach().to("cpu", torch.float64)
        self.sum.addmm_(s.T, s)  # in place: no k x k temporary
        self.count += s.shape[0]

    def all_reduce(self) -> None:
        """Sum over ranks (collective: call it on every rank)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = torch.distributed.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            packed = torch.cat([self.sum.flatten(), torch.tensor([float(self.count)], dtype=torch.float64)]).to(device)
            torch.distributed.all_reduce(packed)
            packed = packed.cpu()
            self.sum = packed[:-1].view_as(self.sum).clone()
            self.count = round(packed[-1].item())

    @property
    def matrix(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("No training sketches were accumulated; check the callback's step selection.")
        return self.sum / self.count


@dataclass
class Solution:
    query: torch.Tensor  # [k] float64
    damping: float  # absolute lambda
    eigenvalues: tuple[float, float]  # (min, max) of F


def solve_query(
    curvature: torch.Tensor | None, gradient: torch.Tensor, damping: float, preconditioner: str
) -> Solution:
    """``q = (F + lambda I)^-1 g`` with ``lambda = damping * trace(F) / k`` (Cholesky), or
    ``q = g`` for the identity preconditioner (``F`` is still reported when given)."""
    g = gradient.to(torch.float64)
    if curvature is None:
        if preconditioner != "identity":
            raise ValueError("The 'fisher' preconditioner needs a curvature matrix.")
        return Solution(g.clone(), 0.0, (float("nan"), float("nan")))
    f = curvature.to(torch.float64)
    eig = torch.linalg.eigvalsh(f)
    lam = damping * float(torch.trace(f)) / f.shape[0]
    if preconditioner == "identity":
        return Solution(g.clone(), lam, (float(eig[0]), float(eig[-1])))
    if lam <= 0:
        raise ValueError("The curvature has zero trace: every training sketch was zero.")
    chol = torch.linalg.cholesky(f + lam * torch.eye(f.shape[0], dtype=torch.float64))
    q = torch.cholesky_solve(g[:, None], chol)[:, 0]
    return Solution(q, lam, (float(eig[0]), float(eig[-1])))
