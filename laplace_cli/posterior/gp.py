"""Function-space (GP) Laplace: the kernel system on M context points (docs/design.md §5).

The linearised network f(x) ≈ f(x; θ*) + J(x)(θ − θ*) with prior θ ~ N(0, δ⁻¹ I) is a Gaussian
process with kernel k(x, x') = J(x) J(x')ᵀ / δ. On M context points with output Hessians Λ_m
(scaled by s = 1/T, or 1/(σ²T) for regression) the posterior covariance of f at test inputs is

    Σ_* = v K_** − v K_*M Sᵀ A⁻¹ S v K_M*,   A = I + S (v K_MM) Sᵀ,   S Sᵀ = s Λ (block diagonal),

v = (M/N)/δ the prior variance scale of subset-of-data inference (Immer et al. 2021, as
laplace-torch). With M = N this is exactly the weight-space GLM predictive J_* (s JᵀΛJ + δI)⁻¹ J_*ᵀ
(Woodbury). The A form needs no inverse of Λ, so a singular softmax Hessian is fine.

`output_hessian="diag"` keeps only diag(Λ) (laplace-torch's FunctionalLaplace, for every C);
"full" keeps the C×C blocks (the exact GLM for classification with M = N). Independent outputs
(laplace-torch's `independent_outputs`, a diagonal kernel) are C separate M×M systems.

Everything here is pure tensor maths, differentiable in δ and σ (the log marginal likelihood's
gradient comes from torch.autograd); kernels are given, never built here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from laplace_cli.core.errors import NumericalError

#: laplace-torch's jitter in the classification scatter term (K + εI)⁻¹.
SCATTER_EPS = 1e-5


@dataclass
class KernelSystem:
    """The fitted context: kernel, output-Hessian square roots, MAP quantities.

    K: (M·C, M·C), or (C, M, M) with independent outputs; kernel without the prior scale v.
    S: (M, C, C) symmetric square roots of Λ_m ("full"), or (M, C) √diag Λ_m ("diag").
    mu: (M, C) the mean in the marginal likelihood's scatter term.
    """

    K: Tensor
    S: Tensor
    mu: Tensor
    independent: bool

    @property
    def n_context(self) -> int:
        return self.mu.shape[0]

    @property
    def n_outputs(self) -> int:
        return self.mu.shape[1]


def output_hessian_root(lam: Tensor, diagonal: bool) -> Tensor:
    """√Λ per point: (M, C) of √diag Λ, or (M, C, C) the symmetric PSD square root."""
    if diagonal:
        return torch.diagonal(lam, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    evals, evecs = torch.linalg.eigh(lam)
    return (evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)


def _apply_root(S: Tensor, Z: Tensor, independent: bool) -> Tensor:
    """S Z for Z (M·C, R) (or (C, M, R) independent): the block-diagonal root applied from the left."""
    if independent:  # S (M, C)
        return S.T.unsqueeze(-1) * Z
    m, c = S.shape[0], S.shape[1]
    if S.ndim == 2:
        return S.reshape(-1, 1) * Z
    Zr = Z.reshape(m, c, -1)
    return torch.einsum("mcd,mdr->mcr", S, Zr).reshape(m * c, -1)


def cholesky_A(system: KernelSystem, v: Tensor, s: Tensor) -> Tensor:
    """Cholesky factor of A = I + √s S (v K) Sᵀ √s: (M·C, M·C) or (C, M, M)."""
    K = system.K
    eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    SK = _apply_root(system.S, K, system.independent)
    SKS = _apply_root(system.S, SK.transpose(-1, -2), system.independent).transpose(-1, -2)
    A = eye + (v * s) * SKS
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):
        raise NumericalError(
            "the GP kernel system I + S K Sᵀ is not positive definite (non-finite kernel or "
            "Hessian); check the model outputs for NaN/Inf"
        )
    return L


def output_precision(system: KernelSystem, s: Tensor) -> Tensor:
    """s Λ on the context points: (M·C, M·C) block diagonal, or (C, M, M) diagonal (independent).

    laplace-torch's `L`. With `output_hessian="diag"` only diag Λ is kept, as in the system.
    """
    S = system.S
    m, c = system.n_context, system.n_outputs
    if system.independent or S.ndim == 2:
        d = (S * S).to(torch.result_type(S, s)) * s
        if system.independent:
            return torch.diag_embed(d.T)
        return torch.diag(d.reshape(-1))
    blocks = S @ S.transpose(-1, -2) * s  # (M, C, C): S is a symmetric root
    return torch.block_diag(*blocks.unbind(0)).reshape(m * c, m * c)


def sigma_inv(system: KernelSystem, L: Tensor, s: Tensor) -> Tensor:
    """(v K + (sΛ)⁻¹)⁻¹ = √s S A⁻¹ Sᵀ √s from the Cholesky factor L of A (laplace-torch's
    `Sigma_inv`); defined without inverting Λ, so a singular output Hessian is fine.

    Returns (M·C, M·C), or (C, M, M) with independent outputs.
    """
    A_inv = torch.cholesky_inverse(L)
    SA = _apply_root(system.S, A_inv, system.independent)
    return s * _apply_root(system.S, SA.transpose(-1, -2), system.independent).transpose(-1, -2)


def posterior_covariance(
    system: KernelSystem,
    L: Tensor,
    v: Tensor,
    s: Tensor,
    k_star: Tensor,
    k_cross: Tensor,
    joint: bool = False,
) -> Tensor:
    """Σ_* = v k_** − (√s S v K_M*)ᵀ A⁻¹ (√s S v K_M*).

    k_star: prior kernel at the test points without v: (B, C, C) (or (B, C) independent); with
    `joint`, (B, C, B, C) (or (B, B, C)). k_cross: K_*M, (B, C, M, C) (or (B, M, C)).
    Returns (B, C, C) (independent: (B, C) variances) or, joint, (B·C, B·C) (independent:
    (B, B, C)).
    """
    b = k_cross.shape[0]
    if system.independent:
        Z = k_cross.permute(2, 1, 0)  # (C, M, B)
        W = torch.linalg.solve_triangular(L, _apply_root(system.S, Z, True), upper=False)
        W = (v * s.sqrt()) * W
        if joint:
            return v * k_star - torch.einsum("cmb,cma->bac", W, W)
        return v * k_star - (W * W).sum(1).T
    c = k_cross.shape[1]
    Z = k_cross.reshape(b * c, -1).T  # (M·C, B·C)
    W = torch.linalg.solve_triangular(L, _apply_root(system.S, Z, False), upper=False)
    W = (v * s.sqrt()) * W
    if joint:
        return v * k_star.reshape(b * c, b * c) - W.T @ W
    Wr = W.reshape(-1, b, c)
    return v * k_star - torch.einsum("kbc,kbd->bcd", Wr, Wr)


def log_det_term(
    system: KernelSystem, v: Tensor, s: Tensor, regression: bool, sigma2: Tensor
) -> Tensor:
    """laplace-torch's log-determinant: log|v K + σ² I| (regression), log|I + √s S vK Sᵀ √s| (else)."""
    if regression:
        return (
            2
            * torch.log(torch.diagonal(_noisy_cholesky(system, v, sigma2), dim1=-2, dim2=-1)).sum()
        )
    L = cholesky_A(system, v, s)
    return 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum()


