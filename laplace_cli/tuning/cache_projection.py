"""How `PredictiveCache` (tuning/cache.py) projects a batch's Jacobians into the posterior's basis.

Three steps, in the order the cache runs them: `fold_plan` decides once which biases share their
weight's block; `project_factors` turns one row chunk's Jacobian factors into per-group pieces
(rank-one (u, s²) or dense U) in the posterior's eigenbasis; `assemble_blocks` stacks the pieces
of all chunks into the blocks whose variance is evaluated at every (δ, s) of a grid. The maths is
in cache.py's docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.enums import Structure
from laplace_cli.subsets.base import DenseFactor, LayerFactor
from laplace_cli.tuning.cache_blocks import (
    Block,
    DenseBlock,
    Part,
    RankOneBlock,
    rotate,
    shared_rows,
)

__all__ = ["Pieces", "assemble_blocks", "fold_plan", "project_factors"]

#: Per parameter tensor: (u, s²) for a rank-one weight block, (U, None) otherwise.
Pieces = list[tuple[Tensor, Tensor | None]]


def fold_plan(structure: Structure, posterior: Any, groups: Sequence[Any]) -> dict[int, int]:
    """Biases that fold into their weight's block: {bias group: weight group}.

    A bias shares its weight's block when both belong to the same layer, the weight's
    Jacobian comes as factors (kind "weight") and, for K-FAC, the bias block's B has the
    weight block's eigenvectors (the same matrix Σ g gᵀ, decomposed twice). Whether the
    weight's inputs have T = 1 is only known from the data; see `project_factors`.
    """
    if structure == Structure.FULL:
        return {}
    eigs = posterior.eigendecomposition() if structure == Structure.KRON else None
    plan = {}
    for i, g in enumerate(groups):
        if g.kind != "bias" or g.module_name is None:
            continue
        for j, w in enumerate(groups):
            if w.kind == "weight" and w.module_name == g.module_name:
                if j < i and (
                    eigs is None or torch.equal(eigs[i]["B.eigvecs"], eigs[j]["B.eigvecs"])
                ):
                    plan[i] = j
                break
    return plan


def project_factors(
    factors: Sequence[Any],
    structure: Structure,
    posterior: Any,
    layout: dict[int, int],
    dtype: torch.dtype,
) -> Pieces:
    """Per group: (u, s2) for rank-one weights, (U, None) otherwise, in the posterior's basis.

    A folded bias (see `fold_plan`) gets (u of its weight, None) when the weight is rank-one,
    and its own dense Jacobian otherwise (then it is not folded: `assemble_blocks` checks).
    """
    kron = structure == Structure.KRON
    eigs = posterior.eigendecomposition() if kron else None
    parts: Pieces = []
    for i, fac in enumerate(factors):
        if isinstance(fac, DenseFactor):
            # Parameters of other modules: their dense Jacobian (a diagonal block in both).
            parts.append((fac.J.to(dtype), None))
            continue
        assert isinstance(fac, LayerFactor)
        G = shared_rows(fac.G).to(dtype)  # (N or 1, C, T, d_out)
        n_pos = G.shape[2]
        if fac.a is None:
            j = layout.get(i)
            if j is not None and parts[j][1] is not None:
                parts.append((parts[j][0], None))  # folded: its weight's u
                continue
            gsum = G[:, :, 0] if n_pos == 1 else G.sum(2)  # Σ_t G_t, (N or 1, C, d_out)
            parts.append((rotate(gsum, eigs[i]["B.eigvecs"]) if kron else gsum, None))
            continue
        a = fac.a.to(dtype)  # (N, T, d_in)
        if a.shape[1] == 1:
            u, s = G[:, :, 0], a[:, 0]  # (N or 1, C, d_out), (N, d_in)
            if kron:
                u, s = rotate(u, eigs[i]["B.eigvecs"]), rotate(s, eigs[i]["A.eigvecs"])
            parts.append((u, s**2))
            continue
        # Weight sharing: per-sample Jacobians Σ_t u_t ⊗ s_t, (N, C, d_out·d_in).
        u, s = G, a
        if kron:
            u, s = rotate(u, eigs[i]["B.eigvecs"]), rotate(s, eigs[i]["A.eigvecs"])
        p = torch.einsum("nctx,nty->ncxy", u.expand(s.shape[0], *u.shape[1:]), s)
        parts.append((p.reshape(p.shape[0], p.shape[1], -1), None))
    return parts


def assemble_blocks(
    pieces: list[Pieces],
    sizes: list[int],
    structure: Structure,
    groups: Sequence[Any],
    layout: dict[int, int],
    n_params: int,
) -> list[Block]:
    """The blocks of the cache from every chunk's pieces (`sizes`: the rows of each chunk)."""
    if structure == Structure.FULL:
        U = torch.cat([p[0][0] for p in pieces])
        return [DenseBlock(Part(0, 0, (n_params,), True), U)]
    per_param = structure == Structure.DIAG

    def stacked(i: int, k: int) -> Tensor:
        held = [p[i][k] for p in pieces]
        if all(t.shape[0] == 1 for t in held) and all(torch.equal(held[0], t) for t in held):
            return held[0]  # the same for every sample (last layer: G = I)
        return torch.cat([t.expand(n, *t.shape[1:]) for t, n in zip(held, sizes)])

    rank_one = {i for i, parts in enumerate(pieces[0]) if parts[1] is not None}
    folded = {b: w for b, w in layout.items() if w in rank_one}
    blocks: list[Block] = []
    starts = [0]
    for g in groups:
        starts.append(starts[-1] + g.numel)
    for i, g in enumerate(groups):
        if i in folded:
            continue
        if i in rank_one:
            bias = next((b for b, w in folded.items() if w == i), None)
            bias_part = (
                None if bias is None else Part(bias, starts[bias], (groups[bias].numel,), per_param)
            )
            weight = Part(i, starts[i], g.kron_shape, per_param)
            blocks.append(RankOneBlock(weight, bias_part, stacked(i, 0), stacked(i, 1)))
        else:
            blocks.append(DenseBlock(Part(i, starts[i], (g.numel,), per_param), stacked(i, 0)))
    return blocks
