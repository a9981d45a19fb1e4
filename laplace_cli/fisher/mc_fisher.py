"""Monte Carlo Fisher: loss gradients at targets sampled from the model's own predictive.

For the likelihoods used here (softmax cross-entropy, Gaussian with unit noise, independent
sigmoids) the Fisher information in output space equals the loss Hessian,

    F(f) = E_{y ~ p(y|f)} [∇_f ℓ(f, y) ∇_f ℓ(f, y)ᵀ] = ∂²ℓ/∂f²,

so the parameter-space Fisher Σ_n J_nᵀ F(f_n) J_n is the GGN. Drawing S targets y_s per input
and stacking W = [∇_f ℓ(f, y_1), ..., ∇_f ℓ(f, y_S)] / √S gives an unbiased estimate W Wᵀ of
F(f), whose error shrinks as 1/√S (Kunstner et al. 2019, "Limitations of the empirical Fisher").
The posterior structures consume W exactly as they consume the GGN's Hessian square root.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError


def sample_targets(
    likelihood: Likelihood, f: Tensor, n_samples: int, generator: torch.Generator | None
) -> Tensor:
    """Targets drawn from the model's predictive p(y | f), (S, B) labels or (S, B, C) values.

    classification: y ~ Categorical(softmax f); regression: y = f + ε, ε ~ N(0, I) (unit noise,
    σ enters later as a factor, as for the GGN); binary: y_c ~ Bernoulli(sigmoid f_c).
    """
    f = f.detach()
    if likelihood == Likelihood.CLASSIFICATION:
        p = torch.softmax(f, dim=-1)
        return torch.multinomial(p, n_samples, replacement=True, generator=generator).T
    if likelihood == Likelihood.REGRESSION:
        eps = torch.randn(
            (n_samples, *f.shape), dtype=f.dtype, device=f.device, generator=generator
        )
        return f.unsqueeze(0) + eps
    p = torch.sigmoid(f).unsqueeze(0).expand(n_samples, *f.shape)
    return torch.bernoulli(p, generator=generator)


def sampled_output_gradients(
    likelihood: Likelihood | str,
    f: Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """W (B, C, S) with W Wᵀ an unbiased Monte Carlo estimate of the output-space Fisher.

    Column s is ∇_f ℓ(f, y_s) / √S for a target y_s sampled from the model: p − onehot(y_s)
    (classification), f − y_s (regression, unit noise), sigmoid(f) − y_s (binary).

    Args:
        likelihood: the likelihood whose predictive the targets are drawn from.
        f: model outputs (B, C).
        n_samples: S ≥ 1 targets per input.
        generator: random stream (seeded by `Laplace(seed=...)` so fits are reproducible).
    """
    likelihood = Likelihood.parse(likelihood, "likelihood")
    if int(n_samples) < 1:
        raise BadInputError(f"n_mc_samples must be a positive integer, got {n_samples}")
    n_samples = int(n_samples)
    f = f.detach()
    y = sample_targets(likelihood, f, n_samples, generator)
    if likelihood == Likelihood.CLASSIFICATION:
        p = torch.softmax(f, dim=-1)  # (B, C)
        onehot = F.one_hot(y, f.shape[-1]).to(f.dtype)  # (S, B, C)
        grads = p.unsqueeze(0) - onehot
    elif likelihood == Likelihood.REGRESSION:
        grads = f.unsqueeze(0) - y  # (S, B, C)
    else:
        grads = torch.sigmoid(f).unsqueeze(0) - y
    # (S, B, C) -> (B, C, S), scaled so that Σ_s w_s w_sᵀ averages the S outer products.
    return grads.permute(1, 2, 0) / math.sqrt(n_samples)
