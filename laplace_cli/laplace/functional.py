"""Function-space Laplace (laplace-torch's `FunctionalLaplace`, `FunctionalLLLaplace`).

The linearised network seen as a Gaussian process with the neural tangent kernel J Jᵀ / δ,
conditioned on M context points (subset-of-data inference; Immer et al. 2021). The maths of the
kernel system is in `posterior/gp.py`; this module picks the context points, builds the kernel
from Jacobian factors (`subsets/jacobian_products.kernel`, chunked by the memory budget, never
an N×C×P Jacobian), and offers laplace-torch's API: `fit`, `__call__` (GLM predictive),
`functional_variance`, `log_marginal_likelihood` (differentiable in δ and σ),
`optimize_prior_precision` (marglik, or grid search on a validation loader, with the test
kernels computed once for the whole grid). See docs/migrating.md for the differences.

Context points: `context="random"` (laplace-torch's: `numpy.random.default_rng(seed).choice(N,
M, replace=False)`, so the same seed selects the same rows as laplace-torch) or "first" (the
first M rows in loader order). The fitted object keeps the context inputs: a saved GP
posterior carries training rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from laplace_cli.core import likelihoods as lik
from laplace_cli.core.batches import Inputs, batch_size, split_batch, to_device
from laplace_cli.core.enums import Curvature, Likelihood, LinkApprox, Structure, Subset
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.functional_kernels import (
    check_context_targets,
    chunk_bounds,
    context_indices,
    context_kernel,
    dense_kernel,
    gather_context,
    point_kernels,
    slice_rows,
)
from laplace_cli.posterior import gp
from laplace_cli.posterior.memory import default_budget
from laplace_cli.posterior.predictive import glm_link, sample_gaussian_outputs
from laplace_cli.subsets.base import AllWeights, DenseFactor, Factor, ParameterSubset
from laplace_cli.subsets.jacobian_products import matmul
from laplace_cli.subsets.last_layer import LastLayer

# context_indices: its former home (functional_kernels.py has the context-point machinery)
__all__ = ["BaseFunctionalLaplace", "FunctionalLaplace", "FunctionalLLLaplace", "context_indices"]


class BaseFunctionalLaplace:
    """laplace-torch's base of the function-space Laplace classes (FunctionalLaplace, ELLA, VaLLA)."""


