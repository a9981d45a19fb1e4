"""Function-space Laplace's context points and kernels (laplace/functional.py holds the classes).

Context points: `context_indices` picks M of N rows ("random": laplace-torch's
`numpy.random.default_rng(seed).choice(N, M, replace=False)`; "first"); `gather_context`
collects them in one pass over a loader. Kernels (docs/design.md §5, K = J Jᵀ): every kernel
here is `subsets.jacobian_products.kernel` / `kernel_diagonal` over Jacobian factors, so the
context kernel is built chunk by chunk without an N×C×P Jacobian, and test, cross and dense
(laplace-torch's `Js_star`) kernels share one code path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from laplace_cli.core import likelihoods as lik
from laplace_cli.core.batches import Inputs, batch_size
from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.posterior import gp
from laplace_cli.subsets.base import DenseFactor, Factor
from laplace_cli.subsets.jacobian_products import kernel, kernel_diagonal, matmul

__all__ = [
    "cat_rows",
    "check_context_targets",
    "chunk_bounds",
    "context_indices",
    "context_kernel",
    "context_terms",
    "dense_kernel",
    "gather_context",
    "output_root",
    "point_kernels",
    "slice_rows",
    "take_rows",
]


def context_indices(n_data: int, n_context: int, strategy: str, seed: int) -> np.ndarray:
    """Row indices of the M context points among N (sorted for a single streaming pass)."""
    if not 0 < n_context <= n_data:
        raise BadInputError(
            f"n_subset (context points) must be in 1..{n_data} (the training set size), got "
            f"{n_context}"
        )
    if strategy == "first":
        return np.arange(n_context)
    if strategy == "random":
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(list(range(n_data)), n_context, replace=False))
    raise BadInputError(f"context: expected 'random' or 'first', got {strategy!r}")


def take_rows(x: Inputs, rows: Tensor) -> Inputs:
    if isinstance(x, Mapping):
        return {k: v[rows] for k, v in x.items()}
    return x[rows]


def cat_rows(parts: list[Inputs]) -> Inputs:
    if isinstance(parts[0], Mapping):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # type: ignore[index]
    return torch.cat(parts)  # type: ignore[arg-type]


def slice_rows(x: Inputs, lo: int, hi: int) -> Inputs:
    if isinstance(x, Mapping):
        return {k: v[lo:hi] for k, v in x.items()}
    return x[lo:hi]


def gather_context(
    loader: Iterable[Any],
    wanted: Tensor,
    n_data: int,
    prepare: Callable[[Any], tuple[Inputs, Tensor]],
) -> tuple[Inputs, Tensor]:
    """The inputs and targets of the rows `wanted` (sorted) of `loader`, in one pass."""
    xs: list[Inputs] = []
    ys: list[Tensor] = []
    start = 0
    for batch in loader:
        x, y = prepare(batch)
        b = batch_size(x)
        if y.shape[0] != b:  # e.g. (N, C) float targets flattened into N·C labels
            raise BadInputError(
                f"the batch has {b} inputs but {y.shape[0]} targets; classification "
                "targets are class indices of shape (N,)"
            )
        lo, hi = torch.searchsorted(wanted, torch.tensor([start, start + b])).tolist()
        if hi > lo:
            rows = (wanted[lo:hi] - start).to(y.device)
            xs.append(take_rows(x, rows))
            ys.append(y[rows])
        start += b
    if start != n_data or not xs:
        raise BadInputError(f"the train loader yielded {start} rows but its dataset has {n_data}")
    return cat_rows(xs), torch.cat(ys)


def check_context_targets(likelihood: Likelihood, y: Tensor, n_out: int) -> None:
    """Labels within the model's classes; regression targets with one column per output."""
    if likelihood == Likelihood.CLASSIFICATION and (int(y.min()) < 0 or int(y.max()) >= n_out):
        raise BadInputError(
            f"labels must lie in [0, {n_out}) for a model with {n_out} outputs, got min "
            f"{int(y.min())}, max {int(y.max())}"
        )
    if likelihood == Likelihood.REGRESSION and y.shape[-1] != n_out:
        raise BadInputError(
            f"regression targets have {y.shape[-1]} columns, the model {n_out} outputs"
        )


