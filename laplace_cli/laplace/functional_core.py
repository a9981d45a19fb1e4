"""The GP posterior of a function-space Laplace: construction, hyperparameters, fit, moments.

`FunctionalGP` holds what `FunctionalLaplace` (laplace/functional.py) computes with: the
context points and their kernel system (`posterior.gp.KernelSystem`), the prior precision δ,
σ and T, and the GLM predictive moments at test inputs (mean f(x; θ*), covariance of f(x)
given the M context points). `FunctionalLaplace` adds laplace-torch's API over it (predictive,
samples, its private kernel API, state dict, marginal likelihood, tuning). See
laplace/functional.py's docstring for the method and the context points.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from laplace_cli.core.batches import Inputs, batch_size, split_batch, to_device
from laplace_cli.core.enums import Curvature, Likelihood, Structure, Subset
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.functional_gp_state import FunctionalGPStateMixin
from laplace_cli.laplace.functional_kernels import (
    check_context_targets,
    chunk_bounds,
    context_indices,
    context_kernel,
    context_terms,
    gather_context,
    output_root,
    point_kernels,
    slice_rows,
)
from laplace_cli.laplace.functional_options import (
    check_gp_options,
    gp_prior_mean,
    gp_prior_precision,
    gp_sigma_noise,
)
from laplace_cli.posterior import gp
from laplace_cli.posterior.memory import default_budget
from laplace_cli.subsets.base import AllWeights, DenseFactor, Factor, ParameterSubset

__all__ = ["BaseFunctionalLaplace", "FunctionalGP"]


class BaseFunctionalLaplace:
    """laplace-torch's base of the function-space Laplace classes (FunctionalLaplace, ELLA, VaLLA)."""


