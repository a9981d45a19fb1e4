"""One batch's predictive of a fitted weight-space `Laplace`, composed from its public methods.

`Laplace.__call__` checks its options and calls `predict_batch`, which dispatches on the
likelihood and pred_type to the variance and sample methods (`functional_variance_at`,
`functional_variance_diag`, `glm_predictive_distribution`, `functional_samples`, ...);
`Laplace.regression_predictive` and `Laplace.uncertainty` (the scores `laplace predict` writes,
`laplace_cli.core.scores`) delegate here too. The function-space counterpart is
`laplace/functional_prediction.py`.
"""

from __future__ import annotations

from typing import Any, Protocol

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
from laplace_cli.laplace import dense_outputs
from laplace_cli.metrics import classification as metrics
from laplace_cli.posterior.predictive import (
    RegressionPrediction,
    RowSeeds,
    check_generator,
    check_n_samples,
    check_pred_options,
    glm_link,
    link,
    sample_gaussian_outputs,
)

__all__ = [
    "PredictiveLaplace",
    "batch_uncertainty",
    "glm_moments",
    "predict_batch",
    "regression_predictive",
]


class PredictiveLaplace(Protocol):
    """What the scores need of a fitted approximation (`Laplace` satisfies it structurally)."""

    likelihood: Likelihood

    @property
    def device(self) -> torch.device: ...

    @property
    def sigma_noise(self) -> Tensor: ...

    def require_fit(self) -> None: ...

    def functional_variance_at(self, x: Any) -> tuple[Tensor, Tensor]: ...

    def functional_samples(
        self,
        x: Any,
        pred_type: PredType | str = "glm",
        n_samples: int = 100,
        generator: torch.Generator | RowSeeds | None = None,
        diagonal_output: bool = False,
    ) -> Tensor: ...

    def regression_predictive(
        self,
        x: Any,
        pred_type: PredType | str = "glm",
        n_samples: int = 100,
        generator: torch.Generator | RowSeeds | None = None,
    ) -> RegressionPrediction: ...

    def functional_variance_diag(self, x: Any) -> tuple[Tensor, Tensor]: ...

    def output_covariance_is_diagonal(self) -> bool: ...

    def draws_from_features(self) -> bool: ...

    def feature_moments(
        self,
        x: Any,
        n_samples: int = 0,
        generator: torch.Generator | RowSeeds | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]: ...

    def glm_predictive_distribution(
        self, x: Any, joint: bool = False, diagonal_output: bool = False
    ) -> tuple[Tensor, Tensor]: ...

    def predictive_samples(
        self,
        x: Any,
        pred_type: PredType | str = "glm",
        n_samples: int = 100,
        generator: torch.Generator | RowSeeds | None = None,
        diagonal_output: bool = False,
    ) -> Tensor: ...


