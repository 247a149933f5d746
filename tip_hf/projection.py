"""The seeded Johnson-Lindenstrauss map R^D -> R^k, structured so it never forms D x k.

Two stages, both unbiased (``E[P^T P] = I``), both seeded by name (see :mod:`tip_hf.rng`):

1. **Kronecker blocks per module.** A module's per-example weight gradient is
   ``G = sum_t delta_t x_t^T`` (``d_out x d_in``). Each of ``B`` independent blocks projects
   it as ``P_out^b G P_in^b^T = sum_t (P_out^b delta_t)(P_in^b x_t)^T`` (``r x r``) without
   forming ``G``: the cost is ``T * B * r * (d_out + d_in + r)`` per example instead of the
   ``T * d_out * d_in`` of a weight gradient. ``P`` are Rademacher (+-1/sqrt(r)) factors; a
   side no wider than ``r`` (e.g. LoRA's rank side) uses the identity, exactly, and a module
   whose gradient is no larger than its blocks' output (a small head, a LoRA factor at large
   ``k``) is taken exactly: projecting it would only add noise. Summing
   ``B`` independent blocks divides the variance of inner products by ``B``: one ``r x r``
   Kronecker block estimates a rank-one inner product with relative error about
   ``sqrt(2 / r)``, a dense JL map with ``k`` rows about ``sqrt(1 / k)``.
2. **Signed fold to exactly k.** The concatenated block outputs (dimension ``M``) are
   multiplied by random signs, randomly permuted (zero-padded to a multiple of ``k``) and
   folded: output ``j`` sums the ``ceil(M / k)`` coordinates that land on ``j`` -- a
   balanced CountSketch. When ``M == k`` it is a signed permutation, i.e. lossless.

Everything is generated from ``(seed, module name, role, block)`` by integer operations, so
the matrix is bit-identical on every device; floating-point results differ only by the
summation order of matmuls (~1e-7 relative).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import rng
from .targets import Target

__all__ = ["PROJECTION_VERSION", "ModuleBlock", "KroneckerProjection"]

PROJECTION_VERSION = "kron-fold-2"
AUTO_MIN_BLOCKS = 4
AUTO_OVERSAMPLING = 4


@dataclass(frozen=True)
class ModuleBlock:
    """Where one target module lands in the intermediate vector and how it is projected."""

    target: Target
    r_out: int
    r_in: int
    blocks: int
    offset: int

    @property
    def project_out(self) -> bool:
        return self.r_out < self.target.d_out

    @property
    def project_in(self) -> bool:
        return self.r_in < self.target.d_in

    @property
    def gradient_first(self) -> bool:
        """Contract over tokens before projecting: the input side is kept exactly (LoRA's B
        factor, whose inputs are ``r_lora`` wide, or an exact head). The inputs are then no
        wider than their projection, so keeping them costs nothing extra, and forming the
        per-example gradient ``[d_out, d_in]`` with one ``bmm`` before projecting it costs
        ``T * d_out * d_in + d_out * d_in * blocks * r`` flops instead of the
        ``T * d_out * blocks * r`` of projecting every token's output gradient: about
        ``blocks * r / d_in`` fewer (8x for LoRA r=8 at 4 blocks of 16)."""
        return not self.project_in

    @property
    def size(self) -> int:
        return self.blocks * self.r_out * self.r_in

    @property
    def scale(self) -> float:
        """``1/sqrt(blocks * r)`` over projected sides, so E[<Pa, Pb>] = <a, b>."""
        rows = (self.r_out if self.project_out else 1) * (self.r_in if self.project_in else 1)
        return 1.0 / math.sqrt(self.blocks * rows)


class KroneckerProjection:
    """Seeded two-stage JL projection over a list of target modules.

    Args:
        targets: the hooked modules, in gradient order.
        proj_dim: output dimension ``k``.
        seed: integer seed; with the module names it fixes every random number.
        factor: Kronecker factor size ``r`` per side (a side narrower than ``r`` is exact).
        blocks: independent Kronecker blocks per module; ``None`` picks the fewest blocks
            (at least 4) whose intermediate dimension reaches ``4 * proj_dim``: four 16x16
            blocks came within ~0.003 of a dense Gaussian JL map's value correlation on a
            GPT-2 4x128 (``scripts/bench_projection_quality.py``) where one block did not, and
            folding 4x more coordinates than ``k`` keeps the fold's collisions from adding
            heavy tails.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        proj_dim: int,
        seed: int,
        factor: int,
        blocks: int | None = None,
    ) -> None:
        if not targets:
            raise ValueError("KroneckerProjection needs at least one target module.")
        self.proj_dim, self.seed, self.factor = int(proj_dim), int(seed), int(factor)
        exact = {t.name for t in targets if not _projects(t, factor)}
        if blocks is None:
            # Fewest blocks whose intermediate dimension reaches 4k. A module whose gradient is
            # no larger than its share of blocks is taken exactly (projecting it would not
            # compress, only add noise), which frees budget for the rest: repeat until stable.
            while True:
                exact_dim = sum(t.numel for t in targets if t.name in exact)
                projected = sum(min(factor, t.d_out) * min(factor, t.d_in) for t in targets if t.name not in exact)
                needed = math.ceil((AUTO_OVERSAMPLING * proj_dim - exact_dim) / projected) if projected else 1
                blocks = max(AUTO_MIN_BLOCKS, needed) if projected else 1
                small = {
                    t.name
                    for t in targets
                    if t.name not in exact and t.numel <= blocks * min(factor, t.d_out) * min(factor, t.d_in)
                }
                if not small:
                    break
                exact |= small
        else:
            exact |= {t.name for t in targets if t.numel <= blocks * min(factor, t.d_out) * min(factor, t.d_in)}
        self.blocks = int(blocks)
        layout, offset = [], 0
        for target in targets:
            if target.name in exact:  # identity on both sides: the module's gradient itself
                block = ModuleBlock(target, target.d_out, target.d_in, 1, offset)
            else:
                block = ModuleBlock(target, min(factor, target.d_out), min(factor, target.d_in), self.blocks, offset)
            layout.append(block)
            offset += block.size
        self.layout: dict[str, ModuleBlock] = {b.target.name: b for b in layout}
        self.intermediate_dim = offset
        self._factors: dict[tuple[str, str], tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self._fold: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def input_dim(self) -> int:
        """``D``: the number of gradient coordinates (all target weights)."""
        return sum(b.target.numel for b in self.layout.values())

    def describe(self) -> dict[str, object]:
        """The settings that fix the matrix, for manifests and reports."""
        return {
            "version": PROJECTION_VERSION,
            "seed": self.seed,
            "proj_dim": self.proj_dim,
            "factor": self.factor,
            "blocks": self.blocks,
            "input_dim": self.input_dim,
            "intermediate_dim": self.intermediate_dim,
            "stream": rng.stream_name(self.seed, module="<name>", role="<in|out>", block="<b>"),
        }

    # -- random factors ------------------------------------------------------------------
    def _side(self, block: ModuleBlock, role: str) -> torch.Tensor | None:
        d = block.target.d_out if role == "out" else block.target.d_in
        r = block.r_out if role == "out" else block.r_in
        if r >= d:
            return None
        mats = [
            rng.rademacher(rng.stream_name(self.seed, module=block.target.name, role=role, block=b), (r, d))
            for b in range(block.blocks)
        ]
        return torch.from_numpy(np.stack(mats)).reshape(block.blocks * r, d)

    def factors(self, name: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(P_out, P_in)`` of a module as +-1 ``float32`` (``blocks*r x d``), ``None`` for an
        identity side. Generated once on the CPU, cached per device."""
        key = (name, str(torch.device(device)))
        if key not in self._factors:
            block = self.layout[name]
            cpu = self._factors.get((name, "cpu")) or (self._side(block, "out"), self._side(block, "in"))
            self._factors[(name, "cpu")] = cpu
            self._factors[key] = tuple(None if m is None else m.to(device) for m in cpu)  # type: ignore[assignment]
        return self._factors[key]

    def _fold_tables(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(torch.device(device))
        if key not in self._fold:
            m, k = self.intermediate_dim, self.proj_dim
            padded = math.ceil(m / k) * k
            signs = torch.from_numpy(rng.rademacher(rng.stream_name(self.seed, stage="fold-signs"), (m,)))
            # position[i] = slot of intermediate coordinate i; gather with the inverse.
            position = torch.from_numpy(rng.permutation(rng.stream_name(self.seed, stage="fold-perm"), padded))
            inverse = torch.empty_like(position)
            inverse[position] = torch.arange(padded)
            self._fold[key] = (signs.to(device), inverse.to(device))
        return self._fold[key]

    # -- the map -------------------------------------------------------------------------
    def project_side(self, name: str, role: str, values: torch.Tensor) -> torch.Tensor:
        """Project inputs (``role='in'``) or output gradients (``'out'``) of one module:
        ``[..., d] -> [..., blocks, r]`` in ``float32`` (``[..., 1, d]`` for an identity side,
        which broadcasts over blocks)."""
        block = self.layout[name]
        p_out, p_in = self.factors(name, values.device)
        factor = p_out if role == "out" else p_in
        values = values.float()
        if factor is None:
            return values.unsqueeze(-2)
        return (values @ factor.T).unflatten(-1, (block.blocks, -1))

    def keep_input(self, name: str, inputs: torch.Tensor) -> torch.Tensor:
        """What to keep of a module's inputs ``[N, T, d_in]`` until its output gradients
        arrive: their projection (:meth:`project_side`), or, for a
        :attr:`ModuleBlock.gradient_first` module, the inputs themselves (no wider than it)."""
        if self.layout[name].gradient_first:
            return inputs
        return self.project_side(name, "in", inputs)

    def sketch_module(
        self, name: str, kept: torch.Tensor, deltas: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-example sketch of one module from what :meth:`keep_input` kept and the output
        gradients ``deltas`` ``[N, T, d_out]``: ``[N, size]`` ``float32``, scaled.

        ``mask`` ``[N, T]`` (True on real tokens) zeroes the other tokens on both sides with
        ``where``, so a NaN at a padding position cannot leak into the sum."""
        block = self.layout[name]
        if not block.gradient_first:
            projected = self.project_side(name, "out", deltas)
            return self.combine(name, _where(projected, mask), _where(kept, mask))
        p_out = self.factors(name, deltas.device)[0]
        x, d = _where(kept.float(), mask), _where(deltas.float(), mask)
        if p_out is None:  # both sides exact: the gradient itself, sum_t d_t x_t^T
            g = d.transpose(1, 2) @ x
        else:  # G^T = sum_t x_t d_t^T [N, d_in, d_out], then P_out G per block -> [N, B, r, d_in]
            g = ((x.transpose(1, 2) @ d) @ p_out.T).unflatten(-1, (block.blocks, -1)).permute(0, 2, 3, 1)
        return g.reshape(deltas.shape[0], block.size) * block.scale

    def combine(self, name: str, deltas: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Per-example Kronecker sketch of one module from projected sides:
        ``sum_t deltas[:, t, b] inputs[:, t, b]^T`` for every block ``b``.

        Args:
            deltas: ``[N, T, blocks or 1, r_out]`` projected output gradients.
            inputs: ``[N, T, blocks or 1, r_in]`` projected inputs.

        Returns:
            ``[N, blocks * r_out * r_in]`` (``float32``), already scaled.
        """
        block = self.layout[name]
        outer = deltas.permute(0, 2, 3, 1) @ inputs.transpose(1, 2)  # [N, B, r_out, r_in]
        outer = outer.expand(-1, block.blocks, -1, -1)  # both sides exact: a single block
        return outer.flatten(1) * block.scale

    def project(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sketch explicit per-example weight gradients, ``{name: [N, *weight.shape]}`` for
        every target (storage layout), into ``[N, k]``. The same map as the hooks, for
        gradients you already have (tests, baselines, other gradient sources)."""
        missing = set(self.layout) - set(grads)
        if missing:
            raise KeyError(f"gradients missing for targets {sorted(missing)[:5]}")
        n = next(iter(grads.values())).shape[0]
        device = next(iter(grads.values())).device
        z = torch.zeros(n, self.intermediate_dim, device=device)
        for name, block in self.layout.items():
            g = grads[name].float()
            if block.target.kind == "conv1d":
                g = g.transpose(-1, -2)  # -> [N, d_out, d_in]
            # G = sum_t delta_t x_t^T with x_t = e_t (t = input index), delta_t = G[:, t]
            deltas = self.project_side(name, "out", g.transpose(-1, -2))  # [N, d_in, blocks, r_out]
            eye = torch.eye(block.target.d_in, device=device).expand(n, -1, -1)
            inputs = self.project_side(name, "in", eye)  # [N, d_in, blocks, r_in]
            z[:, block.offset : block.offset + block.size] = self.combine(name, deltas, inputs)
        return self.fold(z)

    def fold(self, intermediate: torch.Tensor) -> torch.Tensor:
        """``[N, M] -> [N, k]``: signed, permuted, zero-padded, folded."""
        m, k = self.intermediate_dim, self.proj_dim
        if intermediate.shape[-1] != m:
            raise ValueError(f"expected intermediate dimension {m}, got {intermediate.shape[-1]}")
        signs, inverse = self._fold_tables(intermediate.device)
        signed = intermediate * signs
        padded = torch.nn.functional.pad(signed, (0, inverse.numel() - m))
        return padded[..., inverse].unflatten(-1, (-1, k)).sum(-2)

    def matrix(self, max_entries: int = 200_000_000) -> torch.Tensor:
        """The explicit ``D x k`` matrix ``P`` with ``sketch = g @ P`` (``float64``), where ``g``
        concatenates the target weights' gradients, each flattened in its storage layout
        (``nn.Linear``: ``d_out x d_in``; ``Conv1D``: ``d_in x d_out``). For small models and
        tests only."""
        d, k = self.input_dim, self.proj_dim
        if d * k > max_entries:
            raise MemoryError(
                f"projection_matrix() would hold {d} x {k} numbers; "
                "it is meant for small test models (raise `max_entries` if you are sure)."
            )
        signs, inverse = self._fold_tables("cpu")
        slot = torch.empty_like(inverse)
        slot[inverse] = torch.arange(inverse.numel())  # slot of each intermediate coordinate
        column = slot[: self.intermediate_dim] % k
        rows = []
        for name, block in self.layout.items():
            p_out, p_in = self.factors(name)
            t = block.target
            eye_out = torch.eye(t.d_out, dtype=torch.float64).expand(block.blocks, -1, -1)
            eye_in = torch.eye(t.d_in, dtype=torch.float64).expand(block.blocks, -1, -1)
            a = eye_out if p_out is None else p_out.double().unflatten(0, (block.blocks, -1))
            c = eye_in if p_in is None else p_in.double().unflatten(0, (block.blocks, -1))
            # entry (o, i) of G goes to intermediate (b, a, c) with weight a[b,a,o] * c[b,c,i]
            local = torch.einsum("bao,bci->oibac", a, c).reshape(t.d_out, t.d_in, -1)
            if t.kind == "conv1d":
                local = local.transpose(0, 1)
            span = slice(block.offset, block.offset + block.size)
            local = local.reshape(t.numel, -1) * (block.scale * signs[span].double())
            rows.append(torch.zeros(t.numel, k, dtype=torch.float64).index_add_(1, column[span], local))
        return torch.cat(rows)


def _where(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the tokens of ``values`` ``[N, T, ...]`` where ``mask`` ``[N, T]`` is False."""
    if mask is None:
        return values
    return torch.where(mask.view(*mask.shape, *([1] * (values.dim() - 2))), values, 0.0)


def _projects(target: Target, factor: int) -> bool:
    return factor < target.d_out or factor < target.d_in
