"""Full posterior: Λ = s·H + diag(δ) with H dense (P, P).

H is eigendecomposed once (H = V diag(d) Vᵀ). With a scalar prior every quantity is then a
cheap function of the eigenvalues, log det Λ = Σ log(s·d + δ), which makes tuning loops
O(P) per step after one O(P³) decomposition. Other priors use a Cholesky factor of Λ, with
bounded jitter and a NumericalError when Λ is still not positive definite.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.enums import Structure
from laplace_cli.errors import BadInputError, NumericalError
from laplace_cli.posterior.base import Posterior, expand_prior


def robust_cholesky(
    matrix: Tensor, what: str = "posterior precision", max_tries: int = 6
) -> Tensor:
    """Cholesky factor with bounded jitter (1e-10·mean diag, ×10 per try); NumericalError if all fail."""
    L, info = torch.linalg.cholesky_ex(matrix)
    if int(info.max()) == 0:
        return L
    scale = matrix.diagonal(dim1=-2, dim2=-1).abs().mean().clamp_min(1e-30)
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    tried = []
    for k in range(max_tries):
        jitter = float(scale) * 10.0 ** (k - 10)
        tried.append(f"{jitter:.1e}")
        L, info = torch.linalg.cholesky_ex(matrix + jitter * eye)
        if int(info.max()) == 0:
            return L
    raise NumericalError(
        f"{what} is not positive definite even with jitter {', '.join(tried)}; "
        "raise the prior precision or check the curvature for non-finite values"
    )


class FullPosterior(Posterior):
    structure = Structure.FULL
    needs_dense_jacobian = True

    def __init__(self, groups, dtype, device) -> None:
        super().__init__(groups, dtype, device)
        self.reset()

    def reset(self) -> None:
        self.H = torch.zeros(self.n_params, self.n_params, dtype=self.dtype, device=self.device)
        self._eig: tuple[Tensor, Tensor] | None = None

    def accumulate(self, W, factors, J) -> None:
        m = torch.einsum("bck,bcp->bkp", W, J).reshape(-1, self.n_params)
        self.H += m.T @ m
        self._eig = None

    def eig(self) -> tuple[Tensor, Tensor]:
        """Eigenvalues (clamped at 0: H is PSD up to rounding) and eigenvectors of H."""
        if self._eig is None:
            d, V = torch.linalg.eigh(0.5 * (self.H + self.H.T))
            self._eig = (d.clamp_min(0), V)
        return self._eig

    def _is_scalar(self, prior: Tensor) -> bool:
        return prior.numel() == 1

    def precision(self, prior: Tensor, scale: Tensor) -> Tensor:
        return scale * self.H + torch.diag(expand_prior(prior, self.groups))

    def cholesky(self, prior: Tensor, scale: Tensor) -> Tensor:
        return robust_cholesky(self.precision(prior, scale))

    def log_det(self, prior, scale):
        if self._is_scalar(prior):
            d, _ = self.eig()
            return torch.log(scale * d + prior.reshape(())).sum()
        L = self.cholesky(prior, scale)
        return 2 * torch.log(L.diagonal()).sum()

    def dense_precision(self, prior, scale):
        return self.precision(prior, scale)

    def diag_precision(self, prior, scale):
        return scale * self.H.diagonal() + expand_prior(prior, self.groups)

    def dense_covariance(self, prior, scale):
        if self._is_scalar(prior):
            d, V = self.eig()
            return (V / (scale * d + prior.reshape(()))) @ V.T
        return torch.cholesky_inverse(self.cholesky(prior, scale))

    def functional_variance(self, prior, scale, factors=None, J=None):
        if J is None:
            raise BadInputError(
                "the full structure needs dense Jacobians for the functional variance"
            )
        if self._is_scalar(prior):
            d, V = self.eig()
            U = J @ V  # (B, C, P)
            return torch.einsum("bcp,bdp->bcd", U / (scale * d + prior.reshape(())), U)
        L = self.cholesky(prior, scale)
        batch, n_out, n_params = J.shape
        # V = L⁻¹ Jᵀ, then J Λ⁻¹ Jᵀ = Vᵀ V.
        Vm = torch.linalg.solve_triangular(L, J.reshape(-1, n_params).T, upper=False)
        Vm = Vm.T.reshape(batch, n_out, n_params)
        return torch.einsum("bcp,bdp->bcd", Vm, Vm)

    def sample(self, n, prior, scale, generator):
        eps = torch.randn(
            n, self.n_params, dtype=self.dtype, device=self.device, generator=generator
        )
        if self._is_scalar(prior):
            d, V = self.eig()
            return (eps / (scale * d + prior.reshape(())).sqrt()) @ V.T
        L = self.cholesky(prior, scale)
        # z = L⁻ᵀ ε has covariance (L Lᵀ)⁻¹ = Λ⁻¹.
        return torch.linalg.solve_triangular(L.T, eps.T, upper=True).T

    def state(self):
        return {"full.curvature": self.H}

    def load_state(self, tensors):
        H = tensors["full.curvature"]
        if H.shape != (self.n_params, self.n_params):
            raise BadInputError(
                f"full.curvature: expected shape ({self.n_params}, {self.n_params}), got {tuple(H.shape)}"
            )
        self.H = H.to(self.dtype).to(self.device)
        self._eig = None