class FunctionalLaplace(BaseFunctionalLaplace):
    """GP (function-space) Laplace over all weights; laplace-torch's constructor order.

    Extra keywords (this tool's own): `context` ("random" or "first"), `output_hessian`
    ("diag", laplace-torch's diagonal approximation of the softmax Hessian; "full", the exact
    GLM), `max_memory` (bytes for one kernel chunk of Jacobian factors), `diagonal_kernel`
    (laplace-torch's state name for `independent_outputs`). `n_subset=None` takes every point.
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
        if self.likelihood == Likelihood.BINARY:
            raise BadInputError(
                "function-space Laplace supports 'classification' and 'regression'; for a "
                "binary likelihood use a weight-space structure"
            )
        subset, _ = self._key
        for name, given, fixed in (
            ("subset_of_weights", subset_of_weights, subset),
            ("hessian_structure", hessian_structure, "gp"),
        ):
            if given is not None and str(getattr(given, "value", given)) != fixed:
                raise BadInputError(f"{type(self).__name__} has {name}={fixed!r}, got {given!r}")
        if enable_backprop:
            raise BadInputError(
                "enable_backprop=True (gradients through the GP predictive) is not offered by "
                "function-space Laplace here; use a weight-space Laplace(enable_backprop=True)"
            )
        if output_hessian not in ("diag", "full"):
            raise BadInputError(
                f"output_hessian: expected 'diag' or 'full', got {output_hessian!r}"
            )
        if independent_outputs and output_hessian == "full":
            raise BadInputError(
                "independent_outputs=True keeps one kernel per output, so only the diagonal of "
                "the output Hessian: use output_hessian='diag'"
            )
        return bool(independent_outputs)

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
        t = torch.as_tensor(value, dtype=self._dtype, device=self._device).reshape(-1)
        if t.numel() != 1:
            raise BadInputError("function-space Laplace takes one scalar sigma_noise")
        if self.likelihood != Likelihood.REGRESSION and float(t) != 1.0:
            raise BadInputError("sigma_noise is for regression; leave it at 1 for classification")
        self._sigma_noise = t.reshape(())

    @property
    def prior_precision(self) -> Tensor:
        return self._prior_precision

    @prior_precision.setter
    def prior_precision(self, value: float | Tensor) -> None:
        t = torch.as_tensor(value, dtype=self._dtype, device=self._device)
        if t.ndim > 1 or t.numel() != 1:
            raise BadInputError(
                "function-space Laplace takes an isotropic prior: one scalar prior_precision "
                "(the GP kernel is J Jᵀ / δ)"
            )
        self._prior_precision = t.reshape(1)

    @property
    def prior_mean(self) -> Tensor:
        return self._prior_mean

    @prior_mean.setter
    def prior_mean(self, value: float | Tensor) -> None:
        t = torch.as_tensor(value, dtype=self._dtype, device=self._device)
        if t.numel() != 1 and t.numel() != self.n_params:
            raise BadInputError(f"prior_mean: a scalar or {self.n_params} values, got {t.numel()}")
        self._prior_mean = t.reshape(()) if t.numel() == 1 else t.reshape(-1)

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
        loss = torch.zeros((), dtype=self._dtype, device=self._device)
        lams, mus = [], []
        chunks = self._context_chunks()
        cached = self._context_factors()
        for (lo, hi), (f_i, F_i) in zip(chunks, cached, strict=True):
            y_i = y_ctx[lo:hi]
            loss = loss + lik.summed_loss(self.likelihood, f_i, y_i)
            lams.append(lik.hessian(self.likelihood, f_i))
            j_theta = matmul(F_i, theta_rel)[..., 0]  # J(θ* − μ₀), (b, C)
            if self.likelihood == Likelihood.REGRESSION:
                mus.append(y_i - f_i + j_theta)  # y − m, m = f + J(μ₀ − θ*)
            else:
                mus.append(j_theta)
        self.loss = loss.detach()
        K = context_kernel(
            [F for _, F in cached],
            chunks,
            self.independent_outputs,
            n_out,
            self._dtype,
            self._device,
        )
        lam = torch.cat(lams).detach()
        S = gp.output_hessian_root(lam, diagonal=self.output_hessian == "diag")
        if self.independent_outputs:
            S = S if S.ndim == 2 else torch.diagonal(S, dim1=-2, dim2=-1)
        self.system = gp.KernelSystem(K, S, torch.cat(mus).detach(), self.independent_outputs)
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

    def functional_variance(self, Js_star: Tensor) -> Tensor:  # noqa: N803 - laplace-torch's
        """k_** − K_*M (K_MM + Λ⁻¹)⁻¹ K_M* for given test Jacobians (N*, C, P): (N*, C, C)."""
        return self._dense_moments(Js_star, joint=False)

    def _dense_moments(self, Js_star: Tensor, joint: bool) -> Tensor:  # noqa: N803
        """The posterior covariance at test points given by dense Jacobians (N*, C, P)."""
        self._check_fitted()
        J = Js_star.to(self._dtype)
        k_star, k_cross = self._point_kernels([DenseFactor(J)], joint)
        f = torch.zeros(J.shape[0], J.shape[1], dtype=J.dtype, device=J.device)
        return self._moments(f, k_star, k_cross, joint=joint)[1]

    def __call__(
        self,
        x: Inputs,
        pred_type: str = "gp",
        joint: bool = False,
        link_approx: str | LinkApprox = "probit",
        n_samples: int = 100,
        diagonal_output: bool = False,
        generator: torch.Generator | None = None,
        **model_kwargs: Any,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Classification: probabilities (B, C); regression: (f_mu, f_var) without noise."""
        if str(pred_type) not in ("gp", "glm"):
            raise BadInputError(
                f"function-space Laplace predicts with pred_type='gp' (the GLM), got {pred_type!r}"
            )
        regression = self.likelihood == Likelihood.REGRESSION
        f_mu, f_var = self.functional_variance_at(x, joint=joint and regression)
        if regression:
            if diagonal_output and not joint:
                f_var = torch.diagonal(f_var, dim1=-2, dim2=-1)
            return f_mu, f_var
        approx = LinkApprox(str(getattr(link_approx, "value", link_approx)))
        if diagonal_output:
            f_var = torch.diagonal(f_var, dim1=-2, dim2=-1)
        return glm_link(self.likelihood, approx, f_mu, f_var, n_samples, generator)

    def predictive(
        self, x: Inputs, pred_type: str = "gp", link_approx: str = "probit", n_samples: int = 100
    ) -> Tensor | tuple[Tensor, Tensor]:
        """laplace-torch's alias, its positional order (x, pred_type, link_approx, n_samples)."""
        return self(x, pred_type=pred_type, link_approx=link_approx, n_samples=n_samples)

    def predictive_moments(self, x: Inputs, *, joint: bool = False) -> tuple[Tensor, Tensor]:
        """Latent mean and covariance without observation noise (laplace-torch's name)."""
        return self.functional_variance_at(x, joint=joint)

    def functional_samples(
        self,
        x: Inputs,
        pred_type: str = "glm",
        n_samples: int = 100,
        diagonal_output: bool = False,
        generator: torch.Generator | None = None,
        joint: bool = False,
    ) -> Tensor:
        """Draws of f from the GP posterior: (n_samples, B, C)."""
        if n_samples <= 0:
            raise BadInputError("n_samples must be positive")
        mu, cov = self.functional_variance_at(x, joint=joint)
        if joint:
            b = batch_size(x)
            c = mu.numel() // b
            if diagonal_output:
                ids = torch.arange(mu.numel(), device=mu.device) % c
                cov = cov * (ids[:, None] == ids[None, :])
            draws = sample_gaussian_outputs(mu.unsqueeze(0), cov.unsqueeze(0), n_samples, generator)
            return draws[:, 0].reshape(n_samples, b, c)
        if diagonal_output:
            cov = torch.diagonal(cov, dim1=-2, dim2=-1)
        return sample_gaussian_outputs(mu, cov, n_samples, generator)

    def predictive_samples(
        self,
        x: Inputs,
        pred_type: str = "glm",
        n_samples: int = 100,
        diagonal_output: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`functional_samples`, through the softmax for classification."""
        draws = self.functional_samples(x, pred_type, n_samples, diagonal_output, generator)
        return draws.softmax(-1) if self.likelihood == Likelihood.CLASSIFICATION else draws

    def functional_covariance(self, Js_star: Tensor) -> Tensor:  # noqa: N803 - laplace-torch's
        """Joint posterior covariance (N*·C, N*·C) for given test Jacobians (N*, C, P)."""
        return self._dense_moments(Js_star, joint=True)

    # --- laplace-torch's internals (its unit tests call them) ------------------------------------
    @staticmethod
    def _check_prior_precision(prior_precision: float | Tensor) -> None:
        if torch.is_tensor(prior_precision) and prior_precision.numel() != 1:
            raise BadInputError("Only isotropic priors supported in FunctionalLaplace")

    def _jacobians(self, X: Inputs, enable_backprop: bool | None = None) -> tuple[Tensor, Tensor]:  # noqa: N803
        """Dense Jacobians (B, C, P) and outputs (B, C): laplace-torch's order."""
        f, J = self.subset.jacobians(to_device(X, self._device, self._dtype))
        return J.detach(), f.detach()

    @property
    def prior_precision_diag(self) -> Tensor:
        """The prior precision per parameter, (P,) (laplace-torch's name; priors are isotropic)."""
        return self.prior_precision.reshape(()).expand(self.n_params)

    def _prior_weights(self, jacobians: Tensor) -> Tensor:
        """J Σ₀ scaled by the SoD factor: laplace-torch's kernels are prior-scaled (M/N · J Σ₀ J'ᵀ)."""
        w = self.prior_factor_sod / self.prior_precision_diag.to(jacobians)
        return jacobians * w

    def _kernel_batch(self, jacobians: Tensor, batch: Inputs) -> Tensor:
        """(M/N) J₁ Σ₀ J₂ᵀ: (b₁·C, b₂·C), or (b₁, b₂, C) with independent outputs."""
        J2, _ = self._jacobians(batch)
        K = dense_kernel(self._prior_weights(jacobians), J2, self.independent_outputs)
        if self.independent_outputs:
            return K
        b1, c, b2, _ = K.shape
        return K.reshape(b1 * c, b2 * c)

    def _kernel_star(self, jacobians: Tensor, joint: bool = False) -> Tensor:
        """(M/N) J Σ₀ Jᵀ per point (B, C, C) / (B, C); joint: (B, B, C, C) / (B, B, C)."""
        J1 = self._prior_weights(jacobians)
        if joint:
            return self._pairs(dense_kernel(J1, jacobians, self.independent_outputs))
        if self.independent_outputs:
            return (J1 * jacobians).sum(-1)
        return torch.einsum("bcp,bep->bce", J1, jacobians)

    def _kernel_batch_star(self, jacobians: Tensor, batch: Inputs) -> Tensor:
        """(M/N) K(x_*, batch): (B, b, C, C), or (B, b, C) with independent outputs."""
        J2, _ = self._jacobians(batch)
        J1 = self._prior_weights(jacobians)
        return self._pairs(dense_kernel(J1, J2.to(jacobians.dtype), self.independent_outputs))

    def _pairs(self, K: Tensor) -> Tensor:
        """A kernel block (B₁, C, B₂, C) in laplace-torch's point-pair layout (B₁, B₂, C, C)."""
        return K if self.independent_outputs else K.permute(0, 2, 1, 3)

    def _init_K_MM(self) -> None:  # noqa: N802 - laplace-torch's name
        """A zeroed kernel buffer for `_store_K_batch`: (M·C, M·C), or C × (M, M) independent."""
        m, c = int(self.n_subset), int(self.n_outputs)  # type: ignore[arg-type]
        kw = {"dtype": self._dtype, "device": self._device}
        if self.independent_outputs:
            self._K_MM = [torch.zeros(m, m, **kw) for _ in range(c)]  # type: ignore[arg-type]
        else:
            self._K_MM = torch.zeros(m * c, m * c, **kw)  # type: ignore[arg-type]

    def _store_K_batch(self, K_batch: Tensor, i: int, j: int) -> None:  # noqa: N802, N803
        """Write the kernel block of context batches (i, j) and its transpose into `K_MM`.

        K_batch: (bᵢ·C, bⱼ·C), or (bᵢ, bⱼ, C) independent; batches are `batch_size` rows.
        """
        if self._K_MM is None or self.batch_size is None:
            raise BadInputError("call _init_K_MM and set batch_size before _store_K_batch")
        bs, K = int(self.batch_size), self._K_MM
        if self.independent_outputs:
            assert isinstance(K, list)
            r, c = (
                slice(i * bs, i * bs + K_batch.shape[0]),
                slice(j * bs, j * bs + K_batch.shape[1]),
            )
            for o, K_o in enumerate(K):
                K_o[r, c] = K_batch[:, :, o]
                K_o[c, r] = K_batch[:, :, o].T
            return
        assert isinstance(K, Tensor)
        n_out = int(self.n_outputs)  # type: ignore[arg-type]
        r0, c0 = i * bs * n_out, j * bs * n_out
        r, c = slice(r0, r0 + K_batch.shape[0]), slice(c0, c0 + K_batch.shape[1])
        K[r, c] = K_batch
        K[c, r] = K_batch.T

    @property
    def K_MM(self) -> Tensor | list[Tensor]:  # noqa: N802 - laplace-torch's name
        """The prior-scaled context kernel v·K: (M·C, M·C), or a list of C (M, M) independent.

        A buffer built with `_init_K_MM` / `_store_K_batch` (or assigned) takes precedence.
        """
        if self._K_MM is not None:
            return self._K_MM
        self._check_fitted()
        assert self.system is not None
        K = self.gp_kernel_prior_variance.detach() * self.system.K
        return list(K.unbind(0)) if self.independent_outputs else K

    @K_MM.setter
    def K_MM(self, value: Tensor | list[Tensor]) -> None:  # noqa: N802
        self._K_MM = value

    @property
    def L(self) -> Tensor | list[Tensor]:  # noqa: N802 - laplace-torch's name
        """The scaled output Hessians s·Λ on the context points (block diagonal, or C diagonals)."""
        self._check_fitted()
        assert self.system is not None
        out = gp.output_precision(self.system, self._H_factor.detach())
        return list(out.unbind(0)) if self.independent_outputs else out

    @property
    def Sigma_inv(self) -> Tensor | list[Tensor]:  # noqa: N802 - laplace-torch's name
        """(v·K_MM + (sΛ)⁻¹)⁻¹, computed as √s S A⁻¹ Sᵀ √s (no inverse of Λ needed)."""
        self._check_fitted()
        assert self.system is not None
        out = gp.sigma_inv(self.system, self._cholesky(), self._H_factor.detach())
        return list(out.unbind(0)) if self.independent_outputs else out

    def _get_SoD_data_loader(self, train_loader: Any) -> Any:  # noqa: N802 - laplace-torch's
        """A loader over the context rows of `train_loader.dataset` (laplace-torch's draw order)."""
        from torch.utils.data import DataLoader

        n = len(train_loader.dataset)
        m = n if self.n_subset is None else int(self.n_subset)
        if self.context == "random":
            order = np.random.default_rng(self.seed).choice(list(range(n)), m, replace=False)
        else:
            order = context_indices(n, m, self.context, self.seed)
        return DataLoader(
            train_loader.dataset,
            batch_size=train_loader.batch_size,
            sampler=[int(i) for i in order],
        )

    # --- state (laplace-torch's state_dict / load_state_dict) ------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything prediction and the marginal likelihood need, including the context inputs.

        Privacy: the state holds M training inputs (`context_inputs`); shipping it ships them.
        """
        self._check_fitted()
        assert self.system is not None
        return {
            "cls_name": type(self).__name__,
            "likelihood": self.likelihood.value,
            "mean": self.mean,
            "num_data": self.n_subset,
            "diagonal_kernel": self.independent_outputs,
            "output_hessian": self.output_hessian,
            "context": self.context,
            "seed": self.seed,
            "context_inputs": self.context_inputs,
            "K": self.system.K,
            "S": self.system.S,
            "mu": self.system.mu,
            "loss": self.loss,
            "prior_mean": self.prior_mean,
            "prior_precision": self.prior_precision,
            "sigma_noise": self.sigma_noise,
            "temperature": self.temperature,
            "n_data": self.n_data,
            "n_outputs": self.n_outputs,
            "param_names": list(self.subset.names),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()` on the same model (names, MAP and settings checked)."""
        if state.get("cls_name") != type(self).__name__:
            raise BadInputError(
                f"state of a {state.get('cls_name')}, loaded into a {type(self).__name__}: make "
                "sure subset_of_weights and hessian_structure are the same"
            )
        if state["likelihood"] != self.likelihood.value:
            raise BadInputError(
                f"state has likelihood {state['likelihood']!r}, this object {self.likelihood.value!r}"
            )
        if list(state["param_names"]) != list(self.subset.names):
            raise BadInputError("the state's parameters do not match the model's (another model?)")
        mean = torch.as_tensor(state["mean"], dtype=self._dtype, device=self._device)
        if mean.shape != self.mean.shape or not torch.allclose(
            mean, self.mean, rtol=1e-5, atol=1e-6
        ):
            raise BadInputError("the state's MAP weights differ from the model's parameters")

        def t(v: Any) -> Tensor:
            return torch.as_tensor(v, device=self._device).to(self._dtype)

        self.n_subset = state["num_data"]
        self.independent_outputs = bool(state["diagonal_kernel"])
        self.output_hessian = state["output_hessian"]
        self.context, self.seed = state["context"], int(state["seed"])
        x = state["context_inputs"]
        self.context_inputs = to_device(x, self._device, self._dtype)
        self.system = gp.KernelSystem(
            t(state["K"]), t(state["S"]), t(state["mu"]), self.independent_outputs
        )
        self.loss = t(state["loss"])
        self.n_data, self.n_outputs = int(state["n_data"]), int(state["n_outputs"])
        self.temperature = float(state["temperature"])
        self.prior_precision = t(state["prior_precision"])
        self.sigma_noise = t(state["sigma_noise"])
        self.prior_mean = t(state["prior_mean"])
        self._chunk = self._chunk_rows(self.n_outputs)
        self._chol = None
        self.prior_factor_sod, self._K_MM = self.system.n_context / self.n_data, None
        self._fitted = True

    # --- marginal likelihood --------------------------------------------------------------------
    @property
    def log_likelihood(self) -> Tensor:
        """log p(D|θ*) from the context points' summed loss (laplace-torch: N in the normaliser)."""
        self._check_fitted()
        assert self.n_data is not None and self.n_outputs is not None
        return lik.log_likelihood(
            self.likelihood,
            self.loss,
            self.n_data,
            self.n_outputs,
            self.sigma_noise,
            self.temperature,
        )

    def log_marginal_likelihood(
        self,
        prior_precision: Tensor | float | None = None,
        sigma_noise: Tensor | float | None = None,
    ) -> Tensor:
        """laplace-torch's GP log marginal likelihood; differentiable in δ and σ (autograd)."""
        self._check_fitted()
        assert self.system is not None and self.n_data is not None
        delta = self.prior_precision if prior_precision is None else prior_precision
        sigma = self.sigma_noise if sigma_noise is None else sigma_noise
        if sigma_noise is not None and self.likelihood != Likelihood.REGRESSION:
            raise BadInputError("sigma_noise can only be changed for regression")
        delta_t = torch.as_tensor(delta, dtype=self._dtype, device=self._device).reshape(-1)
        if delta_t.numel() != 1:
            raise BadInputError("function-space Laplace takes one scalar prior precision")
        sigma_t = torch.as_tensor(sigma, dtype=self._dtype, device=self._device).reshape(())
        # Keep the attributes in step, as laplace-torch's setters do (without breaking the graph).
        if prior_precision is not None:
            self._prior_precision = delta_t
        if sigma_noise is not None:
            self._sigma_noise = sigma_t
        v = gp.sod_prior_scale(self.system.n_context, self.n_data, delta_t)
        s = 1.0 / (sigma_t**2 * self.temperature)
        log_lik = lik.log_likelihood(
            self.likelihood, self.loss, self.n_data, self.n_outputs or 1, sigma_t, self.temperature
        )
        return gp.log_marginal_likelihood(
            self.system, log_lik, v, s, self.likelihood == Likelihood.REGRESSION, sigma_t**2
        )

    def optimize_prior_precision(
        self,
        pred_type: str = "gp",
        method: str = "marglik",
        n_steps: int = 100,
        lr: float = 1e-1,
        init_prior_prec: float | Tensor = 1.0,
        prior_structure: str = "scalar",
        val_loader: Iterable[Any] | None = None,
        loss: Callable[[Tensor | tuple[Tensor, Tensor], Tensor], float] | None = None,
        log_prior_prec_min: float = -4,
        log_prior_prec_max: float = 4,
        grid_size: int = 100,
        link_approx: str = "probit",
        n_samples: int = 100,
        verbose: bool = False,
        progress_bar: bool = False,
        log_prior_prec_base: float = 10.0,
    ) -> None:
        """Tune δ: "marglik" (Adam on log δ, laplace-torch's loop) or "gridsearch" on `val_loader`.

        The grid search computes each validation batch's kernels once and re-solves only the
        M·C system per grid value. Its default loss is the predictive NLL (Gaussian with σ² for
        regression; probit-softmax for classification), laplace-torch's is the MSE for
        regression, which does not depend on δ.
        """
        self._check_fitted()
        if str(prior_structure) != "scalar":
            raise BadInputError(
                "function-space Laplace has one scalar prior precision: prior_structure='scalar'"
            )
        if method == "marglik":
            init = torch.as_tensor(init_prior_prec, dtype=self._dtype, device=self._device)
            log_delta = init.reshape(1).log().clone().requires_grad_(True)
            opt = torch.optim.Adam([log_delta], lr=lr)
            for _ in range(int(n_steps)):
                opt.zero_grad()
                neg = -self.log_marginal_likelihood(prior_precision=log_delta.exp())
                neg.backward()
                opt.step()
            self.prior_precision = log_delta.detach().exp()
        elif method == "gridsearch":
            if val_loader is None:
                raise BadInputError(
                    "method='gridsearch' needs val_loader (a validation DataLoader)"
                )
            grid = torch.logspace(
                log_prior_prec_min, log_prior_prec_max, grid_size, base=log_prior_prec_base
            )
            self.prior_precision = self._gridsearch(grid, val_loader, loss, link_approx, n_samples)
        else:
            raise BadInputError(f"method: expected 'marglik' or 'gridsearch', got {method!r}")
        self._chol = None
        if verbose:
            print(f"Optimized prior precision is {self.prior_precision}.")

    def _gridsearch(
        self,
        grid: Tensor,
        val_loader: Iterable[Any],
        loss: Callable[[Any, Tensor], float] | None,
        link_approx: str,
        n_samples: int,
    ) -> Tensor:
        cached = []
        for batch in val_loader:
            x, y = self._prepare(batch)
            cached.append((self._test_kernels(x), y))
        best, best_delta = math.inf, grid[0]
        for delta in grid:
            self.prior_precision = delta
            total = 0.0
            try:
                for (f, k_star, k_cross), y in cached:
                    mu, var = self._moments(f, k_star, k_cross, joint=False)
                    total += self._grid_loss(mu, var, y, loss, link_approx, n_samples)
            except Exception as err:  # a non-PD system at an extreme δ: skip that value
                if "positive definite" not in str(err):
                    raise
                total = math.inf
            if total < best:
                best, best_delta = total, delta
        return torch.as_tensor(best_delta)

    def _grid_loss(
        self, mu: Tensor, var: Tensor, y: Tensor, loss: Any, link_approx: str, n_samples: int
    ) -> float:
        if self.likelihood == Likelihood.REGRESSION:
            if loss is not None:
                return float(loss((mu, var), y))
            total_var = torch.diagonal(var, dim1=-2, dim2=-1) + self.sigma_noise**2
            nll = 0.5 * (torch.log(2 * math.pi * total_var) + (y - mu) ** 2 / total_var)
            return float(nll.sum())
        probs = glm_link(self.likelihood, LinkApprox(link_approx), mu, var, n_samples)
        if loss is not None:
            return float(loss(probs, y))
        return float(-torch.log(probs.gather(1, y.reshape(-1, 1)).clamp_min(1e-300)).sum())


class FunctionalLLLaplace(FunctionalLaplace):
    """GP (function-space) Laplace over the last layer: the kernel of the head's Jacobian.

    For the last Linear layer J(x) = I_C ⊗ [φ(x), 1], so the kernel is (φ·φ' + 1) I_C, built
    from features without a Jacobian. laplace-torch's constructor order (with
    `feature_reduction` and `last_layer_name`).
    """

    _key: ClassVar[tuple[str, str]] = ("last_layer", "gp")

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
        feature_reduction: str | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        last_layer_name: str | None = None,
        backend: Any = None,
        backend_kwargs: dict[str, Any] | None = None,
        independent_outputs: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self._ll_args = (last_layer_name, feature_reduction)
        super().__init__(
            model,
            likelihood,
            n_subset,
            sigma_noise,
            prior_precision,
            prior_mean,
            temperature,
            enable_backprop,
            dict_key_x,
            dict_key_y,
            backend,
            backend_kwargs,
            independent_outputs,
            seed,
            **kwargs,
        )

    def _make_subset(
        self, last_layer_name: str | None, feature_reduction: str | None
    ) -> ParameterSubset:
        name, reduction = self._ll_args
        return LastLayer(self.model, name, reduction)
