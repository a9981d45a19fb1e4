"""`Laplace`: a parameter subset and a posterior structure, composed (no class per pair).

    la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron")
    la.fit(train_loader)
    la.optimize_prior_precision(method="marglik")
    probs = la(x, pred_type="glm", link_approx="probit")

The posterior precision is Λ = s·H + diag(δ) with H the GGN or empirical Fisher summed over the
data, δ the prior precision and s = 1/T (1/(σ²T) for regression); see DESIGN.md §5.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from laplace_cli import likelihoods as lik
from laplace_cli.batches import Inputs, batch_size, split_batch, to_device
from laplace_cli.enums import (
    Curvature,
    KronApprox,
    Likelihood,
    LinkApprox,
    PredType,
    Structure,
    Subset,
)
from laplace_cli.errors import BadInputError, NumericalError
from laplace_cli.memory import check_structure_memory, default_budget, jacobian_rows
from laplace_cli.posterior import Posterior, build_posterior, expand_prior
from laplace_cli.predictive import (
    check_pred_options,
    glm_link,
    link,
    sample_gaussian_outputs,
)
from laplace_cli.subsets import AllWeights, LastLayer, ParameterSubset, iter_rows

SUPPORTED = {
    Subset.ALL: {Structure.DIAG, Structure.KRON, Structure.FULL, Structure.LOWRANK},
    Subset.LAST_LAYER: {Structure.DIAG, Structure.KRON, Structure.FULL, Structure.LOWRANK},
    Subset.SUBNETWORK: {Structure.DIAG, Structure.FULL},
}


def _as_tensor(
    value: float | Sequence[float] | Tensor, dtype: torch.dtype, device: torch.device
) -> Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    return t.reshape(-1) if t.ndim == 0 else t


class Laplace:
    """Laplace approximation of a trained network's posterior over (a subset of) its weights.

    Args:
        model: a trained `nn.Module` mapping a batch of inputs to (B, C) outputs. It is not
            mutated: hooks are removed after use and no copy of it is kept.
        likelihood: "classification", "regression" or "binary".
        subset_of_weights: "all", "last_layer" or "subnetwork" (with `subnetwork_indices`).
        hessian_structure: "diag", "kron", "full" or "lowrank" (with `rank`).
        curvature: "ggn" (exact generalised Gauss-Newton) or "ef" (empirical Fisher).
        prior_precision: δ, a scalar, one value per parameter tensor, or one per parameter.
        prior_mean: μ₀, a scalar or one value per parameter.
        temperature: T; the likelihood term is divided by it.
        sigma_noise: observation noise σ for regression.
        last_layer_name, feature_reduction: for the last-layer subset.
        kron_approx: "expand" or "reduce" for inputs with a weight-sharing dimension.
        max_memory: budget in bytes for curvature and Jacobian chunks (default: half of free).
        dict_key_x, dict_key_y: keys of dict batches.
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: Likelihood | str,
        subset_of_weights: Subset | str = "all",
        hessian_structure: Structure | str = "kron",
        *,
        curvature: Curvature | str = "ggn",
        prior_precision: float | Sequence[float] | Tensor = 1.0,
        prior_mean: float | Tensor = 0.0,
        temperature: float = 1.0,
        sigma_noise: float | Sequence[float] | Tensor = 1.0,
        last_layer_name: str | None = None,
        feature_reduction: str | None = None,
        subnetwork_indices: Tensor | Sequence[int] | None = None,
        kron_approx: KronApprox | str = "expand",
        rank: int | None = None,
        backend: str = "auto",
        max_memory: int | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        n_mc_samples: int = 1,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.likelihood = Likelihood.parse(likelihood, "likelihood")
        self.subset_of_weights = Subset.parse(subset_of_weights, "subset_of_weights")
        self.hessian_structure = Structure.parse(hessian_structure, "hessian_structure")
        self.curvature = Curvature.parse(curvature, "curvature")
        self.kron_approx = KronApprox.parse(kron_approx, "kron_approx")
        if self.hessian_structure not in SUPPORTED[self.subset_of_weights]:
            combos = "; ".join(
                f"{s.value}: {', '.join(sorted(x.value for x in v))}" for s, v in SUPPORTED.items()
            )
            raise BadInputError(
                f"hessian_structure {self.hessian_structure.value!r} is not available with subset "
                f"{self.subset_of_weights.value!r}; supported combinations: {combos}"
            )
        if backend not in ("auto", "native", "asdl"):
            raise BadInputError(f"backend: expected auto, native or asdl, got {backend!r}")
        if backend == "asdl":
            raise BadInputError("the ASDL backend is not available yet; use backend='native'")
        self.backend = backend
        self.last_layer_name = last_layer_name
        self.feature_reduction = feature_reduction
        self.dict_key_x, self.dict_key_y = dict_key_x, dict_key_y
        self.rank = rank
        self.n_mc_samples = n_mc_samples
        self.seed = seed
        if temperature <= 0 or not math.isfinite(temperature):
            raise BadInputError(f"temperature must be a positive number, got {temperature}")
        self.temperature = float(temperature)

        first = next((p for p in model.parameters()), None)
        if first is None:
            raise BadInputError("the model has no parameters")
        self._device = first.device
        self._dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        self.max_memory = (
            int(max_memory) if max_memory is not None else default_budget(self._device)
        )

        self.subset: ParameterSubset = self._build_subset(subnetwork_indices)
        check_structure_memory(
            self.hessian_structure, self.subset.groups, self._itemsize, self.max_memory, rank
        )
        self.posterior: Posterior = build_posterior(
            self.hessian_structure,
            self.subset.groups,
            self._dtype,
            self._device,
            kron_approx=self.kron_approx,
            rank=rank,
        )
        self.mean = self.subset.mean().to(self._dtype)
        self.prior_precision = prior_precision
        self.prior_mean = prior_mean
        self.sigma_noise = sigma_noise
        self.loss = torch.zeros((), dtype=self._dtype, device=self._device)
        self.n_data = 0
        self.n_outputs: int | None = None
        self.fitted = False
        self.tuning: dict[str, Any] = {}

    # --- construction -----------------------------------------------------------------------
    def _build_subset(self, subnetwork_indices) -> ParameterSubset:
        if self.subset_of_weights == Subset.ALL:
            return AllWeights(self.model, kron_approx=self.kron_approx)
        if self.subset_of_weights == Subset.LAST_LAYER:
            return LastLayer(self.model, self.last_layer_name, self.feature_reduction)
        try:
            from laplace_cli.subnetwork import Subnetwork
        except ImportError:
            raise BadInputError("subset_of_weights 'subnetwork' is not implemented yet") from None
        if subnetwork_indices is None:
            raise BadInputError("subset_of_weights 'subnetwork' needs subnetwork_indices")
        return Subnetwork(self.model, subnetwork_indices)

    @property
    def _itemsize(self) -> int:
        return torch.empty((), dtype=self._dtype).element_size()

    # --- hyperparameters --------------------------------------------------------------------
    @property
    def prior_precision(self) -> Tensor:
        return self._prior_precision

    @prior_precision.setter
    def prior_precision(self, value: float | Sequence[float] | Tensor) -> None:
        t = _as_tensor(value, self._dtype, self._device)
        if t.ndim != 1:
            raise BadInputError(
                f"prior_precision must be a scalar or a vector, got shape {tuple(t.shape)}"
            )
        expand_prior(t, self.subset.groups)  # validates the length
        if self.hessian_structure == Structure.KRON and t.numel() not in (
            1,
            len(self.subset.groups),
        ):
            raise BadInputError(
                f"kron supports a scalar prior precision or one per parameter tensor "
                f"({len(self.subset.groups)} values), got {t.numel()}"
            )
        if not torch.isfinite(t).all() or (t <= 0).any():
            raise BadInputError("prior_precision must be positive and finite")
        self._prior_precision = t

    @property
    def prior_mean(self) -> Tensor:
        return self._prior_mean

    @prior_mean.setter
    def prior_mean(self, value: float | Tensor) -> None:
        t = _as_tensor(value, self._dtype, self._device)
        if t.numel() not in (1, self.n_params):
            raise BadInputError(
                f"prior_mean must be a scalar or have {self.n_params} values, got {t.numel()}"
            )
        self._prior_mean = t

    @property
    def sigma_noise(self) -> Tensor:
        return self._sigma_noise

    @sigma_noise.setter
    def sigma_noise(self, value: float | Sequence[float] | Tensor) -> None:
        t = _as_tensor(value, self._dtype, self._device)
        if self.likelihood != Likelihood.REGRESSION and not torch.all(t == 1):
            raise BadInputError("sigma_noise applies to regression only; leave it at 1")
        if t.numel() != 1:
            raise BadInputError(
                "sigma_noise must be a scalar (per-output noise is not implemented yet)"
            )
        if not torch.isfinite(t).all() or (t <= 0).any():
            raise BadInputError("sigma_noise must be positive and finite")
        self._sigma_noise = t

    @property
    def n_params(self) -> int:
        return self.subset.n_params

    def _scale(self, sigma_noise: Tensor | None = None) -> Tensor:
        """The likelihood factor s: 1/(σ²T) for regression, 1/T otherwise."""
        if self.likelihood == Likelihood.REGRESSION:
            sigma = self.sigma_noise if sigma_noise is None else sigma_noise
            return 1.0 / (sigma.reshape(()) ** 2 * self.temperature)
        return torch.tensor(1.0 / self.temperature, dtype=self._dtype, device=self._device)

    # --- fitting ----------------------------------------------------------------------------
    def _prepare(self, batch: Any) -> tuple[Inputs, Tensor]:
        x, y = split_batch(batch, self.dict_key_x, self.dict_key_y)
        x = to_device(x, self._device, self._dtype)
        y = y.to(self._device)
        if self.likelihood == Likelihood.CLASSIFICATION:
            y = y.long().reshape(-1)
        else:
            y = y.to(self._dtype)
            if y.ndim == 1:
                y = y.unsqueeze(-1)
        return x, y

    def _check_targets(self, f: Tensor, y: Tensor, batch_index: int) -> None:
        n_out = f.shape[1]
        if self.likelihood == Likelihood.CLASSIFICATION:
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_out):
                raise BadInputError(
                    f"batch {batch_index}: labels must lie in [0, {n_out}) for a model with "
                    f"{n_out} outputs, got min {int(y.min())}, max {int(y.max())}"
                )
        elif y.shape != f.shape:
            raise BadInputError(
                f"batch {batch_index}: targets of shape {tuple(y.shape)} do not fit model outputs "
                f"of shape {tuple(f.shape)}"
            )
        if self.likelihood != Likelihood.CLASSIFICATION and not torch.isfinite(y).all():
            raise BadInputError(f"batch {batch_index}: targets contain NaN or Inf")

    def _output_sqrt(self, f: Tensor, y: Tensor) -> Tensor:
        """W (B, C, K): Hessian square root (GGN), loss gradient (EF) or sampled gradients (MC)."""
        if self.curvature == Curvature.GGN:
            return lik.hessian_sqrt(self.likelihood, f)
        if self.curvature == Curvature.EF:
            return lik.output_gradient(self.likelihood, f, y).unsqueeze(-1)
        from laplace_cli.curvature.mc_fisher import sampled_output_gradients

        return sampled_output_gradients(self.likelihood, f, self.n_mc_samples, self._fit_generator)

    def fit(self, train_loader: Iterable[Any], override: bool = True) -> Laplace:
        """Accumulate the curvature over the data, then decompose it.

        `override=False` adds to the curvature, loss and data count of an earlier fit (online
        fitting over several loaders gives the same posterior as one fit over their union).
        """
        if override:
            self.posterior.reset()
            self.loss = torch.zeros((), dtype=self._dtype, device=self._device)
            self.n_data = 0
        self._fit_generator = torch.Generator(device=self._device).manual_seed(self.seed)
        dense = self.posterior.needs_dense_jacobian
        for index, batch in enumerate(train_loader):
            x, y = self._prepare(batch)
            if batch_size(x) == 0:
                continue
            chunks = [(x, y)]
            if dense:
                rows = self._jacobian_rows()
                chunks = [
                    (xc, y[i * rows : (i + 1) * rows]) for i, xc in enumerate(iter_rows(x, rows))
                ]
            for xc, yc in chunks:
                if dense:
                    f, J = self.subset.jacobians(xc)
                    factors = None
                else:
                    f, factors = self.subset.factors(xc)
                    J = None
                f = f.to(self._dtype)
                if self.n_outputs is None:
                    self.n_outputs = f.shape[1]
                elif f.shape[1] != self.n_outputs:
                    raise BadInputError(
                        f"batch {index}: model gave {f.shape[1]} outputs, earlier {self.n_outputs}"
                    )
                self._check_targets(f, yc, index)
                if not torch.isfinite(f).all():
                    raise NumericalError(f"batch {index}: the model's outputs contain NaN or Inf")
                W = self._output_sqrt(f, yc)
                self.posterior.accumulate(W, factors, J)
                self.loss = self.loss + lik.summed_loss(self.likelihood, f, yc).detach()
                self.n_data += f.shape[0]
            self._check_finite(index)
        if self.n_data == 0:
            raise BadInputError("the training data is empty")
        self.posterior.finalize()
        self.mean = self.subset.mean().to(self._dtype)
        self.fitted = True
        return self

    def _check_finite(self, batch_index: int) -> None:
        if not torch.isfinite(self.loss):
            raise NumericalError(f"batch {batch_index}: the training loss is not finite")
        for key, t in self.posterior_state_partial().items():
            if not torch.isfinite(t).all():
                raise NumericalError(f"batch {batch_index}: the curvature of {key} is not finite")

    def posterior_state_partial(self) -> dict[str, Tensor]:
        """Raw curvature tensors before decomposition (for finiteness checks)."""
        p = self.posterior
        if hasattr(p, "h"):
            return {"diag": p.h}
        if hasattr(p, "H"):
            return {"full": p.H}
        if hasattr(p, "B"):
            out = {}
            for g, B, A, d in zip(p.groups, p.B, p.A_sum, p.diag):
                for name, t in (("B", B), ("A", A), ("diag", d)):
                    if t is not None:
                        out[f"{g.name} ({name})"] = t
            return out
        return {}

    def _jacobian_rows(self) -> int:
        n_out = self.n_outputs or 1
        return jacobian_rows(max(n_out, 1), self.n_params, self._itemsize, self.max_memory)

    def _require_fit(self) -> None:
        if not self.fitted:
            raise BadInputError("the Laplace approximation is not fitted yet; call fit() first")

    # --- posterior quantities ---------------------------------------------------------------
    @property
    def posterior_precision(self) -> Tensor:
        """Dense posterior precision (P, P); for large models use the structure's methods instead."""
        self._require_fit()
        return self.posterior.dense_precision(self.prior_precision, self._scale())

    @property
    def posterior_covariance(self) -> Tensor:
        self._require_fit()
        return self.posterior.dense_covariance(self.prior_precision, self._scale())

    @property
    def posterior_variance(self) -> Tensor:
        """Marginal variances of the parameters (P,) (diag: exact; others from the dense inverse)."""
        self._require_fit()
        if self.hessian_structure == Structure.DIAG:
            return 1.0 / self.posterior.diag_precision(self.prior_precision, self._scale())
        return self.posterior_covariance.diagonal()

    @property
    def log_det_posterior_precision(self) -> Tensor:
        self._require_fit()
        return self.posterior.log_det(self.prior_precision, self._scale())

    @property
    def log_det_prior_precision(self) -> Tensor:
        return torch.log(expand_prior(self.prior_precision, self.subset.groups)).sum()

    @property
    def log_det_ratio(self) -> Tensor:
        return self.log_det_posterior_precision - self.log_det_prior_precision

    @property
    def scatter(self) -> Tensor:
        """(θ* − μ₀)ᵀ P₀ (θ* − μ₀)."""
        delta = self.mean - self.prior_mean
        return (delta * expand_prior(self.prior_precision, self.subset.groups) * delta).sum()

    @property
    def log_likelihood(self) -> Tensor:
        """Log-likelihood of the training data at the MAP (with σ and T)."""
        self._require_fit()
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
        self._require_fit()
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
        scale = self._scale(sigma)
        prior_vec = expand_prior(prior, self.subset.groups)
        log_lik = lik.log_likelihood(
            self.likelihood, self.loss, self.n_data, self.n_outputs or 1, sigma, self.temperature
        )
        log_det_post = self.posterior.log_det(prior, scale)
        log_det_prior = torch.log(prior_vec).sum()
        delta = self.mean - self.prior_mean
        scatter = (delta * prior_vec * delta).sum()
        return log_lik - 0.5 * (log_det_post - log_det_prior + scatter)

    def sample(self, n_samples: int = 100, generator: torch.Generator | None = None) -> Tensor:
        """Weight samples θ ~ N(θ*, Λ⁻¹), (n_samples, P)."""
        self._require_fit()
        z = self.posterior.sample(n_samples, self.prior_precision, self._scale(), generator)
        return self.mean + z

    # --- predictive -------------------------------------------------------------------------
    def _inputs(self, x: Any) -> Inputs:
        return to_device(x, self._device, self._dtype)

    def functional_variance(self, x: Any) -> tuple[Tensor, Tensor]:
        """GLM mean f(x; θ*) (B, C) and covariance J Σ Jᵀ (B, C, C).

        diag and kron work layer by layer from layer inputs and output Jacobians; full and
        low-rank use dense Jacobians in chunks bounded by `max_memory`.
        """
        self._require_fit()
        x = self._inputs(x)
        prior, scale = self.prior_precision, self._scale()
        if not self.posterior.needs_dense_jacobian:
            f, factors = self.subset.factors(x)
            return f.to(self._dtype), self.posterior.functional_variance(
                prior, scale, factors=factors
            )
        mus, vars_ = [], []
        for xc in iter_rows(x, self._jacobian_rows()):
            f, J = self.subset.jacobians(xc)
            mus.append(f)
            vars_.append(self.posterior.functional_variance(prior, scale, J=J))
        return torch.cat(mus).to(self._dtype), torch.cat(vars_)

    def glm_predictive_distribution(
        self, x: Any, joint: bool = False, diagonal_output: bool = False
    ) -> tuple[Tensor, Tensor]:
        """(f_μ, f_var): f_var (B, C, C), (B, C) with `diagonal_output`, (B·C, B·C) with `joint`."""
        if joint:
            return self.joint_functional_covariance(x)
        f_mu, f_var = self.functional_variance(x)
        if diagonal_output:
            f_var = torch.diagonal(f_var, dim1=-2, dim2=-1)
        return f_mu, f_var

    def joint_functional_covariance(self, x: Any) -> tuple[Tensor, Tensor]:
        """f_μ flattened (B·C,) and the joint covariance over all outputs of the batch (B·C, B·C)."""
        self._require_fit()
        x = self._inputs(x)
        f, J = self.subset.jacobians(x)
        Jf = J.reshape(-1, self.n_params)
        cov = self.posterior.dense_covariance(self.prior_precision, self._scale())
        return f.reshape(-1).to(self._dtype), Jf @ cov @ Jf.T

    def __call__(
        self,
        x: Any,
        pred_type: PredType | str = "glm",
        link_approx: LinkApprox | str = "probit",
        n_samples: int = 100,
        joint: bool = False,
        diagonal_output: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Predictive distribution at inputs `x`.

        classification / binary: probabilities (B, C). regression: `(f_mu, f_var)` with f_var
        the epistemic covariance (B, C, C) — without observation noise, as in laplace-torch;
        add `sigma_noise**2` (or use `predictive_variance(..., with_noise=True)`).
        """
        self._require_fit()
        if self.likelihood == Likelihood.REGRESSION:
            pt = PredType.parse(pred_type, "pred_type")
            if pt == PredType.GLM:
                return self.glm_predictive_distribution(
                    x, joint=joint, diagonal_output=diagonal_output
                )
            samples = self.predictive_samples(
                x, pred_type="nn", n_samples=n_samples, generator=generator
            )
            mean = samples.mean(0)
            centred = samples - mean
            cov = torch.einsum("sbc,sbd->bcd", centred, centred) / samples.shape[0]
            return mean, torch.diagonal(cov, dim1=-2, dim2=-1) if diagonal_output else cov
        pt, la = check_pred_options(pred_type, link_approx)
        if joint:
            raise BadInputError("joint=True is for regression outputs")
        if pt == PredType.GLM:
            f_mu, f_var = self.functional_variance(x)
            return glm_link(self.likelihood, la, f_mu, f_var, n_samples, generator)
        return self.predictive_samples(
            x, pred_type="nn", n_samples=n_samples, generator=generator
        ).mean(0)

    def functional_samples(
        self,
        x: Any,
        pred_type: PredType | str = "glm",
        n_samples: int = 100,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Samples of the outputs before the link, (n_samples, B, C)."""
        self._require_fit()
        pt = PredType.parse(pred_type, "pred_type")
        if pt == PredType.GLM:
            f_mu, f_var = self.functional_variance(x)
            return sample_gaussian_outputs(f_mu, f_var, n_samples, generator)
        x = self._inputs(x)
        thetas = self.sample(n_samples, generator)
        return torch.stack([self.subset.forward_with(x, theta).to(self._dtype) for theta in thetas])

    def predictive_samples(
        self,
        x: Any,
        pred_type: PredType | str = "glm",
        n_samples: int = 100,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Samples of the predictive after the link: probabilities or outputs, (n_samples, B, C)."""
        return link(self.likelihood, self.functional_samples(x, pred_type, n_samples, generator))

    # --- tuning -----------------------------------------------------------------------------
    def optimize_prior_precision(self, method: str = "marglik", **kwargs: Any) -> dict[str, Any]:
        """Tune the prior precision (and σ for regression); see `laplace_cli.tuning`."""
        from laplace_cli.tuning import optimize_prior_precision

        return optimize_prior_precision(self, method=method, **kwargs)