def glm_moments(
    la: PredictiveLaplace,
    x: Any,
    *,
    full: bool = False,
    n_samples: int = 0,
    generator: torch.Generator | RowSeeds | None = None,
    independent: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """GLM mean f_μ (B, C), J Σ Jᵀ and `n_samples` draws of the logits from N(f_μ, J Σ Jᵀ),
    (S, B, C) (None for 0), by the cheapest route that gives the same numbers.

    J Σ Jᵀ comes as its (B, C) diagonal unless `full` (the Laplace bridge reads the (B, C, C)
    matrix); the draws keep the outputs' correlations unless `independent` (binary outputs,
    `diagonal_output`). Routes: a last-layer kron posterior draws from the head's features
    (`OutputDraws`, 2C² per draw and row); where nothing reads the correlations (no draws,
    independent draws, or a covariance that is diagonal itself — a last-layer diag posterior,
    whose Cholesky draws are ε ⊙ √Var) the diagonal alone (`functional_variance_diag`: from
    the features, per K-FAC block, or per row chunk of the full matrix); else the (B, C, C)
    covariance, and its Cholesky factor per row for draws.
    """
    correlated = n_samples > 0 and not independent
    if correlated and not full and la.draws_from_features():
        return la.feature_moments(x, n_samples, generator)
    if full or (correlated and not la.output_covariance_is_diagonal()):
        f_mu, cov = la.functional_variance_at(x)
        var = torch.diagonal(cov, dim1=-2, dim2=-1)
    else:
        f_mu, var = la.functional_variance_diag(x)
        cov = var
    draws = None
    if n_samples > 0:
        draws = sample_gaussian_outputs(f_mu, var if independent else cov, n_samples, generator)
    return f_mu, (cov if full else var), draws


def predict_batch(
    la: PredictiveLaplace,
    x: Any,
    pt: PredType,
    approx: LinkApprox,
    likelihood: Likelihood,
    n_samples: int,
    joint: bool,
    diagonal_output: bool,
    generator: torch.Generator | RowSeeds | None,
) -> Tensor | tuple[Tensor, Tensor]:
    """`la(x)` once its options are checked: see `Laplace.__call__` for the outputs."""
    if getattr(la, "output_positions", None) is not None:  # per position, (B, C, *S)
        return dense_outputs.predict(
            la, x, pt, approx, likelihood, n_samples, joint, diagonal_output, generator
        )
    if likelihood == Likelihood.REGRESSION:
        if pt == PredType.GLM:
            return la.glm_predictive_distribution(x, joint=joint, diagonal_output=diagonal_output)
        n = check_n_samples(n_samples, "the sample variance of pred_type 'nn'", minimum=2)
        samples = la.functional_samples(x, pred_type="nn", n_samples=n, generator=generator)
        # The (B, C) unbiased sample variance, as laplace-torch returns for "nn" (it used
        # to be the (B, C, C) sample covariance; `functional_samples` gives the samples).
        return samples.mean(0), samples.var(0)
    if pt == PredType.GLM:
        bridge = approx in (LinkApprox.BRIDGE, LinkApprox.BRIDGE_NORM)
        f_mu, f_var, f = glm_moments(
            la,
            x,
            full=bridge and not diagonal_output,
            n_samples=n_samples if approx == LinkApprox.MC else 0,
            generator=generator,
            independent=diagonal_output or likelihood == Likelihood.BINARY,
        )
        if f is not None:  # mc: the mean of the link over the draws
            return link(la.likelihood, f).mean(0)
        return glm_link(la.likelihood, approx, f_mu, f_var)
    samples = la.predictive_samples(x, pred_type="nn", n_samples=n_samples, generator=generator)
    return samples.mean(0)


def regression_predictive(
    la: PredictiveLaplace,
    x: Any,
    pred_type: PredType | str,
    n_samples: int,
    generator: torch.Generator | RowSeeds | None,
) -> RegressionPrediction:
    """`Laplace.regression_predictive`: y | x ~ N(mean, epistemic_var + aleatoric_var)."""
    la.require_fit()
    if la.likelihood != Likelihood.REGRESSION:
        raise BadInputError(
            f"regression_predictive is for the regression likelihood, this is "
            f"{la.likelihood.value!r}; use la(x) or la.uncertainty(x)"
        )
    pt = PredType.parse(pred_type, "pred_type")
    if pt == PredType.GLM:
        mean, epistemic, _ = glm_moments(la, x)  # the diagonal is all it needs
    else:
        n = check_n_samples(n_samples, "the sample variance of pred_type 'nn'", minimum=2)
        samples = la.functional_samples(x, pred_type="nn", n_samples=n, generator=generator)
        mean, epistemic = samples.mean(0), samples.var(0)
    epistemic, aleatoric, total = regression_variance_split(epistemic, la.sigma_noise)
    return RegressionPrediction(mean, epistemic, aleatoric, total)


def batch_uncertainty(
    la: PredictiveLaplace,
    x: Any,
    pred_type: PredType | str,
    link_approx: LinkApprox | str,
    n_samples: int,
    generator: torch.Generator | RowSeeds | None,
    level: float,
) -> dict[str, Tensor]:
    """`Laplace.uncertainty`: predictions and uncertainty scores of one batch (its docstring)."""
    la.require_fit()
    if la.likelihood == Likelihood.REGRESSION:
        pred = la.regression_predictive(x, pred_type, n_samples, generator)
        lower, upper = metrics.interval(pred.mean, pred.total_var, level)
        return {
            "mean": pred.mean,
            "var": pred.epistemic_var,
            "var_aleatoric": pred.aleatoric_var,
            "var_total": pred.total_var,
            "lower": lower.to(pred.mean.dtype),
            "upper": upper.to(pred.mean.dtype),
        }
    binary = la.likelihood == Likelihood.BINARY
    pt, approx = check_pred_options(pred_type, link_approx, la.likelihood, n_samples=n_samples)
    check_generator(generator, la.device)
    if n_samples != 0:
        n_samples = check_n_samples(n_samples, "mutual information (n_samples = 0 skips it)")
    prob_samples: Tensor | None = None
    if pt == PredType.GLM:
        # The same draws as la(x, link_approx="mc") with a generator in the same state.
        f_mu, f_var, f = glm_moments(
            la,
            x,
            full=approx in (LinkApprox.BRIDGE, LinkApprox.BRIDGE_NORM),
            n_samples=n_samples,
            generator=generator,
            independent=binary,
        )
        var = f_var if f_var.ndim == 2 else torch.diagonal(f_var, dim1=-2, dim2=-1)
        if f is not None:
            prob_samples = link(la.likelihood, f)
        if approx == LinkApprox.MC:
            probs = prob_samples.mean(0)
        else:
            probs = glm_link(la.likelihood, approx, f_mu, f_var)
    else:
        n = check_n_samples(n_samples, "the logit variance of pred_type 'nn'", minimum=2)
        f = la.functional_samples(x, pred_type="nn", n_samples=n, generator=generator)
        prob_samples = link(la.likelihood, f)
        probs, var = prob_samples.mean(0), f.var(0)
    out = {
        "probs": probs,
        "pred": (probs > 0.5).long() if binary else probs.argmax(-1),
        "entropy": predictive_entropy(probs, binary),
        "max_prob": max_probability(probs, binary),
        "var": var,
    }
    if prob_samples is not None:
        out["mutual_info"] = mutual_information(prob_samples, binary)
    return out
