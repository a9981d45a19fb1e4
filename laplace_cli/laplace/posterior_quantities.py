"""Posterior quantities of a fitted `Laplace`: precision, covariance, log determinants, the log
marginal likelihood, weight samples, and a fitted posterior as the prior of the next fit.

A mixin of `Laplace` (as `PredictiveMixin` is): every method reads the fitted state (`posterior`,
`prior_precision`, `curvature_scale()`, `mean`, `loss`, ...) and none of them fits or predicts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.core import likelihoods as lik
from laplace_cli.core.enums import Structure
from laplace_cli.core.errors import BadInputError
from laplace_cli.posterior import expand_prior


class PosteriorMixin:
    """Posterior quantities; see the module docstring."""

    @property
    def posterior_precision(self) -> Tensor:
        """Dense posterior precision (P, P); for large models use the structure's methods instead."""
        self.require_fit()
        return self.posterior.dense_precision(self.prior_precision, self.curvature_scale())

    @property
    def posterior_covariance(self) -> Tensor:
        self.require_fit()
        return self.posterior.dense_covariance(self.prior_precision, self.curvature_scale())

    @property
    def posterior_variance(self) -> Tensor:
        """Marginal variances of the parameters (P,) (diag: exact; others from the dense inverse)."""
        self.require_fit()
        if self.hessian_structure == Structure.DIAG:
            return 1.0 / self.posterior.diag_precision(self.prior_precision, self.curvature_scale())
        return self.posterior_covariance.diagonal()

    @property
    def log_det_posterior_precision(self) -> Tensor:
        self.require_fit()
        return self.posterior.log_det(self.prior_precision, self.curvature_scale())

    @property
    def log_det_prior_precision(self) -> Tensor:
        """log det P₀ (Σ log δ, or log det of the posterior precision used as prior)."""
        return self.posterior.prior_log_det(self.prior_precision)

    @property
    def log_det_ratio(self) -> Tensor:
        return self.log_det_posterior_precision - self.log_det_prior_precision

    @property
    def scatter(self) -> Tensor:
        """(θ* − μ₀)ᵀ P₀ (θ* − μ₀)."""
        return self.posterior.prior_quad_form(self.mean - self.prior_mean, self.prior_precision)

    @property
    def log_likelihood(self) -> Tensor:
        """Log-likelihood of the training data at the MAP (with σ and T)."""
        self.require_fit()
        return lik.log_likelihood(
            self.likelihood,
            self.loss,
            self.n_data,
            self.n_outputs or 1,
            self.sigma_noise,
            self.temperature,
        )

    def log_marginal_likelihood(
        self, prior_precision: Tensor | None = None, sigma_noise: Tensor | None = None
    ) -> Tensor:
        """log p(D) ≈ log p(D|θ*) − ½ (log det Λ − log det P₀ + (θ*−μ₀)ᵀ P₀ (θ*−μ₀)).

        Differentiable in `prior_precision` and `sigma_noise` when they are given as tensors
        that require gradients; the stored values are not changed.
        """
        self.require_fit()
        prior = (
            self.prior_precision
            if prior_precision is None
            else torch.as_tensor(prior_precision, dtype=self._dtype, device=self._device).reshape(
                -1
            )
        )
        sigma = (
            self.sigma_noise
            if sigma_noise is None
            else torch.as_tensor(sigma_noise, dtype=self._dtype, device=self._device).reshape(-1)
        )
        scale = self.curvature_scale(sigma)
        expand_prior(prior, self.subset.groups)  # validates the length
        log_lik = lik.log_likelihood(
            self.likelihood, self.loss, self.n_data, self.n_outputs or 1, sigma, self.temperature
        )
        log_det_post = self.posterior.log_det(prior, scale)
        # P₀ = diag(δ), or the precision of a posterior used as prior (continual learning).
        log_det_prior = self.posterior.prior_log_det(prior)
        scatter = self.posterior.prior_quad_form(self.mean - self.prior_mean, prior)
        return log_lik - 0.5 * (log_det_post - log_det_prior + scatter)

    def set_prior_from(self, previous: PosteriorMixin) -> PosteriorMixin:
        """Use a fitted posterior as this approximation's prior (continual learning).

        The prior becomes N(μ₀ = θ*_prev, P₀ = Λ_prev) with Λ_prev = s'·H_prev + diag(δ), so
        the new posterior precision is Λ = s·H_new + s'·H_prev + diag(δ) and the log marginal
        likelihood uses P₀ = Λ_prev (log det and scatter). `prior_mean` is set to the previous
        MAP and `prior_precision` δ to the previous one (it can still be tuned; P₀ follows it).

        diag and full keep s'·H_prev as a separate fixed term: with unchanged weights this is
        exactly one fit over both data sets. kron merges the previous K-FAC factors into its own
        (B + (s'/s)·B', Σaaᵀ + Σa'a'ᵀ over N + N'; exact for the K-FAC of the union) and lowrank
        keeps the top-k of H_new + (s'/s)·U'λ'U'ᵀ; s'/s is fixed now, so set temperature and
        sigma_noise before calling this. lowrank must call it before fitting.
        """
        if not isinstance(previous, PosteriorMixin):
            raise BadInputError(
                f"a prior posterior must be a fitted Laplace, got {type(previous).__name__}"
            )
        previous.require_fit()
        if previous.hessian_structure != self.hessian_structure:
            raise BadInputError(
                f"a posterior used as prior must have the same structure: this one is "
                f"{self.hessian_structure.value!r}, the prior {previous.hessian_structure.value!r}"
            )
        mine = [(g.name, g.shape) for g in self.subset.groups]
        theirs = [(g.name, g.shape) for g in previous.subset.groups]
        same_indices = torch.equal(
            torch.as_tensor(getattr(self.subset, "indices", torch.zeros(0))),
            torch.as_tensor(getattr(previous.subset, "indices", torch.zeros(0))),
        )
        if mine != theirs or not same_indices:
            raise BadInputError(
                f"a posterior used as prior must cover the same parameters: this subset has "
                f"{len(mine)} tensors ({self.n_params} parameters), the prior's {len(theirs)} "
                f"({previous.n_params} parameters)"
            )
        if self.hessian_structure == Structure.LOWRANK and self.fitted:
            raise BadInputError("lowrank: call set_prior_from before fit")
        self.posterior.set_prior_posterior(
            previous.posterior, previous.curvature_scale().detach(), self.curvature_scale().detach()
        )
        self.prior_mean = previous.mean.detach().clone()
        self.prior_precision = previous.prior_precision.detach().clone()
        return self

    def sample(self, n_samples: int = 100, generator: torch.Generator | None = None) -> Tensor:
        """Weight samples θ ~ N(θ*, Λ⁻¹), (n_samples, P)."""
        self.require_fit()
        z = self.posterior.sample(n_samples, self.prior_precision, self.curvature_scale(), generator)
        return self.mean + z
