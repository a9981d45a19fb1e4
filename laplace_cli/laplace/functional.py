"""Function-space Laplace (laplace-torch's `FunctionalLaplace`; `FunctionalLLLaplace` is in
laplace/functional_ll.py).

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

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from laplace_cli.core import likelihoods as lik
from laplace_cli.core.batches import Inputs, batch_size, to_device
from laplace_cli.core.enums import Likelihood, LinkApprox
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.functional_core import BaseFunctionalLaplace, FunctionalGP
from laplace_cli.laplace.functional_kernels import (
    context_indices,
    dense_kernel,
)
from laplace_cli.laplace.functional_prediction import gp_function_samples
from laplace_cli.laplace.functional_torch_api import (
    kernel_block,
    kernel_pairs,
    kernel_star,
    prior_weights,
    sod_data_loader,
    store_kernel_block,
    zero_kernel_buffer,
)
from laplace_cli.laplace.functional_tuning import adam_log_prior, best_on_grid, grid_loss
from laplace_cli.posterior import gp
from laplace_cli.posterior.predictive import glm_link

# context_indices: its former home (functional_kernels.py has the context-point machinery)
__all__ = ["BaseFunctionalLaplace", "FunctionalLaplace", "context_indices"]


class FunctionalLaplace(FunctionalGP):
    """GP (function-space) Laplace over all weights; laplace-torch's constructor order.

    Extra keywords (this tool's own): `context` ("random" or "first"), `output_hessian`
    ("diag", laplace-torch's diagonal approximation of the softmax Hessian; "full", the exact
    GLM), `max_memory` (bytes for one kernel chunk of Jacobian factors), `diagonal_kernel`
    (laplace-torch's state name for `independent_outputs`). `n_subset=None` takes every point.
    """

    _key: ClassVar[tuple[str, str]] = ("all", "gp")

    def functional_variance(self, Js_star: Tensor) -> Tensor:  # noqa: N803 - laplace-torch's
        """k_** − K_*M (K_MM + Λ⁻¹)⁻¹ K_M* for given test Jacobians (N*, C, P): (N*, C, C)."""
        return self._dense_moments(Js_star, joint=False)

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
        b = batch_size(x) if joint else 0
        return gp_function_samples(mu, cov, b, n_samples, joint, diagonal_output, generator)

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
        return prior_weights(jacobians, self.prior_factor_sod, self.prior_precision_diag)

    def _kernel_batch(self, jacobians: Tensor, batch: Inputs) -> Tensor:
        """(M/N) J₁ Σ₀ J₂ᵀ: (b₁·C, b₂·C), or (b₁, b₂, C) with independent outputs."""
        J2, _ = self._jacobians(batch)
        return kernel_block(self._prior_weights(jacobians), J2, self.independent_outputs)

    def _kernel_star(self, jacobians: Tensor, joint: bool = False) -> Tensor:
        """(M/N) J Σ₀ Jᵀ per point (B, C, C) / (B, C); joint: (B, B, C, C) / (B, B, C)."""
        J1 = self._prior_weights(jacobians)
        return kernel_star(J1, jacobians, self.independent_outputs, joint)

    def _kernel_batch_star(self, jacobians: Tensor, batch: Inputs) -> Tensor:
        """(M/N) K(x_*, batch): (B, b, C, C), or (B, b, C) with independent outputs."""
        J2, _ = self._jacobians(batch)
        J1 = self._prior_weights(jacobians)
        K = dense_kernel(J1, J2.to(jacobians.dtype), self.independent_outputs)
        return kernel_pairs(K, self.independent_outputs)

    def _pairs(self, K: Tensor) -> Tensor:
        """A kernel block (B₁, C, B₂, C) in laplace-torch's point-pair layout (B₁, B₂, C, C)."""
        return kernel_pairs(K, self.independent_outputs)

    def _init_K_MM(self) -> None:  # noqa: N802 - laplace-torch's name
        """A zeroed kernel buffer for `_store_K_batch`: (M·C, M·C), or C × (M, M) independent."""
        m, c = int(self.n_subset), int(self.n_outputs)  # type: ignore[arg-type]
        self._K_MM = zero_kernel_buffer(m, c, self.independent_outputs, self._dtype, self._device)

    def _store_K_batch(self, K_batch: Tensor, i: int, j: int) -> None:  # noqa: N802, N803
        """Write the kernel block of context batches (i, j) and its transpose into `K_MM`."""
        store_kernel_block(
            self._K_MM, K_batch, i, j, self.batch_size, self.n_outputs, self.independent_outputs
        )

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
        return sod_data_loader(train_loader, self.n_subset, self.context, self.seed)

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
            self.prior_precision = adam_log_prior(
                lambda delta: -self.log_marginal_likelihood(prior_precision=delta),
                init,
                n_steps,
                lr,
            )
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

        def set_delta(delta: Tensor) -> None:
            self.prior_precision = delta

        def score() -> float:
            total = 0.0
            for (f, k_star, k_cross), y in cached:
                mu, var = self._moments(f, k_star, k_cross, joint=False)
                total += grid_loss(
                    self.likelihood, self.sigma_noise, mu, var, y, loss, link_approx, n_samples
                )
            return total

        return best_on_grid(grid, set_delta, score)
