"""Tuning the prior precision δ of a function-space (GP) Laplace: marginal likelihood or grid.

`FunctionalLaplace.optimize_prior_precision` checks its options and calls these with closures
over the fitted system: `adam_log_prior` runs laplace-torch's Adam loop on log δ against the GP
log marginal likelihood; `best_on_grid` scores every δ of a grid (a δ whose system is not
positive definite scores +inf); `grid_loss` is the default validation loss of one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.enums import Likelihood, LinkApprox
from laplace_cli.posterior.predictive import glm_link

__all__ = ["adam_log_prior", "best_on_grid", "grid_loss"]


def adam_log_prior(
    neg_log_evidence: Callable[[Tensor], Tensor],
    init: Tensor,
    n_steps: int,
    lr: float,
) -> Tensor:
    """δ after `n_steps` Adam steps on log δ minimising `neg_log_evidence(δ)` (laplace-torch's)."""
    log_delta = init.reshape(1).log().clone().requires_grad_(True)
    opt = torch.optim.Adam([log_delta], lr=lr)
    for _ in range(int(n_steps)):
        opt.zero_grad()
        neg = neg_log_evidence(log_delta.exp())
        neg.backward()
        opt.step()
    return log_delta.detach().exp()


def best_on_grid(
    grid: Tensor, set_delta: Callable[[Tensor], None], score: Callable[[], float]
) -> Tensor:
    """The first δ of `grid` with the lowest `score()` after `set_delta(δ)`; a non-PD system at
    a δ scores +inf."""
    best, best_delta = math.inf, grid[0]
    for delta in grid:
        set_delta(delta)
        try:
            total = score()
        except Exception as err:  # a non-PD system at an extreme δ: skip that value
            if "positive definite" not in str(err):
                raise
            total = math.inf
        if total < best:
            best, best_delta = total, delta
    return torch.as_tensor(best_delta)


def grid_loss(
    likelihood: Likelihood,
    sigma_noise: Tensor,
    mu: Tensor,
    var: Tensor,
    y: Tensor,
    loss: Any,
    link_approx: str,
    n_samples: int,
) -> float:
    """Validation loss of one batch: `loss` if given, else the predictive NLL (summed).

    Regression: Gaussian with the functional variance plus σ²; classification: the GLM
    predictive through `link_approx`.
    """
    if likelihood == Likelihood.REGRESSION:
        if loss is not None:
            return float(loss((mu, var), y))
        total_var = torch.diagonal(var, dim1=-2, dim2=-1) + sigma_noise**2
        nll = 0.5 * (torch.log(2 * math.pi * total_var) + (y - mu) ** 2 / total_var)
        return float(nll.sum())
    probs = glm_link(likelihood, LinkApprox(link_approx), mu, var, n_samples)
    if loss is not None:
        return float(loss(probs, y))
    return float(-torch.log(probs.gather(1, y.reshape(-1, 1)).clamp_min(1e-300)).sum())