def chunk_bounds(m: int, rows: int) -> list[tuple[int, int]]:
    """[(lo, hi), ...]: `m` rows in chunks of at most `rows`."""
    return [(lo, min(m, lo + rows)) for lo in range(0, m, rows)]


def context_kernel(
    factors: Sequence[Sequence[Factor]],
    chunks: Sequence[tuple[int, int]],
    independent: bool,
    n_outputs: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """K = J Jᵀ over the context points from each chunk's Jacobian factors, built block by
    block (the upper triangle, mirrored): (M·C, M·C), or (C, M, M) with independent outputs."""
    m = chunks[-1][1]
    c = n_outputs
    if independent:
        K = torch.empty(m, m, c, dtype=dtype, device=device)
    else:
        K = torch.empty(m, c, m, c, dtype=dtype, device=device)
    for i, (lo, hi) in enumerate(chunks):
        for j in range(i, len(chunks)):
            lo2, hi2 = chunks[j]
            blk = kernel(factors[i], factors[j], independent).detach()
            if independent:
                K[lo:hi, lo2:hi2] = blk
                K[lo2:hi2, lo:hi] = blk.transpose(0, 1)
            else:
                K[lo:hi, :, lo2:hi2] = blk
                K[lo2:hi2, :, lo:hi] = blk.permute(2, 3, 0, 1)
    if independent:
        return K.permute(2, 0, 1).contiguous()
    return K.reshape(m * c, m * c)


def point_kernels(
    factors: Sequence[Factor],
    context_factors: Iterable[Sequence[Factor]],
    independent: bool,
    joint: bool = False,
) -> tuple[Tensor, Tensor]:
    """(k(x, x), K(x, context)) for test points given by their Jacobian factors, without the
    prior scale: k (B, C, C) / (B, C) per point, or joint (B, C, B, C) / (B, B, C); the cross
    kernel (B, C, M, C), or (B, M, C) with independent outputs."""
    if joint:
        k_star = kernel(factors, factors, independent)
    else:
        k_star = kernel_diagonal(factors, independent)
    cross = [kernel(factors, F_c, independent) for F_c in context_factors]
    return k_star, torch.cat(cross, dim=1 if independent else 2)


def dense_kernel(J1: Tensor, J2: Tensor, independent: bool) -> Tensor:
    """J₁ J₂ᵀ for dense Jacobians (B₁, C, P), (B₂, C, P): (B₁, C, B₂, C), or (B₁, B₂, C)."""
    return kernel([DenseFactor(J1)], [DenseFactor(J2)], independent)


def context_terms(
    likelihood: Likelihood,
    y_ctx: Tensor,
    chunks: Sequence[tuple[int, int]],
    cached: Sequence[tuple[Tensor, list[Factor]]],
    theta_rel: Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """(summed loss, output Hessians Λ (M, C, C), scatter mean μ (M, C)) of the context points.

    `cached`: each chunk's outputs and Jacobian factors; `theta_rel` = θ* − μ₀ as (P, 1).
    Regression: μ = y − m with m = f + J(μ₀ − θ*); classification: μ = J(θ* − μ₀).
    """
    loss = torch.zeros((), dtype=dtype, device=device)
    lams, mus = [], []
    for (lo, hi), (f_i, F_i) in zip(chunks, cached, strict=True):
        y_i = y_ctx[lo:hi]
        loss = loss + lik.summed_loss(likelihood, f_i, y_i)
        lams.append(lik.hessian(likelihood, f_i))
        j_theta = matmul(F_i, theta_rel)[..., 0]  # J(θ* − μ₀), (b, C)
        if likelihood == Likelihood.REGRESSION:
            mus.append(y_i - f_i + j_theta)  # y − m, m = f + J(μ₀ − θ*)
        else:
            mus.append(j_theta)
    return loss.detach(), torch.cat(lams).detach(), torch.cat(mus).detach()


def output_root(lam: Tensor, diagonal: bool, independent: bool) -> Tensor:
    """S of the output Hessians Λ = S Sᵀ (`posterior.gp.output_hessian_root`); independent
    outputs keep its diagonal, (M, C)."""
    S = gp.output_hessian_root(lam, diagonal=diagonal)
    if independent:
        S = S if S.ndim == 2 else torch.diagonal(S, dim1=-2, dim2=-1)
    return S
