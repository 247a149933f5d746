"""Curvature in sketch space and the buyer's query ``q = (F + lambda I)^-1 g``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

__all__ = ["MIN_DAMPING_TO_NONZERO_MEAN", "CurvatureAccumulator", "Solution", "solve_query"]


FLUSH_ROWS = 512  # sketches kept before one float64 rank-r update of the k x k sum


class CurvatureAccumulator:
    """Running ``sum_i s_i s_i^T`` (``float64``) and the example count; ``F = sum / n``.

    Sketches are kept as they come (their own dtype, on the CPU) until ``flush_rows`` of them
    are pending, then added in one ``float64`` GEMM: a rank-16 update of a 4096 x 4096 float64
    matrix per micro-batch is bound by reading and writing its 134 MB, a rank-512 update by
    arithmetic. The products are the same float64 products; only the order of the sums
    changes (relative differences ~1e-16, ``tests/test_curvature.py``). ``flush_rows=1``
    updates at every call, as before."""

    def __init__(self, dim: int, flush_rows: int = FLUSH_ROWS) -> None:
        self._sum = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = 0
        self.flush_rows = max(1, int(flush_rows))
        self._pending: list[torch.Tensor] = []
        self._pending_rows = 0

    @property
    def sum(self) -> torch.Tensor:
        """``sum_i s_i s_i^T`` over every sketch added so far (pending ones included)."""
        self.flush()
        return self._sum

    @sum.setter
    def sum(self, value: torch.Tensor) -> None:
        self._pending, self._pending_rows = [], 0
        self._sum = value

    def add(self, sketches: torch.Tensor) -> None:
        s = sketches.detach().to("cpu")
        self._pending.append(s)
        self._pending_rows += s.shape[0]
        self.count += s.shape[0]
        if self._pending_rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Add the pending sketches to the sum (one GEMM)."""
        if not self._pending:
            return
        s = torch.cat([p.to(torch.float64) for p in self._pending])
        self._pending, self._pending_rows = [], 0
        self._sum.addmm_(s.T, s)  # in place: no k x k temporary

    def all_reduce(self) -> None:
        """Sum over ranks (collective: call it on every rank)."""
        self.flush()
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


# Against a rank-deficient F, lambda is at least this fraction of F's mean *nonzero* eigenvalue
# (trace(F) / rank(F)), so cond(F + lambda I) <= 1 + rank / MIN: F's null space is an artefact of
# too few training sketches, and a query amplified ~1/lambda along it would be noise. Default
# settings stay clear of it (damping 0.1 reaches it only with k > 100 x rank).
MIN_DAMPING_TO_NONZERO_MEAN = 1e-3


@dataclass
class Solution:
    query: torch.Tensor  # [k] float64
    damping: float  # absolute lambda, as used
    eigenvalues: tuple[float, float]  # (min, max) of F
    rank: int | None = None  # numerical rank of F (None: no F)


def solve_query(
    curvature: torch.Tensor | None, gradient: torch.Tensor, damping: float, preconditioner: str
) -> Solution:
    """``q = (F + lambda I)^-1 g`` with ``lambda = damping * trace(F) / k`` (Cholesky), or
    ``q = g`` for the identity preconditioner (``F`` is still reported when given).

    When ``F`` is rank-deficient (fewer training sketches than ``k``) and that ``lambda`` is
    below ``MIN_DAMPING_TO_NONZERO_MEAN`` times the mean nonzero eigenvalue ``trace(F) / rank``,
    ``lambda`` is raised to it (a ``RuntimeWarning`` states the value; :attr:`Solution.damping`
    reports it): ``trace(F) / k`` averages in the zero eigenvalues, so a small relative damping
    would leave ``q`` ~ ``g / lambda`` along the null space, orders of magnitude above the rest.
    """
    g = gradient.to(torch.float64)
    if curvature is None:
        if preconditioner != "identity":
            raise ValueError("The 'fisher' preconditioner needs a curvature matrix.")
        return Solution(g.clone(), 0.0, (float("nan"), float("nan")))
    f = curvature.to(torch.float64)
    k = f.shape[0]
    eig = torch.linalg.eigvalsh(f)
    top = float(eig[-1])
    rank = int((eig > max(top, 0.0) * k * torch.finfo(torch.float64).eps).sum())
    lam = damping * float(torch.trace(f)) / k
    extremes = (float(eig[0]), top)
    if preconditioner == "identity":
        return Solution(g.clone(), lam, extremes, rank)
    if lam <= 0:
        raise ValueError("The curvature has zero trace: every training sketch was zero.")
    floor = MIN_DAMPING_TO_NONZERO_MEAN * float(torch.trace(f)) / max(rank, 1)
    if rank < k and lam < floor:
        warnings.warn(
            f"The curvature F has rank {rank} of {k} (fewer training sketches than k?): damping {damping:g} * "
            f"trace(F)/k = {lam:.3g} would amplify the query ~{top / lam:.0e}x along F's null space. Using "
            f"lambda = {floor:.3g} ({MIN_DAMPING_TO_NONZERO_MEAN:g} x F's mean nonzero eigenvalue, trace(F)/rank) "
            "instead; accumulate more training examples than k, lower proj_dim or raise damping.",
            RuntimeWarning,
            stacklevel=2,
        )
        lam = floor
    chol = torch.linalg.cholesky(f + lam * torch.eye(k, dtype=torch.float64))
    q = torch.cholesky_solve(g[:, None], chol)[:, 0]
    return Solution(q, lam, extremes, rank)
