"""Posterior quantities of a fitted `Laplace`: precision, covariance, log determinants, the log
marginal likelihood, weight samples, and a fitted posterior as the prior of the next fit.

A mixin of `Laplace` (as `PredictiveMixin` is): every method reads the fitted state (`posterior`,
`prior_precision`, `curvature_scale()`, `mean`, `loss`, ...) and none of them fits or predicts.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core import likelihoods as lik
from laplace_cli.core.enums import Structure
from laplace_cli.core.errors import BadInputError
from laplace_cli.posterior import expand_prior
from laplace_cli.posterior.predictive import RowSeeds, weight_generator

#: `state_dict()` keys of the posterior file's tensors: `posterior.<tensor name>`.
STATE_TENSOR_PREFIX = "posterior."


def _plain_json(obj: Any) -> Any:
    """JSON for the metadata's non-JSON values, as the posterior file encodes them."""
    if hasattr(obj, "tolist"):  # tensors, numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    return str(getattr(obj, "value", obj))  # enums, paths


class PosteriorMixin:
    """Posterior quantities; see the module docstring."""

    @property
    def mean(self) -> Tensor:
        """The MAP θ* over the model's parameters, (P,).

        For a subnetwork this is every trainable parameter (as laplace-torch), the subnetwork's
        entries at their posterior mean and the rest fixed; `mean_subnet` is the subnetwork's
        part. The engine itself works in the subset's coordinates (`_mean`).
        """
        from laplace_cli.subsets.subnetwork import Subnetwork

        if isinstance(self.subset, Subnetwork):
            return self.subset.full_vector(self._mean)
        return self._mean

    @mean.setter
    def mean(self, value: Tensor) -> None:
        self._mean = value

    @property
    def mean_subnet(self) -> Tensor:
        """The posterior mean in the subset's own coordinates, (n_params_subnet,)."""
        return self._mean

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
        return self.posterior.prior_quad_form(self._mean - self.prior_mean, self.prior_precision)

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
        scatter = self.posterior.prior_quad_form(self._mean - self.prior_mean, prior)
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
        self.prior_mean = previous._mean.detach().clone()
        self.prior_precision = previous.prior_precision.detach().clone()
        return self

    def sample(
        self, n_samples: int = 100, generator: torch.Generator | RowSeeds | None = None
    ) -> Tensor:
        """Weight samples θ ~ N(θ*, Λ⁻¹), (n_samples, P).

        For a subnetwork the samples cover every trainable parameter (as laplace-torch), the
        entries outside the subnetwork at their MAP. `RowSeeds` give their shared stream: the
        same networks for every batch."""
        from laplace_cli.subsets.subnetwork import Subnetwork

        thetas = self._sample_subset(n_samples, generator)
        if isinstance(self.subset, Subnetwork):
            return self.subset.full_vector(thetas)
        return thetas

    def _sample_subset(
        self, n_samples: int = 100, generator: torch.Generator | RowSeeds | None = None
    ) -> Tensor:
        """Weight samples in the subset's coordinates, (n_samples, n_params_subnet)."""
        self.require_fit()
        generator = weight_generator(generator, self._device)
        z = self.posterior.sample(
            n_samples, self.prior_precision, self.curvature_scale(), generator
        )
        return self._mean + z

    # --- laplace-torch's names (docs/migrating.md) ------------------------------------------
    @property
    def n_params_subnet(self) -> int:
        """Parameters the posterior covers: the subnetwork's entries (the subset's size for the
        other subsets). `n_params` is the same number here (laplace-torch's subnetwork
        `n_params` counts every parameter; `mean` and `sample()` here do too)."""
        return self.subset.n_params

    @property
    def prior_precision_diag(self) -> Tensor:
        """The prior precision as one value per parameter of the posterior, (P,)."""
        return expand_prior(self.prior_precision, self.subset.groups)

    @property
    def H(self) -> Tensor | object:
        """The summed curvature H (without σ, T or prior) in the structure's own form: diag a
        vector (P,), full a matrix (P, P); kron and lowrank the posterior object itself
        (`posterior.state()` has its factors or eigenpairs)."""
        self.require_fit()
        if self.hessian_structure == Structure.DIAG:
            return self.posterior.h
        if self.hessian_structure == Structure.FULL:
            return self.posterior.H
        return self.posterior

    def _subset_value(self, value: Tensor) -> Tensor:
        """A weight vector in the subset's coordinates; a subnetwork also takes all parameters."""
        value = torch.as_tensor(value, dtype=self._dtype, device=self._device)
        indices = getattr(self.subset, "indices", None)
        if indices is not None and value.shape[-1] != self.n_params:
            return value[..., indices.to(value.device)]
        if value.shape[-1] != self.n_params:
            raise BadInputError(
                f"expected weight vectors of {self.n_params} values, got shape {tuple(value.shape)}"
            )
        return value

    def square_norm(self, value: Tensor) -> Tensor:
        """(θ − θ*)ᵀ Λ (θ − θ*), the squared norm under the posterior precision.

        Before `fit` (H = 0, as laplace-torch) it is the prior's: (θ − μ₀)ᵀ P₀ (θ − μ₀)."""
        if not self.fitted:
            delta = self._subset_value(value) - self.prior_mean.to(self._dtype)
            return (delta**2 * self.prior_precision_diag.to(delta)).sum(-1)
        delta = self._subset_value(value) - self._mean
        return self.posterior.quad_form(delta, self.prior_precision, self.curvature_scale())

    def log_prob(self, value: Tensor, normalized: bool = True) -> Tensor:
        """log N(value; θ*, Λ⁻¹) (without the constant terms when `normalized` is False).

        Before `fit` the posterior is the prior (H = 0, as laplace-torch): log N(value; μ₀, P₀⁻¹)."""
        if not normalized:
            return -self.square_norm(value) / 2
        import math

        log_det = (
            self.log_det_posterior_precision
            if self.fitted
            else self.prior_precision_diag.log().sum()
        )
        return (
            -self.n_params / 2 * math.log(2 * math.pi) + log_det / 2 - self.square_norm(value) / 2
        )

    def state_dict(self) -> dict:
        """laplace-torch's checkpoint dict, of tensors and plain values only (so that
        `torch.load(path, weights_only=True)` reads it back).

        laplace-torch's keys (mean, H, loss, prior_mean, prior_precision, sigma_noise, n_data,
        n_outputs, likelihood, temperature, enable_backprop, cls_name; `likelihood` as a string,
        `H` in laplace-torch's form: the `H` tensor for diag and full, the Kronecker factors
        `[[B, A] or [B], ...]` for kron, `(U, eigvals)` for lowrank), plus the safetensors
        posterior file's content (`serialization.laplace_state`): each tensor under
        `posterior.<name>` and the metadata as one JSON string under `metadata`. Every value is
        a tensor, a plain value or a list of tensors, as laplace-torch's own (no dicts).
        """
        from laplace_cli.laplace.serialization import laplace_state

        tensors, metadata = laplace_state(self)
        return {
            "mean": self.mean.detach(),
            "H": self._plain_H(),
            "loss": self.loss.detach(),
            "prior_mean": self.prior_mean.detach(),
            "prior_precision": self.prior_precision.detach(),
            "sigma_noise": self.sigma_noise.detach(),
            "n_data": int(self.n_data),
            "n_outputs": int(self.n_outputs or 1),
            "likelihood": "reward_modeling"
            if getattr(self, "reward_modeling", False)
            else self.likelihood.value,
            "temperature": float(self.temperature),
            "enable_backprop": bool(getattr(self, "enable_backprop", False)),
            "cls_name": type(self).__name__,
            **{f"{STATE_TENSOR_PREFIX}{name}": t for name, t in tensors.items()},
            # JSON, as the posterior file stores it (restore_state reads that form)
            "metadata": json.dumps(metadata, default=_plain_json, sort_keys=True),
        }

    def _plain_H(self) -> Tensor | list[list[Tensor]] | tuple[Tensor, ...]:
        """H as laplace-torch's state_dict holds it (see `state_dict`)."""
        H = self.H
        if isinstance(H, Tensor):
            return H.detach()
        as_kron = getattr(self.posterior, "as_kron", None)
        if as_kron is not None:
            return [[f.detach() for f in F] for F in as_kron().kfacs]
        return tuple(v.detach() for v in self.posterior.state().values())

    def load_state_dict(self, state_dict: dict) -> None:
        """Load `state_dict()` output into this (unfitted or fitted) approximation.

        Refused (BadInputError, a ValueError) as laplace-torch refuses them: another flavour
        (`cls_name`), likelihood, subset or structure, and a model whose parameters differ in
        names, shapes or values from those the state was fitted on.
        """
        from laplace_cli.laplace.serialization import restore_state

        if state_dict.get("cls_name") != type(self).__name__:
            raise BadInputError(
                f"loading a {state_dict.get('cls_name')} state into a {type(self).__name__}: "
                "make sure subset_of_weights and hessian_structure are the same"
            )
        meta = state_dict["metadata"]
        if isinstance(meta, str):
            meta = json.loads(meta)
        mine = {
            "likelihood": self.likelihood.value,
            "subset": self.subset_of_weights.value,
            "structure": self.hessian_structure.value,
        }
        for key, value in mine.items():
            if meta.get(key) != value:
                raise BadInputError(
                    f"the state has {key} {meta.get(key)!r}, this approximation {value!r}"
                )
        # The engine's mean (flavours show laplace-torch's prior mean or None before fit).
        n_mine = int(PosteriorMixin.mean.fget(self).numel())
        if state_dict.get("n_outputs") is not None and int(state_dict["mean"].numel()) != n_mine:
            raise BadInputError(
                f"the state covers {state_dict['mean'].numel()} parameters, this model "
                f"{n_mine}: use the same model, subset and requires_grad switches"
            )
        tensors = dict(state_dict.get("posterior") or {})  # the nested form of earlier versions
        n = len(STATE_TENSOR_PREFIX)
        tensors.update(
            {k[n:]: v for k, v in state_dict.items() if k.startswith(STATE_TENSOR_PREFIX)}
        )
        restore_state(self, tensors, meta)
        self.enable_backprop = bool(state_dict.get("enable_backprop", False))
