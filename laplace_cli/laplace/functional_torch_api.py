"""laplace-torch's kernel-assembly internals of `FunctionalLaplace`, as pure functions.

laplace-torch's unit tests call private methods of its `FunctionalLaplace` (`_kernel_batch`,
`_kernel_star`, `_init_K_MM`, `_store_K_batch`, `_get_SoD_data_loader`, ...); ours keeps them
as one-line methods over these functions. They work on dense Jacobians (B, C, P) and
laplace-torch's layouts (prior-scaled kernels M/N · J Σ₀ J'ᵀ, point pairs (B₁, B₂, C, C)); the
fitted system of this engine never reads them (it uses `functional_kernels` and `posterior.gp`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.functional_kernels import context_indices, dense_kernel

__all__ = [
    "kernel_block",
    "kernel_pairs",
    "kernel_star",
    "prior_weights",
    "sod_data_loader",
    "store_kernel_block",
    "zero_kernel_buffer",
]


def prior_weights(jacobians: Tensor, prior_factor_sod: float, prior_diag: Tensor) -> Tensor:
    """J Σ₀ scaled by the SoD factor: laplace-torch's kernels are prior-scaled (M/N · J Σ₀ J'ᵀ)."""
    w = prior_factor_sod / prior_diag.to(jacobians)
    return jacobians * w


def kernel_pairs(K: Tensor, independent: bool) -> Tensor:  # noqa: N803
    """A kernel block (B₁, C, B₂, C) in laplace-torch's point-pair layout (B₁, B₂, C, C)."""
    return K if independent else K.permute(0, 2, 1, 3)


def kernel_block(J1: Tensor, J2: Tensor, independent: bool) -> Tensor:  # noqa: N803
    """J₁ J₂ᵀ as (b₁·C, b₂·C), or (b₁, b₂, C) with independent outputs."""
    K = dense_kernel(J1, J2, independent)
    if independent:
        return K
    b1, c, b2, _ = K.shape
    return K.reshape(b1 * c, b2 * c)


def kernel_star(J1: Tensor, jacobians: Tensor, independent: bool, joint: bool) -> Tensor:  # noqa: N803
    """J₁ Jᵀ per point (B, C, C) / (B, C); joint: (B, B, C, C) / (B, B, C)."""
    if joint:
        return kernel_pairs(dense_kernel(J1, jacobians, independent), independent)
    if independent:
        return (J1 * jacobians).sum(-1)
    return torch.einsum("bcp,bep->bce", J1, jacobians)


def zero_kernel_buffer(
    m: int, c: int, independent: bool, dtype: torch.dtype, device: torch.device
) -> Tensor | list[Tensor]:
    """A zeroed kernel buffer for `store_kernel_block`: (M·C, M·C), or C × (M, M) independent."""
    kw: dict[str, Any] = {"dtype": dtype, "device": device}
    if independent:
        return [torch.zeros(m, m, **kw) for _ in range(c)]
    return torch.zeros(m * c, m * c, **kw)


def store_kernel_block(
    K: Tensor | list[Tensor] | None,  # noqa: N803
    K_batch: Tensor,  # noqa: N803
    i: int,
    j: int,
    batch_size: int | None,
    n_outputs: int | None,
    independent: bool,
) -> None:
    """Write the kernel block of context batches (i, j) and its transpose into the buffer `K`.

    K_batch: (bᵢ·C, bⱼ·C), or (bᵢ, bⱼ, C) independent; batches are `batch_size` rows.
    """
    if K is None or batch_size is None:
        raise BadInputError("call _init_K_MM and set batch_size before _store_K_batch")
    bs = int(batch_size)
    if independent:
        assert isinstance(K, list)
        r, c = (
            slice(i * bs, i * bs + K_batch.shape[0]),
            slice(j * bs, j * bs + K_batch.shape[1]),
        )
        for o, K_o in enumerate(K):
            K_o[r, c] = K_batch[:, :, o]
            K_o[c, r] = K_batch[:, :, o].T
        return
    assert isinstance(K, Tensor)
    n_out = int(n_outputs)  # type: ignore[arg-type]
    r0, c0 = i * bs * n_out, j * bs * n_out
    r, c = slice(r0, r0 + K_batch.shape[0]), slice(c0, c0 + K_batch.shape[1])
    K[r, c] = K_batch
    K[c, r] = K_batch.T


def sod_data_loader(train_loader: Any, n_subset: int | None, context: str, seed: int) -> Any:
    """A loader over the context rows of `train_loader.dataset` (laplace-torch's draw order)."""
    from torch.utils.data import DataLoader

    n = len(train_loader.dataset)
    m = n if n_subset is None else int(n_subset)
    if context == "random":
        order = np.random.default_rng(seed).choice(list(range(n)), m, replace=False)
    else:
        order = context_indices(n, m, context, seed)
    return DataLoader(
        train_loader.dataset,
        batch_size=train_loader.batch_size,
        sampler=[int(i) for i in order],
    )
