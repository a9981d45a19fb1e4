"""`Laplace`: a parameter subset and a posterior structure, composed (no class per pair).

    la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron")
    la.fit(train_loader)
    la.optimize_prior_precision(method="marglik")
    probs = la(x, pred_type="glm", link_approx="probit")

The posterior precision is Λ = s·H + diag(δ) with H the GGN or empirical Fisher summed over the
data, δ the prior precision and s = 1/T (1/(σ²T) for regression); see docs/design.md §5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from laplace_cli.core import likelihoods as lik
from laplace_cli.core.batches import Inputs, batch_size, split_batch, to_device
from laplace_cli.core.enums import (
    Curvature,
    KronApprox,
    Likelihood,
    Structure,
    Subset,
)
from laplace_cli.core.errors import BadInputError, MissingArgumentError, NumericalError
from laplace_cli.laplace import dense_outputs as dense
from laplace_cli.laplace.dense_outputs import (
    build_dense_subset,
    check_dense_choices,
    parse_output_positions,
)
from laplace_cli.laplace.posterior_quantities import PosteriorMixin
from laplace_cli.laplace.precision import check_half_precision, model_dtype_of, posterior_dtype
from laplace_cli.laplace.prediction import PredictiveMixin
from laplace_cli.posterior import Posterior, build_posterior, expand_prior, softmax_last_layer
from laplace_cli.posterior.memory import (
    check_structure_memory,
    default_budget,
    jacobian_rows,
)
from laplace_cli.posterior.table import parse_structure, structure_spec, supported_combinations
from laplace_cli.subsets.base import AllWeights, ParameterSubset, iter_rows
from laplace_cli.subsets.last_layer import LastLayer
from laplace_cli.subsets.precision import cast_factors
from laplace_cli.subsets.projected_outputs import projected_outputs

#: Built-in structures per subset (a view of `posterior.table`, which also holds registered ones).
SUPPORTED = {
    subset: {s for s in Structure if s is not Structure.GP and structure_spec(s).supports(subset)}
    for subset in Subset
}


def as_tensor(
    value: float | Sequence[float] | Tensor, dtype: torch.dtype, device: torch.device
) -> Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    return t.reshape(-1) if t.ndim == 0 else t


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


class Laplace(PosteriorMixin, PredictiveMixin, metaclass=_FlavourFactory):
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
            "mc_fisher" (Fisher from `n_mc_samples` targets sampled per input, seeded by `seed`).
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
        if temperature <= 0 or not math.isfinite(temperature):
            raise BadInputError(f"temperature must be a positive number, got {temperature}")
        self.temperature = float(temperature)
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
        if not self.structure_spec.supports(self.subset_of_weights):
            combos = supported_combinations()
            raise BadInputError(
                f"hessian_structure {self.hessian_structure.value!r} is not available with subset "
                f"{self.subset_of_weights.value!r}; supported combinations: {combos}"
            )
        if (
            isinstance(model, torch.jit.ScriptModule)
            and self.subset_of_weights == Subset.ALL
            and self.hessian_structure == Structure.KRON
        ):
            # K-FAC needs each layer's inputs and output gradients, i.e. forward hooks, which
            # compiled modules do not take; without them every tensor would silently get a
            # diagonal block.
            from laplace_cli.subsets.scripted import KRON_HINT

            raise BadInputError(
                "--structure kron over all weights needs forward hooks on the layers, which a "
                f"TorchScript model does not take; {KRON_HINT}"
            )
        if backend not in ("auto", "native", "asdl"):
            raise BadInputError(f"backend: expected auto, native or asdl, got {backend!r}")

    def _place(self, model: nn.Module, max_memory: int | None, curvature_dtype: Any = None) -> None:
        """Device, dtypes and memory budget, from the model's first parameter.

        `_model_dtype` is what the model runs in (inputs are cast to it); `_dtype` is the
        posterior's: the model's, float32 for a bfloat16 / float16 model, or `curvature_dtype`
        (laplace/precision.py)."""
        first = next((p for p in model.parameters()), None)
        if first is None:
            raise BadInputError("the model has no parameters")
        self._device = first.device
        self._model_dtype = model_dtype_of(model)
        self._dtype = posterior_dtype(self._model_dtype, curvature_dtype)
        self.max_memory = (
            int(max_memory) if max_memory is not None else default_budget(self._device)
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
        if self._backend_name == "asdl":
            from laplace_cli.fisher.asdl import check_asdl

            check_asdl(self)

    # --- construction -----------------------------------------------------------------------
    def _build_subset(self, subnetwork_indices) -> ParameterSubset:
        if self.output_positions is not None:
            return build_dense_subset(self, subnetwork_indices, self._build_plain_subset)
        return self._build_plain_subset(subnetwork_indices)

    def _build_plain_subset(self, subnetwork_indices) -> ParameterSubset:
        if self.subset_of_weights == Subset.ALL:
            return AllWeights(self.model, kron_approx=self.kron_approx)
        if self.subset_of_weights == Subset.LAST_LAYER:
            return LastLayer(self.model, self.last_layer_name, self.feature_reduction)
        try:
            from laplace_cli.subsets.subnetwork import Subnetwork
        except ImportError:
            raise BadInputError("subset_of_weights 'subnetwork' is not implemented yet") from None
        if subnetwork_indices is None:
            raise MissingArgumentError(
                "subset_of_weights 'subnetwork' needs subnetwork_indices (a 1-D tensor of "
                "parameter indices, e.g. laplace_cli.utils.LargestMagnitudeSubnetMask(model, "
                "n_params_subnet=128).select())"
            )
        return Subnetwork(self.model, subnetwork_indices)

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

    # --- hyperparameters --------------------------------------------------------------------
    @property
    def prior_precision(self) -> Tensor:
        return self._prior_precision

    @prior_precision.setter
    def prior_precision(self, value: float | Sequence[float] | Tensor) -> None:
        t = as_tensor(value, self._dtype, self._device)
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
        t = as_tensor(value, self._dtype, self._device)
        # laplace-torch's rule: a scalar or a vector of length 1 or P. A (P, 1) column used to
        # be accepted and broadcast against the (P,) mean into a (P, P) scatter term.
        if t.ndim != 1:
            raise BadInputError(
                f"prior_mean must be a scalar or a vector of {self.n_params} values, got shape "
                f"{tuple(t.shape)}; flatten it with prior_mean.reshape(-1)"
            )
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
        t = as_tensor(value, self._dtype, self._device)
        if self.likelihood != Likelihood.REGRESSION and (t.numel() != 1 or not torch.all(t == 1)):
            raise BadInputError("sigma_noise applies to regression only; leave it at 1")
        if t.ndim != 1:
            raise BadInputError(
                f"sigma_noise must be a scalar or one value per output, got shape {tuple(t.shape)}"
            )
        if not torch.isfinite(t).all() or (t <= 0).any():
            raise BadInputError("sigma_noise must be positive and finite")
        if t.numel() > 1:
            self._use_per_output_noise(t.numel())
        self._sigma_noise = t

    def _use_per_output_noise(self, n: int) -> None:
        """Per-output σ: Λ = Σ_k H_k / (σ_k² T) + diag(δ), so H is kept per output k.

        Only the GGN of a Gaussian likelihood splits into per-output terms (its output Hessian
        is the identity); the empirical and MC Fisher mix outputs in every outer product, and
        kron / lowrank factorise the summed curvature, so those refuse a vector σ.
        """
        n_outputs = getattr(self, "n_outputs", None)  # None while __init__ runs
        if n_outputs is not None and n != n_outputs:
            raise BadInputError(f"sigma_noise has {n} values but the model has {n_outputs} outputs")
        split = self.posterior.split_outputs
        if split == n:
            return
        if split is not None:
            raise BadInputError(
                f"this posterior keeps the curvature of {split} outputs, sigma_noise has {n} values"
            )
        if self.curvature != Curvature.GGN:
            raise BadInputError(
                f"per-output sigma_noise needs curvature 'ggn', got {self.curvature.value!r} "
                "(the empirical and MC Fisher mix outputs in every outer product)"
            )
        if self.hessian_structure not in (Structure.DIAG, Structure.FULL):
            raise BadInputError(
                f"per-output sigma_noise needs hessian_structure 'diag' or 'full', got "
                f"{self.hessian_structure.value!r} (its curvature is factorised over all outputs "
                "at once); use a scalar sigma_noise or structure diag/full"
            )
        if getattr(self, "fitted", False):
            raise BadInputError(
                "this posterior was fitted with a scalar sigma_noise; refit with a per-output "
                f"sigma_noise ({n} values) to use one noise level per output"
            )
        self.posterior.split_by_output(n)

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
        return torch.tensor(1.0 / self.temperature, dtype=self._dtype, device=self._device)

    # --- fitting ----------------------------------------------------------------------------
    def prepare_batch(self, batch: Any) -> tuple[Inputs, Tensor]:
        x, y = split_batch(batch, self.dict_key_x, self.dict_key_y)
        x = to_device(x, self._device, self._model_dtype)
        y = y.to(self._device)
        if self.output_positions is not None:
            return x, dense.prepare_targets(self.likelihood, y, self._dtype)
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
        if self.likelihood == Likelihood.BINARY and y.numel() and ((y < 0) | (y > 1)).any():
            raise BadInputError(
                f"batch {batch_index}: binary targets must lie in [0, 1] (one 0/1 column per "
                f"label), got values in [{float(y.min())}, {float(y.max())}]"
            )

    def _output_sqrt(self, f: Tensor, y: Tensor) -> Tensor:
        """W (B, C, K): Hessian square root (GGN), loss gradient (EF) or sampled gradients (MC)."""
        if self.output_positions is not None:  # block-diagonal over positions
            return dense.output_sqrt(self, f, y, self._row_output_sqrt)
        return self._row_output_sqrt(f, y)

    def _row_output_sqrt(self, f: Tensor, y: Tensor) -> Tensor:
        """`_output_sqrt` of outputs (B, C)."""
        if self.curvature == Curvature.GGN:
            return lik.hessian_sqrt(self.likelihood, f)
        if self.curvature == Curvature.EF:
            return lik.output_gradient(self.likelihood, f, y).unsqueeze(-1)
        from laplace_cli.fisher.mc_fisher import sampled_output_gradients

        return sampled_output_gradients(self.likelihood, f, self.n_mc_samples, self._fit_generator)

    def fit(
        self,
        train_loader: Iterable[Any],
        override: bool = True,
        *,
        reduce: Callable[[list[Tensor]], None] | None = None,
        start_batch: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ) -> Laplace:
        """Accumulate the curvature over the data, then decompose it.

        `override=False` adds to the curvature, loss and data count of an earlier fit (online
        fitting over several loaders gives the same posterior as one fit over their union; kron
        keeps its raw factor sums for this, and the MC Fisher's random stream continues). A
        posterior set as prior (`set_prior_from`) stays in place across `override=True` refits.

        The lowrank structure needs the data several times (one pass per block Krylov step), so
        `train_loader` must then be re-iterable (a DataLoader or a list, not an iterator).

        Hooks for fits over data shards and resumable fits (diag, kron and full; see
        `laplace_cli.pipeline.distributed` and `laplace_cli.pipeline.resume`):
            reduce: sums a list of tensors in place across processes (an all-reduce); applied
                to the raw sums (`partial_state`: curvature sums, loss, n_data) just before
                `finalize`, so each process fits its shard and all end with the posterior of
                the union.
            start_batch: batches of `train_loader` before this index are skipped (their sums
                were restored with `load_partial_state`; pass `override=False`).
            on_batch: called with the number of batches done after each batch (checkpoints).
        """
        self._start_fit(
            override,
            sharded_or_resumed=bool(reduce is not None or start_batch or on_batch is not None),
        )
        if self.structure_spec.needs_loader:
            return self._fit_matrix_free(train_loader)
        dense = self.posterior.needs_dense_jacobian
        for index, batch in enumerate(train_loader):
            if index < start_batch:
                continue
            x, y = self.prepare_batch(batch)
            if batch_size(x) == 0:
                if on_batch is not None:
                    on_batch(index + 1)
                continue
            for xc, yc in self._fit_chunks(x, y, dense):
                self._accumulate_chunk(index, xc, yc)
            self._check_finite(index)
            if on_batch is not None:
                on_batch(index + 1)
        if reduce is not None:
            self._reduce_partial_state(reduce)
        return self._finish_fit()

    def _start_fit(self, override: bool, *, sharded_or_resumed: bool) -> None:
        """Refuse shards / resumes the structure cannot do, then reset (override) the sums."""
        if sharded_or_resumed and self.structure_spec.needs_loader:
            raise BadInputError(
                f"structure {self.hessian_structure.value!r} passes over the data several "
                "times; it cannot be fitted in shards or resumed (use diag, kron or full)"
            )
        if override:
            self.posterior.reset()
            self.loss = torch.zeros((), dtype=self._dtype, device=self._device)
            self.n_data = 0
        if override or not hasattr(self, "_fit_generator"):
            self._fit_generator = torch.Generator(device=self._device).manual_seed(self.seed)

    def _fit_chunks(self, x: Any, y: Tensor, dense: bool) -> list[tuple[Any, Tensor]]:
        """One batch as row chunks: dense Jacobians (B, C, P) are built a few rows at a time."""
        chunks = [(x, y)]
        # a diag fit that fell back to dense Jacobians (no layer factors) chunks them too
        if dense or self.__dict__.get("_no_layer_factors", False):
            rows = self.jacobian_chunk_rows()
            chunks = [(xc, y[i * rows : (i + 1) * rows]) for i, xc in enumerate(iter_rows(x, rows))]
        return chunks

    def _accumulate_chunk(self, index: int, xc: Any, yc: Tensor) -> None:
        """Record one chunk's loss and add its curvature, by the cheapest route that applies."""
        if self._backend_name == "asdl":
            from laplace_cli.fisher.asdl import asdl_accumulate

            f = asdl_accumulate(self, xc, yc).to(self._dtype)
            self._record_batch(index, f, yc)
            return
        if self._may_project():
            f = self.subset.output(xc).to(self._dtype)
            if f.shape[1] >= softmax_last_layer.MIN_OUTPUTS:
                self._record_batch(index, f, yc)
                self._accumulate_projected(xc, f, yc)
                return
        f, factors, J = self.jacobian_pieces(xc)
        f = f.to(self._dtype)
        self._record_batch(index, f, yc)
        if self.softmax_closed_form():
            # Many classes: Σ Λ and Σ φφᵀ from φ and p, no (B, C, C) root.
            self._accumulate_closed_form(factors, f, yc)
            return
        W = self._output_sqrt(f, yc)
        self.posterior.accumulate(W, factors, J)

    def partial_state(self) -> dict[str, Tensor]:
        """The raw state of a fit in progress: every tensor a sum over the data seen so far.

        `posterior.<name>`: the structure's curvature sums (`Posterior.raw_state`: diag h,
        full H, kron B, Σaaᵀ and N), without a posterior folded in as prior; `loss`: the summed
        negative log-likelihood; `n_data`. Two fits over disjoint data add up entry by entry.
        """
        out = {f"posterior.{k}": v for k, v in self.posterior.raw_state().items()}
        out["loss"] = self.loss.detach()
        out["n_data"] = torch.tensor(self.n_data, dtype=torch.int64, device=self._device)
        return out

    def load_partial_state(
        self, tensors: dict[str, Tensor], generator_state: Tensor | None = None
    ) -> None:
        """Restore `partial_state` (and the MC Fisher's random stream) to continue a fit."""
        prefix = "posterior."
        self.posterior.load_raw_state(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        self.loss = tensors["loss"].to(dtype=self._dtype, device=self._device).clone()
        self.n_data = int(tensors["n_data"])
        self._fit_generator = torch.Generator(device=self._device).manual_seed(self.seed)
        if generator_state is not None:
            self._fit_generator.set_state(generator_state)

    def _reduce_partial_state(self, reduce: Callable[[list[Tensor]], None]) -> None:
        """Sum the raw state across processes with `reduce` (in place), then load it back."""
        state = {k: v.clone() for k, v in self.partial_state().items()}
        names = sorted(state)  # the same order on every process
        tensors = [state[k] for k in names]
        reduce(tensors)
        self.load_partial_state(dict(zip(names, tensors)), self._fit_generator.get_state())

    def _record_batch(self, index: int, f: Tensor, y: Tensor) -> None:
        """Check one batch's outputs (B, C) and targets; add its loss and size."""
        if self.output_positions is not None:
            dense.record_batch(self, index, f, y)
            return
        if self.n_outputs is None:
            if self._sigma_noise.numel() not in (1, f.shape[1]):
                raise BadInputError(
                    f"sigma_noise has {self._sigma_noise.numel()} values but the model has "
                    f"{f.shape[1]} outputs"
                )
            self.n_outputs = f.shape[1]
        elif f.shape[1] != self.n_outputs:
            raise BadInputError(
                f"batch {index}: model gave {f.shape[1]} outputs, earlier {self.n_outputs}"
            )
        self._check_targets(f, y, index)
        if not torch.isfinite(f).all():
            raise NumericalError(f"batch {index}: the model's outputs contain NaN or Inf")
        if self.posterior.split_outputs is not None:
            # Per-output σ: the log-likelihood needs the loss of each output, (C,).
            loss = lik.summed_loss_per_output(self.likelihood, f, y)
        else:
            loss = lik.summed_loss(self.likelihood, f, y)
        self.loss = self.loss + loss.detach()
        self.n_data += f.shape[0]

    def softmax_closed_form(self) -> bool:
        """True where the last-layer softmax curvature and variances come from features and
        probabilities (`posterior.softmax_last_layer`): a last-layer diag / kron posterior of
        a classifier with at least `softmax_last_layer.MIN_OUTPUTS` classes (GGN from p; the
        MC and empirical Fisher from their output-space roots, K ≪ C columns)."""
        return (
            isinstance(self.subset, LastLayer)
            and self.likelihood == Likelihood.CLASSIFICATION
            and self.hessian_structure in softmax_last_layer.CLOSED_FORM_STRUCTURES
            and self.posterior.split_outputs is None
            and self._backend_name != "asdl"
            and (self.n_outputs or 0) >= softmax_last_layer.MIN_OUTPUTS
        )

    def _may_project(self) -> bool:
        """MC / empirical Fisher with diag or kron over all weights, many classes (or not known
        yet): the factors of the K sampled output gradients are back-propagated instead of the
        C outputs' (`subsets.projected_outputs`)."""
        return (
            isinstance(self.subset, AllWeights)
            and self.curvature in (Curvature.MC_FISHER, Curvature.EF)
            and self.hessian_structure in softmax_last_layer.CLOSED_FORM_STRUCTURES
            and self.posterior.split_outputs is None
            and self._backend_name != "asdl"
            and not self._dense_for_backprop()
            and (self.n_outputs is None or self.n_outputs >= softmax_last_layer.MIN_OUTPUTS)
        )

    def _accumulate_projected(self, x: Any, f: Tensor, y: Tensor) -> None:
        W = self._output_sqrt(f, y)  # (B, C, K)
        with projected_outputs(self.model, W):
            _, factors = self.subset.factors(x)  # K backward passes, G (B, K, T, d_out)
        k = W.shape[-1]
        eye = torch.eye(k, dtype=self._dtype, device=self._device).expand(W.shape[0], k, k)
        self.posterior.accumulate(eye, cast_factors(factors, self._dtype), None)

    def _accumulate_closed_form(self, factors: Any, f: Tensor, y: Tensor) -> None:
        phi = factors[0].a[:, 0]  # (B, d): the last layer's inputs
        if self.curvature == Curvature.GGN:
            softmax_last_layer.accumulate(self.posterior, phi, p=torch.softmax(f, dim=-1))
        else:
            softmax_last_layer.accumulate(self.posterior, phi, W=self._output_sqrt(f, y))

    def _finish_fit(self) -> Laplace:
        if self.n_data == 0:
            raise BadInputError("the training data is empty")
        self.posterior.finalize()
        self.mean = self.subset.mean().to(self._dtype)
        self.fitted = True
        return self

    def _fit_matrix_free(self, train_loader: Iterable[Any]) -> Laplace:
        """lowrank: one pass for loss and checks, then the eigensolver's block GGN products."""
        from laplace_cli.posterior.lowrank import ggn_matmat, ggn_matmat_dense

        if iter(train_loader) is train_loader:
            raise BadInputError(
                "structure 'lowrank' passes over the data several times; give a re-iterable "
                "loader (a DataLoader or a list of batches), not an iterator"
            )
        for index, batch in enumerate(train_loader):
            x, y = self.prepare_batch(batch)
            if batch_size(x) == 0:
                continue
            self._record_batch(index, self.subset.output(x).to(self._dtype), y)
            self._check_finite(index)
        if self.n_data == 0:
            raise BadInputError("the training data is empty")

        def batches():
            # Every product must see the same operator: the MC Fisher's targets are redrawn
            # from the same seed in every pass (so the loader must keep its order).
            self._fit_generator = torch.Generator(device=self._device).manual_seed(self.seed)
            for batch in train_loader:
                x, y = self.prepare_batch(batch)
                if batch_size(x) > 0:
                    yield x, y

        theta = self.subset.mean().to(self._dtype)

        def jacobian_chunks(x: Inputs, y: Tensor) -> Iterable[tuple[Tensor, Tensor, Tensor]]:
            rows = self.jacobian_chunk_rows()
            for i, xc in enumerate(iter_rows(x, rows)):
                f, J = self.subset.jacobians(xc)
                yield f.to(self._dtype), J, y[i * rows : (i + 1) * rows]

        reverse_only = False

        def matmat(V: Tensor) -> Tensor:
            nonlocal reverse_only
            if not reverse_only:
                try:
                    return ggn_matmat(self.subset.output_fn, theta, batches, self._output_sqrt, V)
                except torch.OutOfMemoryError:
                    raise
                except (RuntimeError, NotImplementedError):
                    # forward-mode AD or vmap cannot run this model (e.g. an attention kernel
                    # without a forward derivative); the whole product is redone in reverse
                    # mode, so every product still sees the same operator.
                    reverse_only = True
            return ggn_matmat_dense(jacobian_chunks, batches, self._output_sqrt, V)

        self.posterior.fit_matrix_free(
            matmat, torch.Generator(device=self._device).manual_seed(self.seed)
        )
        for key, t in self.posterior.state().items():
            if not torch.isfinite(t).all():
                raise NumericalError(f"the curvature ({key}) is not finite")
        return self._finish_fit()

    def _check_finite(self, batch_index: int) -> None:
        if not torch.isfinite(self.loss).all():
            raise NumericalError(f"batch {batch_index}: the training loss is not finite")
        state = self.posterior_state_partial()
        floats = [t for t in state.values() if t.is_floating_point() and t.numel()]
        # One max-|x| per tensor in a single call (NaN and ±Inf propagate); the tensors are
        # searched one by one only when something is not finite.
        if not floats or bool(
            torch.isfinite(torch.stack(torch._foreach_norm(floats, float("inf")))).all()
        ):
            return
        for key, t in state.items():
            if not torch.isfinite(t).all():
                where = self._nonfinite_params(key, t) if key in ("diag", "full") else key
                raise NumericalError(
                    f"batch {batch_index}: the curvature of {where} is not finite "
                    "(NaN or Inf: check the scale of the inputs and weights, or fit in float64)"
                )

    def _nonfinite_params(self, key: str, t: Tensor) -> str:
        """`"0.weight, 2.bias (diag)"`: the parameter tensors with NaN/Inf curvature entries.

        `t` is the diag curvature (…, P) or the full one (…, P, P); for full, the diagonal
        (where an overflow shows first, H_ii = Σ J_i²) is used when it is itself non-finite.
        """
        sizes = [g.numel for g in self.posterior.groups]
        if key == "full":
            diag = t.diagonal(dim1=-2, dim2=-1)
            t = diag if not torch.isfinite(diag).all() else t.transpose(-1, -2)
        if t.shape[-1] != sum(sizes):  # pragma: no cover - a subset with other bookkeeping
            return key
        bad = (~torch.isfinite(t)).reshape(-1, t.shape[-1]).any(0)  # (P,)
        names = [g.name for g, b in zip(self.posterior.groups, bad.split(sizes)) if bool(b.any())]
        return f"{', '.join(names)} ({key})"

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
