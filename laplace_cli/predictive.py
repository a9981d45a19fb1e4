"""Predictive distributions as pure functions of the GLM mean and covariance or of samples.

The GLM predictive linearises the network around the MAP: f ~ N(f_μ, J Σ Jᵀ). These functions
map that Gaussian to class probabilities (link approximations) or summarise samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from laplace_cli.enums import Likelihood, LinkApprox, PredType
from laplace_cli.errors import BadInputError


def check_pred_options(
    pred_type: PredType | str, link_approx: LinkApprox | str
) -> tuple[PredType, LinkApprox]:
    """Validate a (pred_type, link_approx) pair; nonsense combinations raise instead of silently
    running something else (laplace-torch quietly uses MC for `nn` with `probit`)."""
    pt = PredType.parse(pred_type, "pred_type")
    la = LinkApprox.parse(link_approx, "link_approx")
    if pt == PredType.NN and la != LinkApprox.MC:
        raise BadInputError(
            f"pred_type 'nn' samples weights and averages the link, so link_approx must be 'mc', "
            f"got {la.value!r}; use pred_type 'glm' for {la.value!r}"
        )
    return pt, la


def probit_scale(f_var_diag: Tensor) -> Tensor:
    """κ = 1 / √(1 + π/8 · σ²), the probit approximation's scaling of the mean logits."""
    return 1.0 / torch.sqrt(1.0 + math.pi / 8.0 * f_var_diag)


def probit_softmax(f_mu: Tensor, f_var: Tensor) -> Tensor:
    """softmax(μ / √(1 + π/8 · diag Σ)) (MacKay 1992; multiclass extension as in laplace-torch)."""
    return torch.softmax(f_mu * probit_scale(torch.diagonal(f_var, dim1=-2, dim2=-1)), dim=-1)


def probit_sigmoid(f_mu: Tensor, f_var_diag: Tensor) -> Tensor:
    """σ(μ / √(1 + π/8 · σ²)) per output (binary / multi-label)."""
    return torch.sigmoid(f_mu * probit_scale(f_var_diag))


def laplace_bridge(f_mu: Tensor, f_var: Tensor, normalize: bool = False) -> Tensor:
    """Laplace bridge to a Dirichlet and its mean (Hobbhahn et al. 2022), as in laplace-torch.

    The Gaussian is first projected to zero-sum logits (the softmax is invariant to shifts);
    α_k = (1 − 2/K + e^{μ_k} Σ_j e^{−μ_j} / K²) / σ²_k and the probabilities are α / Σα.
    `normalize` ("bridge_norm") rescales means and variances by the mean variance first.
    """
    f_mu = f_mu.clone()
    f_var = f_var.clone()
    total = f_var.sum(dim=(1, 2)).reshape(-1, 1)
    f_mu = f_mu - f_var.sum(-1) * f_mu.sum(-1).reshape(-1, 1) / total
    f_var = f_var - torch.einsum("bi,bj->bij", f_var.sum(-1), f_var.sum(-2)) / total.reshape(
        -1, 1, 1
    )
    n_classes = f_mu.shape[-1]
    var_diag = torch.diagonal(f_var, dim1=1, dim2=2)
    if normalize:
        mean_var = var_diag.mean(dim=1) / math.sqrt(n_classes / 2)
        f_mu = f_mu / mean_var.sqrt().unsqueeze(-1)
        var_diag = var_diag / mean_var.unsqueeze(-1)
    sum_exp = torch.exp(-f_mu).sum(dim=1, keepdim=True)
    alpha = (1 - 2 / n_classes + f_mu.exp() / n_classes**2 * sum_exp) / var_diag
    return torch.nan_to_num(alpha / alpha.sum(dim=1, keepdim=True), nan=1.0)


def sample_gaussian_outputs(
    f_mu: Tensor, f_var: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Draws from N(f_μ, f_var) per sample: (n_samples, B, C). f_var is (B, C, C) or (B, C)."""
    eps = torch.randn(
        (n_samples, *f_mu.shape), dtype=f_mu.dtype, device=f_mu.device, generator=generator
    )
    if f_var.ndim == f_mu.ndim:
        return f_mu + eps * f_var.clamp_min(0).sqrt()
    from laplace_cli.posterior.full import robust_cholesky

    L = robust_cholesky(f_var, what="functional covariance")
    return f_mu + torch.einsum("bcd,sbd->sbc", L, eps)


def link(likelihood: Likelihood, f: Tensor) -> Tensor:
    """Inverse link on logits/outputs: softmax, identity or sigmoid."""
    if likelihood == Likelihood.CLASSIFICATION:
        return torch.softmax(f, dim=-1)
    if likelihood == Likelihood.BINARY:
        return torch.sigmoid(f)
    return f


def glm_link(
    likelihood: Likelihood,
    link_approx: LinkApprox,
    f_mu: Tensor,
    f_var: Tensor,
    n_samples: int = 100,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Probabilities from the GLM Gaussian over logits, with the chosen link approximation."""
    if likelihood == Likelihood.CLASSIFICATION:
        if link_approx == LinkApprox.PROBIT:
            return probit_softmax(f_mu, f_var)
        if link_approx in (LinkApprox.BRIDGE, LinkApprox.BRIDGE_NORM):
            return laplace_bridge(f_mu, f_var, normalize=link_approx == LinkApprox.BRIDGE_NORM)
        return torch.softmax(sample_gaussian_outputs(f_mu, f_var, n_samples, generator), -1).mean(0)
    if likelihood == Likelihood.BINARY:
        var_diag = torch.diagonal(f_var, dim1=-2, dim2=-1) if f_var.ndim == 3 else f_var
        if link_approx == LinkApprox.PROBIT:
            return probit_sigmoid(f_mu, var_diag)
        if link_approx == LinkApprox.MC:
            return torch.sigmoid(
                sample_gaussian_outputs(f_mu, var_diag, n_samples, generator)
            ).mean(0)
        raise BadInputError("link_approx 'bridge' is for softmax classification; use probit or mc")
    raise BadInputError("link approximations apply to classification and binary likelihoods")


def entropy(probs: Tensor) -> Tensor:
    """Predictive entropy −Σ p log p per row (B,)."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)


def mutual_information(prob_samples: Tensor) -> Tensor:
    """BALD: H[E p] − E H[p] from samples of probabilities (S, B, C) → (B,)."""
    return entropy(prob_samples.mean(0)) - entropy(prob_samples).mean(0)
