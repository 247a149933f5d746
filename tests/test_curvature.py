"""`solve_query`'s damping: relative to the spectrum, and never so small against a rank-deficient
F (fewer training sketches than k) that the query blows up along F's null space."""

from __future__ import annotations

import warnings

import pytest
import torch

from tip_hf.curvature import MIN_DAMPING_TO_NONZERO_MEAN, CurvatureAccumulator, solve_query


def curvature(n: int, k: int = 64, seed: int = 0) -> torch.Tensor:
    s = torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return s.T @ s / n


def test_rank_deficient_curvature_gets_bounded_damping():
    """n = 5 sketches at k = 64 and relative damping 1e-6: lambda = 1e-6 tr(F)/k would leave
    cond(F + lambda I) ~ 2e7 and |q| ~ 2e7 |g| / lambda_max (along the null space)."""
    f, g = curvature(5), torch.randn(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eig = torch.linalg.eigvalsh(f)
    with pytest.warns(RuntimeWarning, match=r"rank 5 of 64.*lambda = ") as record:
        solution = solve_query(f, g, 1e-6, "fisher")
    lam = solution.damping
    assert f"{lam:.3g}" in str(record[0].message)
    assert lam == pytest.approx(MIN_DAMPING_TO_NONZERO_MEAN * torch.trace(f).item() / 5, rel=1e-12)
    assert solution.rank == 5
    assert (eig[-1] + lam) / (eig[0] + lam) <= 1 + 5 / MIN_DAMPING_TO_NONZERO_MEAN  # bounded condition number
    q = solution.query
    torch.testing.assert_close(f @ q + lam * q, g)  # it is the solve with the lambda it reports
    assert q.norm() <= g.norm() / lam * (1 + 1e-9)
    assert q.norm() >= 0.1 * g.norm() / lam  # g has a null-space part: q is of order |g| / lambda, not more
    assert q.norm() <= 5 * g.norm() / (MIN_DAMPING_TO_NONZERO_MEAN * eig[-1])  # was 1.7e7 x |g| / lambda_max


def test_enough_damping_or_full_rank_is_left_alone():
    g = torch.randn(64, dtype=torch.float64)
    for f, damping in ((curvature(200), 1e-6), (curvature(5), 0.1)):  # full rank; rank 5 but damped enough
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            solution = solve_query(f, g, damping, "fisher")
        assert solution.damping == pytest.approx(damping * torch.trace(f).item() / 64, rel=1e-12)
    assert solve_query(curvature(200), g, 0.1, "fisher").rank == 64


def test_identity_preconditioner_is_untouched():
    f, g = curvature(5), torch.randn(64, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solution = solve_query(f, g, 1e-6, "identity")
    assert torch.equal(solution.query, g)
    assert solution.damping == pytest.approx(1e-6 * torch.trace(f).item() / 64, rel=1e-12)


def test_buffered_curvature_equals_per_batch_updates() -> None:
    """Sketches held back and added in one GEMM give the per-micro-batch sum up to summation
    order, whatever the flush size, and every read (matrix, sum) sees the pending ones."""
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(int(n), 96, generator=gen) for n in torch.randint(1, 20, (40,), generator=gen)]
    reference = CurvatureAccumulator(96, flush_rows=1)
    for batch in batches:
        reference.add(batch)
    for flush in (7, 64, 10_000):
        buffered = CurvatureAccumulator(96, flush_rows=flush)
        for batch in batches:
            buffered.add(batch)
        assert buffered.count == reference.count
        torch.testing.assert_close(buffered.matrix, reference.matrix, rtol=1e-13, atol=1e-13)
        exact = torch.cat(batches).double()
        torch.testing.assert_close(buffered.sum, exact.T @ exact, rtol=1e-13, atol=1e-12)
