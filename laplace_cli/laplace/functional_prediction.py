"""`laplace predict` / `evaluate` scores of a function-space (GP) Laplace.

The same fields as `Laplace.uncertainty` (laplace/prediction.py), from the GP's exact GLM
predictive `FunctionalLaplace.functional_variance_at` (mean f(x; θ*), covariance of f(x) given
the M context points). Only pred_type "glm": a GP posterior has no weight samples.
`gp_function_samples` draws f from those moments (`FunctionalLaplace.functional_samples`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.enums import Likelihood, LinkApprox, PredType
from laplace_cli.core.errors import BadInputError
from laplace_cli.core.scores import (
    max_probability,
    mutual_information,
    predictive_entropy,
    regression_variance_split,
)
from laplace_cli.laplace.functional_core import FunctionalGP
from laplace_cli.metrics.regression import interval
from laplace_cli.posterior.predictive import (
    RowSeeds,
    check_generator,
    check_n_samples,
    glm_link,
    link,
    sample_gaussian_outputs,
)

__all__ = ["functional_uncertainty", "gp_function_samples"]


def functional_uncertainty(
    la: FunctionalGP,  # a FunctionalLaplace / FunctionalLLLaplace
    x: Any,
    pred_type: PredType | str = "glm",
    link_approx: LinkApprox | str = "probit",
    n_samples: int = 100,
    generator: torch.Generator | RowSeeds | None = None,
    level: float = 0.95,
) -> dict[str, Tensor]:
    """Prediction row fields for one batch, as `Laplace.uncertainty` gives them.

    classification: probs, pred, entropy, max_prob, var (the variance of each logit) and, with
    `n_samples > 0`, mutual_info; regression: mean, var (epistemic), var_aleatoric (σ²),
    var_total, lower and upper (the central `level` interval of N(mean, var_total)).
    """
    if PredType.parse(pred_type, "pred_type") != PredType.GLM:
        raise BadInputError(
            "a gp posterior predicts with pred_type 'glm' only (it has no weight samples for "
            "'nn'); drop --pred-type or use a weight-space structure"
        )
    f_mu, f_var = la.functional_variance_at(x)
    var = torch.diagonal(f_var, dim1=-2, dim2=-1)
    if la.likelihood == Likelihood.REGRESSION:
        epistemic, aleatoric, total = regression_variance_split(var, la.sigma_noise)
        lower, upper = interval(f_mu, total, level)
        return {
            "mean": f_mu,
            "var": epistemic,
            "var_aleatoric": aleatoric,
            "var_total": total,
            "lower": lower.to(f_mu.dtype),
            "upper": upper.to(f_mu.dtype),
        }
    approx = LinkApprox.parse(link_approx, "link_approx")
    check_generator(generator, f_mu.device)
    prob_samples: Tensor | None = None
    if n_samples != 0:
        n_samples = check_n_samples(n_samples, "mutual information (n_samples = 0 skips it)")
        # The same draws as Laplace.uncertainty's GLM path with a generator in the same state.
        f = sample_gaussian_outputs(f_mu, f_var, n_samples, generator)
        prob_samples = link(la.likelihood, f)
    if approx == LinkApprox.MC:
        if prob_samples is None:
            raise BadInputError("link_approx 'mc' needs n_samples > 0")
        probs = prob_samples.mean(0)
    else:
        probs = glm_link(la.likelihood, approx, f_mu, f_var)
    out = {
        "probs": probs,
        "pred": probs.argmax(-1),
        "entropy": predictive_entropy(probs, False),
        "max_prob": max_probability(probs, False),
        "var": var,
    }
    if prob_samples is not None:
        out["mutual_info"] = mutual_information(prob_samples, False)
    return out


def gp_function_samples(
    mu: Tensor,
    cov: Tensor,
    n_rows: int,
    n_samples: int,
    joint: bool,
    diagonal_output: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """Draws of f (n_samples, B, C) from the GP moments: (B, C), (B, C, C) per point, or
    (B·C,), (B·C, B·C) with `joint`; `diagonal_output` drops the output correlations."""
    if joint:
        c = mu.numel() // n_rows
        if diagonal_output:
            ids = torch.arange(mu.numel(), device=mu.device) % c
            cov = cov * (ids[:, None] == ids[None, :])
        draws = sample_gaussian_outputs(mu.unsqueeze(0), cov.unsqueeze(0), n_samples, generator)
        return draws[:, 0].reshape(n_samples, n_rows, c)
    if diagonal_output:
        cov = torch.diagonal(cov, dim1=-2, dim2=-1)
    return sample_gaussian_outputs(mu, cov, n_samples, generator)
