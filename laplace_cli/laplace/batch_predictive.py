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
    "diagonal_suffices",
    "has_cheap_diagonal",
    "has_feature_draws",
    "has_feature_variance",
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


def has_feature_variance(la: Any) -> bool:
    """Whether `la` computes diag J Σ Jᵀ from the head's features (`variance_from_features`:
    a last-layer diag / kron posterior)."""
    from_features = getattr(la, "variance_from_features", None)
    return bool(from_features is not None and from_features())


def diagonal_suffices(la: Any, likelihood: Likelihood, approx: LinkApprox, sampling: bool) -> bool:
    """Whether the (B, C) diagonal of J Σ Jᵀ gives what the full covariance would: binary
    outputs (independent sigmoids) and the probit link read only the diagonal; draws of the
    logits (`sampling`: mc, mutual information) need the correlations, unless the covariance is
    diagonal itself (`output_covariance_is_diagonal`: the same draws, since the Cholesky factor
    of a diagonal matrix is its square root); the Laplace bridge needs the full matrix."""
    if likelihood == Likelihood.BINARY:
        return True
    if approx in (LinkApprox.BRIDGE, LinkApprox.BRIDGE_NORM):
        return False
    if sampling or approx == LinkApprox.MC:
        is_diagonal = getattr(la, "output_covariance_is_diagonal", None)
        return bool(is_diagonal is not None and is_diagonal())
    return True


def has_feature_draws(la: Any, likelihood: Likelihood) -> bool:
    """Whether softmax logit draws come from the head's features (`draws_from_features`: a
    last-layer kron posterior) instead of a Cholesky factor of each row's (C, C) covariance."""
    from_features = getattr(la, "draws_from_features", None)
    return likelihood == Likelihood.CLASSIFICATION and bool(
        from_features is not None and from_features()
    )


def has_cheap_diagonal(la: Any) -> bool:
    """Whether `la.functional_variance_diag` avoids the (C, C) products: from the head's
    features, or a posterior with its own cheaper diagonal (K-FAC)."""
    posterior = getattr(la, "posterior", None)
    return has_feature_variance(la) or getattr(posterior, "cheap_variance_diag", False)


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
        if approx == LinkApprox.MC and not diagonal_output and has_feature_draws(la, likelihood):
            # Exact draws from the features, 2C² per draw and row (`OutputDraws`).
            _, _, f = la.feature_moments(x, n_samples, generator)
            return torch.softmax(f, -1).mean(0)
        if (
            diagonal_output or diagonal_suffices(la, likelihood, approx, sampling=False)
        ) and has_cheap_diagonal(la):
            # Probit needs the diagonal only: O(C) per row, not (C, C).
            f_mu, f_var = la.functional_variance_diag(x)
            return glm_link(la.likelihood, approx, f_mu, f_var, n_samples, generator)
        f_mu, f_var = la.functional_variance_at(x)
        if diagonal_output:
            f_var = torch.diagonal(f_var, dim1=-2, dim2=-1)
        return glm_link(la.likelihood, approx, f_mu, f_var, n_samples, generator)
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
    if pt == PredType.GLM and has_feature_variance(la):
        mean, epistemic = la.functional_variance_diag(x)  # the diagonal is all it needs
    elif pt == PredType.GLM:
        mean, f_var = la.functional_variance_at(x)
        epistemic = torch.diagonal(f_var, dim1=-2, dim2=-1)
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
        bridge = approx in (LinkApprox.BRIDGE, LinkApprox.BRIDGE_NORM)  # reads the full matrix
        if n_samples > 0 and not bridge and has_feature_draws(la, la.likelihood):
            f_mu, var, f = la.feature_moments(x, n_samples, generator)
            f_var = var  # probit reads the diagonal only
            prob_samples = link(la.likelihood, f)
        else:
            if diagonal_suffices(la, la.likelihood, approx, n_samples > 0) and has_cheap_diagonal(
                la
            ):
                f_mu, var = la.functional_variance_diag(x)  # no (B, C, C) covariance
                f_var = var
            else:
                f_mu, f_var = la.functional_variance_at(x)
                var = torch.diagonal(f_var, dim1=-2, dim2=-1)
            if n_samples > 0:
                f = sample_gaussian_outputs(f_mu, var if binary else f_var, n_samples, generator)
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
