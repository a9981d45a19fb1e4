"""`Laplace`: a parameter subset and a posterior structure, composed (no class per pair).

    la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron")
    la.fit(train_loader)
    la.optimize_prior_precision(method="marglik")
    probs = la(x, pred_type="glm", link_approx="probit")

The posterior precision is Λ = s·H + diag(δ) with H the GGN or empirical Fisher summed over the
data, δ the prior precision and s = 1/T (1/(σ²T) for regression); see docs/design.md §5.

This module holds construction and the hyperparameters; the class composes the fitting half
(`fitting.FitMixin`), the predictive half (`prediction.PredictiveMixin`) and the posterior
quantities (`posterior_quantities.PosteriorMixin`). Pure steps live beside them:
`construction` (refusals, placement, the subset), `hyperparameters` (δ, μ₀, σ, T checks),
`targets`, `fit_checks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from laplace_cli.core.enums import Curvature, KronApprox, Likelihood, Structure, Subset
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.construction import placement, plain_subset, refuse_unsupported
from laplace_cli.laplace.dense_outputs import (
    build_dense_subset,
    check_dense_choices,
    parse_output_positions,
)
from laplace_cli.laplace.fitting import FitMixin
from laplace_cli.laplace.hyperparameters import HyperparameterMixin, check_temperature
from laplace_cli.laplace.hyperparameters import as_tensor as as_tensor  # its former home
from laplace_cli.laplace.posterior_quantities import PosteriorMixin
from laplace_cli.laplace.precision import check_half_precision
from laplace_cli.laplace.prediction import PredictiveMixin
from laplace_cli.posterior import Posterior, build_posterior
from laplace_cli.posterior.memory import check_structure_memory, jacobian_rows
from laplace_cli.posterior.table import parse_structure, structure_spec
from laplace_cli.posterior.table import supported_combinations as supported_combinations
from laplace_cli.subsets.base import ParameterSubset

#: Built-in structures per subset (a view of `posterior.table`, which also holds registered ones).
SUPPORTED = {
    subset: {s for s in Structure if s is not Structure.GP and structure_spec(s).supports(subset)}
    for subset in Subset
}


#: Picks the flavour class for `Laplace(*args, **kwargs)`; installed by `laplace_cli.laplace`
#: (flavour_table.flavour_for), so this module does not import the subclasses defined on it.
_flavour_resolver: Callable[[tuple, dict], Callable[..., Any]] | None = None


def set_flavour_resolver(resolver: Callable[[tuple, dict], Callable[..., Any]] | None) -> None:
    """Install the function that maps `Laplace(...)`'s arguments to a flavour class."""
    global _flavour_resolver
    _flavour_resolver = resolver