def _noisy_cholesky(system: KernelSystem, v: Tensor, noise: Tensor) -> Tensor:
    K = system.K
    eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    L, info = torch.linalg.cholesky_ex(v * K + noise * eye)
    if bool((info != 0).any()):
        raise NumericalError("the GP kernel v K + σ² I is not positive definite")
    return L


def scatter_term(system: KernelSystem, v: Tensor, noise: Tensor) -> Tensor:
    """μᵀ (v K + noise I)⁻¹ μ, summed over outputs when they are independent."""
    L = _noisy_cholesky(system, v, noise)
    if system.independent:
        rhs = system.mu.T.unsqueeze(-1)  # (C, M, 1)
    else:
        rhs = system.mu.reshape(-1, 1)
    z = torch.linalg.solve_triangular(L, rhs, upper=False)
    return (z * z).sum()


def log_marginal_likelihood(
    system: KernelSystem,
    log_lik: Tensor,
    v: Tensor,
    s: Tensor,
    regression: bool,
    sigma2: Tensor,
) -> Tensor:
    """log p(D|θ*) − ½ (log-det term + scatter term), laplace-torch's GP marginal likelihood.

    Regression: scatter (y − m)ᵀ (vK + σ²I)⁻¹ (y − m) with m = f − J(θ* − μ₀), the GP prior mean;
    classification: μᵀ (vK + εI)⁻¹ μ, μ = J(θ* − μ₀), ε = 1e-5 (R&W 2006 eq. 3.44 with f̂ = f).
    """
    noise = sigma2 if regression else torch.as_tensor(SCATTER_EPS, dtype=v.dtype, device=v.device)
    log_det = log_det_term(system, v, s, regression, sigma2)
    return log_lik - 0.5 * (log_det + scatter_term(system, v, noise))


def gp_bytes(n_context: int, n_outputs: int, itemsize: int, independent: bool) -> int:
    """Memory of the kernel and its Cholesky factor (two (MC)² matrices, or 2·C·M² independent)."""
    m, c = n_context, n_outputs
    per = c * m * m if independent else (m * c) ** 2
    return 2 * per * itemsize


def sod_prior_scale(n_context: int, n_data: int, prior_precision: Tensor) -> Tensor:
    """v = (M/N)/δ: the kernel's prior variance in subset-of-data inference (laplace-torch)."""
    return (n_context / n_data) / prior_precision.reshape(())


__all__ = [
    "KernelSystem",
    "output_precision",
    "sigma_inv",
    "SCATTER_EPS",
    "output_hessian_root",
    "cholesky_A",
    "posterior_covariance",
    "log_det_term",
    "scatter_term",
    "log_marginal_likelihood",
    "gp_bytes",
    "sod_prior_scale",
]