class FunctionalGP(FunctionalGPStateMixin, BaseFunctionalLaplace):
    """The GP posterior under `FunctionalLaplace`; see the module docstring.

    Constructed with `FunctionalLaplace`'s arguments (laplace-torch's order); `_key` is the
    (subset, structure) pair of the concrete class.
    """

    _key: ClassVar[tuple[str, str]] = ("all", "gp")

    def __init__(
        self,
        model: nn.Module,
        likelihood: str | Likelihood,
        n_subset: int | None = None,
        sigma_noise: float | Tensor = 1.0,
        prior_precision: float | Tensor = 1.0,
        prior_mean: float | Tensor = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: Any = None,
        backend_kwargs: dict[str, Any] | None = None,
        independent_outputs: bool = False,
        seed: int = 0,
        *,
        diagonal_kernel: bool | None = None,
        context: str = "random",
        output_hessian: str = "diag",
        max_memory: int | None = None,
        subset_of_weights: str | None = None,
        hessian_structure: str | None = None,
        last_layer_name: str | None = None,
        feature_reduction: str | None = None,
    ) -> None:
        self.likelihood = Likelihood(str(getattr(likelihood, "value", likelihood)))
        independent_outputs = self._check_options(
            subset_of_weights,
            hessian_structure,
            enable_backprop,
            output_hessian,
            independent_outputs if diagonal_kernel is None else bool(diagonal_kernel),
        )
        self.model = model
        self.n_subset = n_subset
        self.independent_outputs = bool(independent_outputs)
        self.seed = int(seed)
        self.context = context
        self.output_hessian = output_hessian
        self.dict_key_x, self.dict_key_y = dict_key_x, dict_key_y
        self.enable_backprop = False
        self.temperature = float(temperature)
        param = next(iter(model.parameters()))
        self._dtype, self._device = param.dtype, param.device
        self.max_memory = int(max_memory) if max_memory is not None else None
        self.subset = self._make_subset(last_layer_name, feature_reduction)
        self.sigma_noise = sigma_noise  # type: ignore[assignment]
        self.prior_precision = prior_precision  # type: ignore[assignment]
        self.prior_mean = prior_mean  # type: ignore[assignment]
        self._fitted = False
        self.system: gp.KernelSystem | None = None
        self.context_inputs: Inputs | None = None
        self.n_data: int | None = None
        self.n_outputs: int | None = None
        self.loss = torch.zeros((), dtype=self._dtype, device=self._device)
        self._chol: tuple[tuple[float, float, float], Tensor] | None = None
        # laplace-torch's kernel-assembly state, kept for its private API (`_init_K_MM`,
        # `_store_K_batch`, `_kernel_*`); the fitted system never reads it.
        self.batch_size: int | None = None
        self.prior_factor_sod = 1.0
        self._K_MM: Tensor | list[Tensor] | None = None
        self._context_factor_cache: list[list[Factor]] | None = None

    # --- construction ------------------------------------------------------------------------
    def _check_options(
        self,
        subset_of_weights: str | None,
        hessian_structure: str | None,
        enable_backprop: bool,
        output_hessian: str,
        independent_outputs: bool,
    ) -> bool:
        """Refuse what function-space Laplace does not offer; returns `independent_outputs`."""
        return check_gp_options(
            type(self).__name__,
            self.likelihood,
            self._key[0],
            subset_of_weights,
            hessian_structure,
            enable_backprop,
            output_hessian,
            independent_outputs,
        )

    def _make_subset(
        self, last_layer_name: str | None, feature_reduction: str | None
    ) -> ParameterSubset:
        if last_layer_name is not None or feature_reduction is not None:
            raise BadInputError(
                "last_layer_name / feature_reduction apply to FunctionalLLLaplace "
                "(subset_of_weights='last_layer')"
            )
        return AllWeights(self.model)

    @property
    def mean(self) -> Tensor:
        """θ*, the MAP of the fitted subset, (P,)."""
        return self.subset.mean().detach()

    @property
    def n_params(self) -> int:
        return self.subset.n_params

    # --- what the CLI pipeline reads of any posterior (as `Laplace` offers it) ------------------
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def hessian_structure(self) -> Structure:
        return Structure.GP

    @property
    def subset_of_weights(self) -> Subset:
        return Subset(self._key[0])

    @property
    def curvature(self) -> Curvature:
        """The output Hessians of the kernel system are the GGN's (exact for the likelihood)."""
        return Curvature.GGN

    @property
    def tuning(self) -> dict[str, Any]:
        """The record of the last prior tuning (saved in the posterior file's metadata)."""
        return self.__dict__.setdefault("_tuning", {})

    @tuning.setter
    def tuning(self, value: dict[str, Any]) -> None:
        self.__dict__["_tuning"] = dict(value or {})

    @property
    def sigma_noise(self) -> Tensor:
        return self._sigma_noise

    @sigma_noise.setter
    def sigma_noise(self, value: float | Tensor) -> None:
        self._sigma_noise = gp_sigma_noise(value, self.likelihood, self._dtype, self._device)

    @property
    def prior_precision(self) -> Tensor:
        return self._prior_precision

    @prior_precision.setter
    def prior_precision(self, value: float | Tensor) -> None:
        self._prior_precision = gp_prior_precision(value, self._dtype, self._device)

    @property
    def prior_mean(self) -> Tensor:
        return self._prior_mean

    @prior_mean.setter
    def prior_mean(self, value: float | Tensor) -> None:
        self._prior_mean = gp_prior_mean(value, self.n_params, self._dtype, self._device)

    # --- scales ---------------------------------------------------------------------------------
    @property
    def _H_factor(self) -> Tensor:  # noqa: N802 - laplace-torch's name
        """s = 1/(σ² T) for regression, 1/T otherwise."""
        return 1.0 / (self.sigma_noise**2 * self.temperature)

    @property
    def gp_kernel_prior_variance(self) -> Tensor:
        """v = (M/N)/δ (laplace-torch's name)."""
        self._check_fitted()
        assert self.system is not None and self.n_data is not None
        return gp.sod_prior_scale(self.system.n_context, self.n_data, self.prior_precision)

    # --- fitting --------------------------------------------------------------------------------
    def _prepare(self, batch: Any) -> tuple[Inputs, Tensor]:
        x, y = split_batch(batch, self.dict_key_x, self.dict_key_y)
        x = to_device(x, self._device, self._dtype)
        y = y.to(self._device)
        if self.likelihood == Likelihood.CLASSIFICATION:
            return x, y.long().reshape(-1)
        y = y.to(self._dtype)
        return x, (y.unsqueeze(-1) if y.ndim == 1 else y)

    def _chunk_rows(self, n_outputs: int) -> int:
        """Rows per kernel chunk: two chunks' dense Jacobians within the memory budget."""
        budget = self.max_memory if self.max_memory is not None else default_budget(self._device)
        itemsize = torch.finfo(self._dtype).bits // 8
        per_row = max(1, n_outputs * self.n_params * itemsize * 2)
        return max(1, min(4096, budget // per_row))

    def fit(self, train_loader: Iterable[Any], progress_bar: bool = False) -> None:
        """Pick the context points, build the kernel K_MM, the output Hessians and the scatter mean."""
        self.model.eval()
        dataset = getattr(train_loader, "dataset", None)
        try:
            n_data = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            n_data = sum(batch_size(self._prepare(b)[0]) for b in train_loader)
        n_context = n_data if self.n_subset is None else int(self.n_subset)
        wanted = torch.as_tensor(context_indices(n_data, n_context, self.context, self.seed))
        x_ctx, y_ctx = gather_context(train_loader, wanted, n_data, self._prepare)
        with torch.no_grad():
            n_out = self.subset.output(slice_rows(x_ctx, 0, 1)).shape[-1]
        check_context_targets(self.likelihood, y_ctx, n_out)
        self.n_data, self.n_outputs, self.context_inputs = n_data, n_out, x_ctx
        self.batch_size = getattr(train_loader, "batch_size", None)
        self.prior_factor_sod, self._K_MM = n_context / n_data, None
        self._context_factor_cache = None
        self._chunk = self._chunk_rows(n_out)
        theta_rel = (self.mean - self.prior_mean).unsqueeze(-1)
        chunks = self._context_chunks()
        cached = self._context_factors()
        self.loss, lam, mu = context_terms(
            self.likelihood, y_ctx, chunks, cached, theta_rel, self._dtype, self._device
        )
        K = context_kernel(
            [F for _, F in cached],
            chunks,
            self.independent_outputs,
            n_out,
            self._dtype,
            self._device,
        )
        S = output_root(lam, self.output_hessian == "diag", self.independent_outputs)
        self.system = gp.KernelSystem(K, S, mu, self.independent_outputs)
        self._chol = None
        self._fitted = True

    def _context_chunks(self) -> list[tuple[int, int]]:
        assert self.context_inputs is not None
        return chunk_bounds(batch_size(self.context_inputs), self._chunk)

    def _context_factors(self) -> list[tuple[Tensor, list[Factor]]]:
        """Outputs and Jacobian factors of each context chunk (recomputed per call)."""
        assert self.context_inputs is not None
        out = []
        for lo, hi in self._context_chunks():
            f, F = self.subset.factors(slice_rows(self.context_inputs, lo, hi))
            out.append((f.detach(), F))
        return out

    # --- posterior ------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not self._fitted or self.system is None:
            raise RuntimeError("call fit(train_loader) before using the function-space posterior")

    def _cholesky(self) -> Tensor:
        """Cholesky of A at the current (δ, σ, T), cached until one of them changes."""
        assert self.system is not None
        key = (float(self.prior_precision), float(self.sigma_noise), self.temperature)
        if self._chol is None or self._chol[0] != key:
            v = self.gp_kernel_prior_variance.detach()
            self._chol = (key, gp.cholesky_A(self.system, v, self._H_factor.detach()))
        return self._chol[1]

    def _test_kernels(self, x: Inputs, joint: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """f(x), prior k(x, x) and K(x, context), all without the prior scale v."""
        f, F = self.subset.factors(x)
        k_star, k_cross = self._point_kernels(F, joint)
        return f.detach(), k_star.detach(), k_cross.detach()

    def _point_kernels(self, F: list[Factor], joint: bool) -> tuple[Tensor, Tensor]:
        contexts = (F_c for _, F_c in self._context_factors())
        return point_kernels(F, contexts, self.independent_outputs, joint)

    def _moments(
        self, f: Tensor, k_star: Tensor, k_cross: Tensor, joint: bool
    ) -> tuple[Tensor, Tensor]:
        assert self.system is not None
        v = self.gp_kernel_prior_variance.detach()
        cov = gp.posterior_covariance(
            self.system, self._cholesky(), v, self._H_factor.detach(), k_star, k_cross, joint
        )
        if self.independent_outputs:
            if joint:  # (B, B, C) → (B·C, B·C), zero across outputs
                cov = torch.diag_embed(cov).permute(0, 2, 1, 3).reshape(f.numel(), f.numel())
            else:
                cov = torch.diag_embed(cov)
        return (f.reshape(-1) if joint else f), cov

    def functional_variance_at(self, x: Inputs, joint: bool = False) -> tuple[Tensor, Tensor]:
        """GLM predictive mean f(x) (B, C) and covariance (B, C, C); joint: (B·C,), (B·C, B·C)."""
        self._check_fitted()
        x = to_device(x, self._device, self._dtype)
        return self._moments(*self._test_kernels(x, joint), joint)

    def _dense_moments(self, Js_star: Tensor, joint: bool) -> Tensor:  # noqa: N803
        """The posterior covariance at test points given by dense Jacobians (N*, C, P)."""
        self._check_fitted()
        J = Js_star.to(self._dtype)
        k_star, k_cross = self._point_kernels([DenseFactor(J)], joint)
        f = torch.zeros(J.shape[0], J.shape[1], dtype=J.dtype, device=J.device)
        return self._moments(f, k_star, k_cross, joint=joint)[1]