class _FlavourFactory(type):
    """`Laplace(...)` builds the laplace-torch flavour for its subset and structure.

    laplace-torch's `Laplace` is a factory returning e.g. a `KronLLLaplace`; here the flavours
    are subclasses of `Laplace` that fix subset and structure, and calling `Laplace` itself
    creates an instance of the matching one, initialised by `Laplace.__init__` with the
    arguments as given (so every existing call keeps its meaning). Subclasses are built as usual.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is not Laplace:
            return super().__call__(*args, **kwargs)
        flavour = _flavour_resolver(args, kwargs) if _flavour_resolver is not None else cls
        if not (isinstance(flavour, type) and issubclass(flavour, Laplace)):
            # function-space Laplace (hessian_structure="gp") is its own class: the resolver
            # returns a builder taking Laplace's arguments (laplace/flavour_table.py).
            return flavour(*args, **kwargs)
        obj = flavour.__new__(flavour)
        Laplace.__init__(obj, *args, **kwargs)
        return obj


class Laplace(
    HyperparameterMixin, PosteriorMixin, PredictiveMixin, FitMixin, metaclass=_FlavourFactory
):
    """Laplace approximation of a trained network's posterior over (a subset of) its weights.

    Args:
        model: a trained `nn.Module` mapping a batch of inputs to (B, C) outputs. It is not
            mutated: hooks are removed after use and no copy of it is kept.
        likelihood: "classification", "regression" or "binary".
        subset_of_weights: "last_layer" (default, as laplace-torch), "all" or "subnetwork" (with
            `subnetwork_indices`).
        hessian_structure: "diag", "kron", "full" or "lowrank" (with `rank`, default
            min(P, 100): top-k GGN eigenpairs found matrix-free, see posterior/lowrank.py).
        curvature: "ggn" (exact generalised Gauss-Newton), "ef" (empirical Fisher) or
            "mc_fisher" (Fisher from `n_mc_samples` targets sampled per input, seeded by `seed`)
            or "hessian" (the exact Hessian of the loss, structures full and diag; it may be
            indefinite, then a non positive definite Λ raises NumericalError; fisher/hessian.py).
        prior_precision: δ, a scalar, one value per parameter tensor, or one per parameter.
        prior_mean: μ₀, a scalar or one value per parameter.
        temperature: T; the likelihood term is divided by it.
        sigma_noise: observation noise σ for regression: a scalar, or one value per output
            (Λ = Σ_k H_k / (σ_k² T) + diag(δ); structures diag and full with curvature ggn).
        last_layer_name, feature_reduction: for the last-layer subset.
        kron_approx: "expand" or "reduce" for inputs with a weight-sharing dimension.
        max_memory: budget in bytes for curvature and Jacobian chunks (default: half of free).
        curvature_dtype: dtype of the curvature, posterior and predictions (float32 / float64);
            default the model's, float32 for a bfloat16 / float16 model, whose forward and
            backward passes stay in its own dtype (docs/half-precision.md).
        dict_key_x, dict_key_y: keys of dict batches.
        n_mc_samples, seed: targets sampled per input for curvature "mc_fisher", and the seed
            of the fit's random streams (MC targets, the lowrank eigensolver's start block).
        prior: a fitted `Laplace` whose posterior becomes this one's prior (continual
            learning; see `set_prior_from`). It sets `prior_mean` and `prior_precision`.
        output_positions: for models with dense outputs (B, C, *S) (segmentation, per-token):
            "independent" (the positions' log-likelihoods summed) or "mean" (their mean per
            input); the curvature is the per-position GGN summed, `la(x)` is per position
            (B, C, *S). `ignore_index`: the classification target of a masked position.
            docs/dense-outputs.md.
        enable_backprop: predictions (`la(x)`, `functional_samples`, ...) stay differentiable
            in the inputs x (GLM through dense per-sample Jacobians, NN through the sampled
            networks), as laplace-torch's flag.
        likelihood "reward_modeling" (laplace-torch's): fitted and tuned as classification,
            `la(x)` returns the regression-style (f_mu, f_var); `la.likelihood` then reads
            "classification" and `la.reward_modeling` is True.
        backend: "auto" / "native" (this engine), "asdl" (the optional ASDL path), or one of
            laplace-torch's class names from `laplace_cli.curvature` (`CurvlinopsGGN`,
            `AsdlEF`, ...), which select the curvature; see laplace/backend_choice.py.
        backend_kwargs, asdl_fisher_kwargs: laplace-torch's; `{"stochastic": True,
            "num_samples": k}` selects the MC Fisher with k samples (docs/migrating.md).

    `Laplace(...)` returns the laplace-torch flavour for the subset and structure (e.g.
    `KronLLLaplace`, a subclass of `Laplace`), so `isinstance` checks of laplace-torch code hold;
    every flavour is this class with the subset and structure fixed (laplace_cli/laplace/flavours.py).
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: Likelihood | str,
        subset_of_weights: Subset | str = "last_layer",
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
        backend: str | type | None = "auto",
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
        max_memory: int | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        n_mc_samples: int = 1,
        seed: int = 0,
        prior: Laplace | None = None,
        enable_backprop: bool = False,
        curvature_dtype: torch.dtype | str | None = None,
        output_positions: str | None = None,
        ignore_index: int = -100,
    ) -> None:
        self.model = model
        # Dense outputs (B, C, *S): positions as rows of the likelihood (laplace/dense_outputs.py).
        self.output_positions = parse_output_positions(output_positions)
        self.ignore_index = int(ignore_index)
        self.output_shape: tuple[int, ...] | None = None
        # The argument as given: a laplace-torch backend class is kept for the flavours'
        # `backend` object (laplace/flavours.py); the engine uses `_backend_name`.
        self._backend_class = backend
        # Predictions differentiable in the inputs (dense Jacobians; laplace-torch's flag).
        self.enable_backprop = bool(enable_backprop)
        backend, n_mc_samples = self._parse_choices(
            likelihood,
            subset_of_weights,
            hessian_structure,
            curvature,
            backend,
            kron_approx,
            n_mc_samples,
            backend_kwargs,
            asdl_fisher_kwargs,
        )
        self._refuse_unsupported(model, backend)
        if self.output_positions is not None:
            check_dense_choices(self, backend, feature_reduction)
        # "auto" is the native implementation; "asdl" is checked once the subset exists.
        # The engine's own name; `backend` (a property) shows it, and laplace-torch's flavour
        # classes show a backend object there instead (laplace/flavours.py).
        self._backend_name = backend
        self.last_layer_name = last_layer_name
        self.feature_reduction = feature_reduction
        self.dict_key_x, self.dict_key_y = dict_key_x, dict_key_y
        self.rank = rank
        self.n_mc_samples = n_mc_samples
        self.seed = seed
        self.temperature = check_temperature(temperature)
        self._place(model, max_memory, curvature_dtype)
        check_half_precision(self._model_dtype, self.hessian_structure, self._backend_name)
        self._build(subnetwork_indices, rank)
        self.mean = self.subset.mean().to(self._dtype)
        self.prior_precision = prior_precision
        self.prior_mean = prior_mean
        self.sigma_noise = sigma_noise
        self.loss = torch.zeros((), dtype=self._dtype, device=self._device)
        self.n_data = 0
        self.n_outputs: int | None = None
        self.fitted = False
        self.tuning: dict[str, Any] = {}
        if prior is not None:
            self.set_prior_from(prior)

    @property
    def backend(self) -> Any:
        """The engine that computes the curvature: "auto", "native" or "asdl"."""
        return self._backend_name

    def _parse_choices(
        self,
        likelihood: Likelihood | str,
        subset_of_weights: Subset | str,
        hessian_structure: Structure | str,
        curvature: Curvature | str,
        backend: Any,
        kron_approx: KronApprox | str,
        n_mc_samples: int,
        backend_kwargs: dict[str, Any] | None,
        asdl_fisher_kwargs: dict[str, Any] | None,
    ) -> tuple[str, int]:
        """Parse the string/enum choices onto `self`; returns (backend name, MC samples)."""
        # laplace-torch's "reward_modeling": fitted as classification, predicted as regression
        # (`la(x)` gives (f_mu, f_var) of the reward logits); see laplace_predictive.__call__.
        self.reward_modeling = str(getattr(likelihood, "value", likelihood)) == "reward_modeling"
        if self.reward_modeling:
            likelihood = Likelihood.CLASSIFICATION
        self.likelihood = Likelihood.parse(likelihood, "likelihood")
        self.subset_of_weights = Subset.parse(subset_of_weights, "subset_of_weights")
        self.hessian_structure = parse_structure(hessian_structure, "hessian_structure")
        self.structure_spec = structure_spec(self.hessian_structure)
        from laplace_cli.laplace.backend_choice import resolve_backend

        # laplace-torch's backend classes (and backend_kwargs) only choose the curvature here.
        backend, curvature, n_mc_samples = resolve_backend(
            backend, str(curvature), n_mc_samples, backend_kwargs, asdl_fisher_kwargs
        )
        self.curvature = Curvature.parse(curvature, "curvature")
        self.kron_approx = KronApprox.parse(kron_approx, "kron_approx")
        return backend, n_mc_samples

    def _refuse_unsupported(self, model: nn.Module, backend: str) -> None:
        """Refuse a subset × structure, model form or backend this engine cannot do."""
        refuse_unsupported(
            model,
            backend,
            self.structure_spec,
            self.subset_of_weights,
            self.hessian_structure,
            self.curvature,
            self.output_positions,
        )

    def _place(self, model: nn.Module, max_memory: int | None, curvature_dtype: Any = None) -> None:
        """Device, dtypes and memory budget (construction.py): `_model_dtype` is what the model
        runs in, `_dtype` the posterior's."""
        self._device, self._model_dtype, self._dtype, self.max_memory = placement(
            model, max_memory, curvature_dtype
        )

    def _build(self, subnetwork_indices: Any, rank: int | None) -> None:
        """The parameter subset and the (empty) posterior of the chosen structure."""
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
        # The exact Hessian may be indefinite: the posterior then checks Λ = s·H + δ itself.
        self.posterior.psd_curvature = self.curvature != Curvature.HESSIAN
        if self._backend_name == "asdl":
            from laplace_cli.fisher.asdl import check_asdl

            check_asdl(self)

    # --- construction -----------------------------------------------------------------------
    def _build_subset(self, subnetwork_indices) -> ParameterSubset:
        if self.output_positions is not None:
            return build_dense_subset(self, subnetwork_indices, self._build_plain_subset)
        return self._build_plain_subset(subnetwork_indices)

    def _build_plain_subset(self, subnetwork_indices) -> ParameterSubset:
        return plain_subset(
            self.model,
            self.subset_of_weights,
            self.kron_approx,
            self.last_layer_name,
            self.feature_reduction,
            subnetwork_indices,
        )

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the posterior and of every prediction (the model's, float32
        for a bfloat16 / float16 model, or `curvature_dtype`)."""
        return self._dtype

    @property
    def model_dtype(self) -> torch.dtype:
        """The dtype the model runs in; floating inputs are cast to it (`as_inputs`)."""
        return self._model_dtype

    @property
    def device(self) -> torch.device:
        """The device of the model, the posterior and every prediction."""
        return self._device

    @property
    def _itemsize(self) -> int:
        return torch.empty((), dtype=self._dtype).element_size()

    @property
    def n_params(self) -> int:
        return self.subset.n_params

    def curvature_scale(self, sigma_noise: Tensor | None = None) -> Tensor:
        """The likelihood factor s: 1/(σ²T) for regression, 1/T otherwise."""
        if self.likelihood == Likelihood.REGRESSION:
            sigma = self.sigma_noise if sigma_noise is None else sigma_noise
            if sigma.numel() > 1:
                # One factor per output, (C,): the posterior keeps H per output.
                return 1.0 / (sigma.reshape(-1) ** 2 * self.temperature)
            return 1.0 / (sigma.reshape(()) ** 2 * self.temperature)
        # One tensor per temperature, not one per call (a prediction asks for it every batch).
        key = (self.temperature, self._dtype, self._device)
        cached = self.__dict__.get("_unit_scale")
        if cached is None or cached[0] != key:
            value = torch.tensor(1.0 / self.temperature, dtype=self._dtype, device=self._device)
            cached = self.__dict__["_unit_scale"] = (key, value)
        return cached[1]

    def jacobian_chunk_rows(self) -> int:
        n_out = self.n_outputs or 1
        return jacobian_rows(max(n_out, 1), self.n_params, self._itemsize, self.max_memory)

    def require_fit(self) -> None:
        if not self.fitted:
            raise BadInputError("the Laplace approximation is not fitted yet; call fit() first")

    # --- tuning -----------------------------------------------------------------------------
    def optimize_prior_precision(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Tune the prior precision (σ too with `tune_sigma_noise=True`); see `laplace_cli.tuning.api`.

        Positional arguments follow laplace-torch 0.3 (`pred_type, method, n_steps, lr,
        init_prior_prec, prior_structure, val_loader, loss, log_prior_prec_min,
        log_prior_prec_max, grid_size, link_approx, n_samples, verbose, progress_bar,
        log_prior_prec_base`); a first positional "marglik" or "gridsearch" is still the method
        (this project's earlier signature). See `tuning.laplace_torch_arguments`.
        """
        from laplace_cli.tuning.api import laplace_torch_arguments, optimize_prior_precision

        return optimize_prior_precision(self, **laplace_torch_arguments(args, kwargs))
