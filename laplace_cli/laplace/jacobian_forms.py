"""laplace-torch's Jacobian forms of the functional variance, on `Laplace`
(`prediction.PredictiveMixin` inherits them): `functional_variance(Js)`,
`functional_covariance(Js)` and the last-layer `functional_variance_fast(x)`."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from laplace_cli.laplace.prediction_options import checked_jacobians, is_jacobians

__all__ = ["JacobianFormsMixin"]


class JacobianFormsMixin:
    """Functional variances from Jacobians (B, C, P), as laplace-torch takes them."""

    def functional_variance(self, x_or_Js: Any) -> Tensor | tuple[Tensor, Tensor]:  # noqa: N803
        """laplace-torch's `functional_variance(Js)`: Jacobians (B, C, P) ↦ J Σ Jᵀ (B, C, C).

        Dispatch on the argument (docs/migrating.md): a tensor of shape (B, n_outputs,
        n_params) is Jacobians, as in laplace-torch; anything else (a batch of inputs, a dict
        batch) is inputs and returns this project's `(f_mu, f_var)` as
        `functional_variance_at(x)` does. Call `functional_variance_at` for inputs that could
        look like Jacobians."""
        if is_jacobians(x_or_Js, self.n_params, self.n_outputs):
            self.require_fit()
            return self.posterior.functional_variance(
                self.prior_precision,
                self.curvature_scale(),
                J=checked_jacobians(x_or_Js, self.n_params, self._dtype, self._device),
            )
        return self.functional_variance_at(x_or_Js)

    def functional_covariance(self, Js: Tensor) -> Tensor:
        """laplace-torch's form: Jacobians (B, C, P) ↦ the joint covariance J Σ Jᵀ, (B·C, B·C).

        (`functional_variance_at(x)` takes inputs and returns (f_mu, (B, C, C)); see
        `joint_functional_covariance` for the joint covariance of inputs.)"""
        self.require_fit()
        Js = checked_jacobians(Js, self.n_params, self._dtype, self._device)
        J = Js.reshape(1, -1, Js.shape[-1])
        return self.posterior.functional_variance(
            self.prior_precision, self.curvature_scale(), J=J
        )[0]

    def functional_variance_fast(self, x: Any) -> tuple[Tensor, Tensor]:
        """(f_mu, the diagonal of the functional variance) (B, C), as laplace-torch's
        last-layer method; computed without forming Σ, and without the (B, C, C) covariance
        where the structure has a cheaper diagonal (`functional_variance_diag`)."""
        return self.functional_variance_diag(x)
