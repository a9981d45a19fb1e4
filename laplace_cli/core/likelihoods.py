"""Likelihoods: summed losses, their gradients and the square roots of their Hessians in output space.

Conventions follow laplace-torch (docs/design.md §5): the loss is summed over the data, regression uses
unit observation noise (½‖y − f‖²) and the noise enters later as a factor 1/σ², so that the log
marginal likelihood stays differentiable in σ without refitting.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from laplace_cli.core.enums import Likelihood


def summed_loss(likelihood: Likelihood, f: Tensor, y: Tensor) -> Tensor:
    """Summed negative log-likelihood of targets `y` under outputs `f` (B, C).

    classification: Σ −log softmax(f)_y; regression: Σ ½‖y − f‖² (unit noise, no normaliser);
    binary: Σ BCE(sigmoid(f), y).
    """
    if likelihood == Likelihood.CLASSIFICATION:
        return F.cross_entropy(f, y, reduction="sum")
    if likelihood == Likelihood.REGRESSION:
        return 0.5 * ((f - y.reshape(f.shape)) ** 2).sum()
    return F.binary_cross_entropy_with_logits(f, y.reshape(f.shape).to(f.dtype), reduction="sum")


def summed_loss_per_output(likelihood: Likelihood, f: Tensor, y: Tensor) -> Tensor:
    """Summed loss of each output, (C,): ½ Σ_n (y_nk − f_nk)² for regression.

    The log-likelihood with one noise level per output needs these separately
    (`log_likelihood` with a (C,) loss); only regression losses split over outputs.
    """
    if likelihood != Likelihood.REGRESSION:
        raise ValueError("a per-output loss is defined for regression only")
    return 0.5 * ((f - y.reshape(f.shape)) ** 2).sum(0)


def output_gradient(likelihood: Likelihood, f: Tensor, y: Tensor) -> Tensor:
    """∂ℓ/∂f per sample, (B, C): p − onehot(y), f − y, or sigmoid(f) − y."""
    if likelihood == Likelihood.CLASSIFICATION:
        p = torch.softmax(f, dim=-1)
        return p - F.one_hot(y.long(), f.shape[-1]).to(f.dtype)
    if likelihood == Likelihood.REGRESSION:
        return f - y.reshape(f.shape).to(f.dtype)
    return torch.sigmoid(f) - y.reshape(f.shape).to(f.dtype)


def hessian_sqrt(likelihood: Likelihood, f: Tensor) -> Tensor:
    """L (B, C, K) with L Lᵀ = ∂²ℓ/∂f² per sample.

    classification: H = diag(p) − ppᵀ = (diag(√p) − p√pᵀ)(diag(√p) − √p pᵀ), K = C;
    regression: L = I (unit noise); binary: L = diag(√(p(1 − p))).
    """
    batch, n_out = f.shape
    if likelihood == Likelihood.CLASSIFICATION:
        p = torch.softmax(f, dim=-1)
        sqrt_p = p.sqrt()
        return torch.diag_embed(sqrt_p) - p.unsqueeze(-1) * sqrt_p.unsqueeze(-2)
    if likelihood == Likelihood.REGRESSION:
        return torch.eye(n_out, dtype=f.dtype, device=f.device).expand(batch, n_out, n_out)
    p = torch.sigmoid(f)
    return torch.diag_embed((p * (1 - p)).sqrt())


def _softmax_householder(f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """u = √p (B, C), w = u + e_C and coef = 2 / wᵀw (B,) of the reflection in
    `hessian_root_min`."""
    sqrt_p = torch.softmax(f, dim=-1).sqrt()
    w = sqrt_p.clone()
    w[:, -1] += 1.0
    return sqrt_p, w, 2.0 / (w * w).sum(-1)


def hessian_root_min(likelihood: Likelihood, f: Tensor) -> Tensor:
    """L (B, C, K) with L Lᵀ = ∂²ℓ/∂f² and the fewest columns: K = C − 1 for classification.

    The softmax Hessian diag(p) − ppᵀ = D (I − uuᵀ) D, D = diag(√p), u = √p (a unit vector),
    has rank C − 1. The Householder reflection H = I − 2wwᵀ/(wᵀw), w = u + e_C, maps u to −e_C,
    so I − uuᵀ = H (I − e_C e_Cᵀ) H and L = D H[:, :C−1]; wᵀw = 2(1 + u_C) ≥ 2 keeps it stable.
    Each column of L costs one backward pass where the root is back-propagated
    (`AllWeights.factor_directions`): C − 1 instead of C (half for two classes).
    The result is a (B, C, K) view of (K, B, C) memory: the layout the back-propagation stacks
    its cotangents in, so no transposing copy is made (at C = 1000 and 128 rows that copy of
    128M entries took 0.8 s per batch).
    """
    if likelihood != Likelihood.CLASSIFICATION or f.shape[1] < 2:
        return hessian_sqrt(likelihood, f)
    n_out = f.shape[1]
    sqrt_p, w, coef = _softmax_householder(f)
    head = w[:, : n_out - 1]  # (B, C−1)
    # L[b, c, k] = √p_bc (δ_ck − coef_b w_bc w_bk), written as Lᵀ[k, b, c]
    root = f.new_empty(n_out - 1, *f.shape)  # (K, B, C), filled in this layout
    torch.mul((-coef[:, None] * head).T.unsqueeze(-1), (sqrt_p * w).unsqueeze(0), out=root)
    root[:, :, : n_out - 1].diagonal(dim1=0, dim2=2).add_(sqrt_p[:, : n_out - 1])
    return root.permute(1, 2, 0)


def hessian_root_min_through(likelihood: Likelihood, f: Tensor, M: Tensor) -> Tensor:
    """L_bᵀ M (K, B, d) for L = `hessian_root_min(likelihood, f)` and M (C, d): the root's
    columns carried through a linear map, as a layer `z ↦ z Mᵀ` back-propagates them.

    For softmax L = D H[:, :C−1] (a Householder reflection), so L_bᵀ M =
    √p_bk M_k − coef_b w_bk (Mᵀ(√p_b ⊙ w_b)): B·K·d flops where the product costs B·C·K·d
    (at C = 1000 the output layer's backward was a sixth of a 1M-parameter MLP's K-FAC fit).
    """
    n_out = f.shape[1]
    M = M.to(f.dtype)
    if likelihood != Likelihood.CLASSIFICATION or n_out < 2:
        return torch.einsum("bck,cd->kbd", hessian_root_min(likelihood, f), M)
    sqrt_p, w, coef = _softmax_householder(f)
    k = n_out - 1
    v = (sqrt_p * w) @ M  # (B, d)
    out = f.new_empty(k, f.shape[0], M.shape[1])
    torch.mul(sqrt_p[:, :k].T.unsqueeze(-1), M[:k].unsqueeze(1), out=out)
    return out.addcmul_((coef[:, None] * w[:, :k]).T.unsqueeze(-1), v.unsqueeze(0), value=-1.0)


def hessian_sum(likelihood: Likelihood, f: Tensor) -> Tensor:
    """Σ_b ∂²ℓ/∂f_b² (C, C) over a batch, never forming the (B, C, C) per-sample Hessians:
    diag(Σp) − PᵀP for softmax (B·C² flops where Σ_b L_b L_bᵀ of the C − 1 root columns
    costs B·C³), B·I for regression, diag(Σ p(1 − p)) for sigmoid outputs."""
    batch, n_out = f.shape
    if likelihood == Likelihood.CLASSIFICATION:
        p = torch.softmax(f, dim=-1)
        return torch.diag(p.sum(0)) - p.T @ p
    if likelihood == Likelihood.REGRESSION:
        return batch * torch.eye(n_out, dtype=f.dtype, device=f.device)
    p = torch.sigmoid(f)
    return torch.diag((p * (1 - p)).sum(0))


def hessian(likelihood: Likelihood, f: Tensor) -> Tensor:
    """∂²ℓ/∂f² per sample, (B, C, C)."""
    if likelihood == Likelihood.CLASSIFICATION:
        p = torch.softmax(f, dim=-1)
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    if likelihood == Likelihood.REGRESSION:
        batch, n_out = f.shape
        return torch.eye(n_out, dtype=f.dtype, device=f.device).expand(batch, n_out, n_out)
    p = torch.sigmoid(f)
    return torch.diag_embed(p * (1 - p))


def log_likelihood(
    likelihood: Likelihood,
    loss: Tensor,
    n_data: int,
    n_outputs: int,
    sigma_noise: Tensor,
    temperature: float,
) -> Tensor:
    """Log-likelihood at the MAP from the stored summed loss (differentiable in `sigma_noise`).

    regression: −loss / (σ² T) − N·C·log(σ√(2π)) for scalar σ; with one σ per output the loss
    must be given per output (shape (C,)) and the normaliser is N·Σ_k log(σ_k√(2π)).
    classification / binary: −loss / T.
    """
    if likelihood != Likelihood.REGRESSION:
        return -loss / temperature
    sigma = sigma_noise.reshape(-1)
    if sigma.numel() == 1:
        return -loss.sum() / (sigma[0] ** 2 * temperature) - n_data * n_outputs * torch.log(
            sigma[0] * math.sqrt(2 * math.pi)
        )
    per_output = loss.reshape(-1)
    return (
        -(per_output / (sigma**2 * temperature)).sum()
        - n_data * torch.log(sigma * math.sqrt(2 * math.pi)).sum()
    )
