"""Full posterior: Λ = s·H + diag(δ) with H dense (P, P).

H is eigendecomposed once (H = V diag(d) Vᵀ). With a scalar prior every quantity is then a
cheap function of the eigenvalues, log det Λ = Σ log(s·d + δ), which makes tuning loops
O(P) per step after one O(P³) decomposition. Other priors use a Cholesky factor of Λ, with
bounded jitter and a NumericalError when Λ is still not positive definite.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.core.enums import Structure
from laplace_cli.core.errors import BadInputError, NumericalError
from laplace_cli.posterior.base import Posterior, expand_prior, scale_curvature
from laplace_cli.subsets import jacobian_products
from laplace_cli.subsets.base import dense_from_factors


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


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in tensors
    )


class _LogDetSPD(torch.autograd.Function):
    """log det M of a symmetric positive definite M, by one Cholesky factorisation.

    The backward pass is d log det M / dM = M⁻¹ from the same factor (`cholesky_inverse`,
    about 2·P³/3 flops). Autograd through `cholesky_ex` would instead differentiate the
    factorisation itself, several times the cost (≈ 10× one Cholesky at P = 2,000, measured),
    and layer-wise tuning of a full posterior evaluates this once per optimiser evaluation.
    """

    @staticmethod
    def forward(ctx, matrix: Tensor) -> Tensor:  # type: ignore[override]
        L = robust_cholesky(matrix)
        ctx.save_for_backward(L)
        return 2 * torch.log(L.diagonal()).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (L,) = ctx.saved_tensors
        return grad * torch.cholesky_inverse(L)


def logdet_spd(matrix: Tensor) -> Tensor:
    """log det of a symmetric positive definite matrix (bounded jitter as `robust_cholesky`);
    differentiable in `matrix` at the cost of one `cholesky_inverse`."""
    if matrix.requires_grad:
        return _LogDetSPD.apply(matrix)
    return 2 * torch.log(robust_cholesky(matrix).diagonal()).sum()


class FullPosterior(Posterior):
    """Λ = s·H + C + diag(δ), H dense (P, P).

    H is kept per output, (C_out, P, P), after `split_by_output` (regression with one noise
    level per output: Λ = Σ_k s_k H_k + ...); C (P, P) is the fixed curvature part s'·H' of a
    posterior used as prior (zero otherwise). The eigendecomposition fast path applies when
    Λ = s·H + δ·I with one H and a scalar δ.
    """

    structure = Structure.FULL
    needs_dense_jacobian = True
    accepts_factors = True  # J Jᵀ and J V from the factors: about C× fewer flops
    keeps_prior_copy = False

    def __init__(self, groups, dtype, device) -> None:
        super().__init__(groups, dtype, device)
        self.prior_curvature: Tensor | None = None
        self.reset()

    def reset(self) -> None:
        p = self.n_params
        shape = (p, p) if self.split_outputs is None else (self.split_outputs, p, p)
        self.H = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._eig: tuple[Tensor, Tensor] | None = None

    def split_by_output(self, n_outputs: int) -> None:
        self.split_outputs = int(n_outputs)
        self.reset()

    def accumulate(self, W, factors, J) -> None:
        self._eig = None
        if self.split_outputs is not None:
            # Column k of W is the square root of output k's Hessian (W = I for regression).
            for k in range(W.shape[-1]):
                if J is None:
                    self.H[k] += jacobian_products.gram(W[:, :, k : k + 1], factors)
                else:
                    m = torch.einsum("bc,bcp->bp", W[:, :, k], J)
                    self.H[k] += m.T @ m
            return
        if J is None:
            self.H += jacobian_products.gram(W, factors)
            return
        m = torch.einsum("bck,bcp->bkp", W, J).reshape(-1, self.n_params)
        self.H += m.T @ m

    def add_curvature(self, H: Tensor) -> None:
        """Add a dense curvature (P, P) computed elsewhere (the exact Hessian, fisher/hessian.py)."""
        self._eig = None
        self.H += H.to(dtype=self.dtype, device=self.device)

    def curvature_dense(self) -> Tensor:
        return self.H if self.split_outputs is None else self.H.sum(0)

    def scaled_curvature(self, scale: Tensor) -> Tensor:
        """s·H (+ C), the data part of the precision without δ, (P, P)."""
        out = scale_curvature(self.H, scale, self.split_outputs)
        if self.prior_curvature is not None:
            out = out + self.prior_curvature
        return out

    def _fold_prior(self, other, scale_other, scale_now) -> None:
        self.prior_curvature = other.scaled_curvature(scale_other).detach().clone()

    def prior_log_det(self, prior: Tensor) -> Tensor:
        # P₀ = C + diag(δ) is known from C alone (also after loading from a file).
        if self.prior_curvature is None:
            return super().prior_log_det(prior)
        P0 = self.prior_curvature + torch.diag(expand_prior(prior, self.groups))
        return 2 * torch.log(robust_cholesky(P0, "prior precision").diagonal()).sum()

    def prior_quad_form(self, v: Tensor, prior: Tensor) -> Tensor:
        if self.prior_curvature is None:
            return super().prior_quad_form(v, prior)
        return v @ (self.prior_curvature @ v) + (expand_prior(prior, self.groups) * v * v).sum()

    def eig(self) -> tuple[Tensor, Tensor]:
        """Eigenvalues (clamped at 0: H is PSD up to rounding) and eigenvectors of H."""
        if self._eig is None:
            d, V = torch.linalg.eigh(0.5 * (self.H + self.H.T))
            # an indefinite curvature (exact Hessian) keeps its negative eigenvalues
            self._eig = (d.clamp_min(0) if self.psd_curvature else d, V)
        return self._eig

    def is_scalar_prior(self, prior: Tensor) -> bool:
        """Whether the eigendecomposition fast path applies (Λ = s·H + δ·I)."""
        return prior.numel() == 1 and self.split_outputs is None and self.prior_curvature is None

    def _eig_precision(self, prior: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """(s·d + δ, V): Λ's eigenvalues and eigenvectors on the scalar-prior path. An
        indefinite curvature (exact Hessian) can make some ≤ 0: no Gaussian posterior then."""
        d, V = self.eig()
        lam = scale * d + prior.reshape(())
        if not self.psd_curvature and bool((lam <= 0).any()):
            raise NumericalError(
                f"the posterior precision s·H + δ has {int((lam <= 0).sum())} eigenvalues ≤ 0 "
                "(the exact Hessian is indefinite); raise the prior precision or use curvature "
                "'ggn'"
            )
        return lam, V

    def precision(self, prior: Tensor, scale: Tensor) -> Tensor:
        return self.scaled_curvature(scale) + torch.diag(expand_prior(prior, self.groups))

    def cholesky(self, prior: Tensor, scale: Tensor) -> Tensor:
        return self._name_hessian(robust_cholesky, self.precision(prior, scale))

    def _name_hessian(self, factorise, matrix: Tensor) -> Tensor:
        """`factorise(matrix)`, its NumericalError naming the exact Hessian's indefiniteness."""
        try:
            return factorise(matrix)
        except NumericalError as err:
            if self.psd_curvature:
                raise
            raise NumericalError(
                f"{err} (the exact Hessian is indefinite; curvature 'ggn' is positive "
                "semi-definite)"
            ) from err

    def log_det(self, prior, scale):
        if self.is_scalar_prior(prior) and (self._eig is not None or _needs_grad(prior, scale)):
            # Tuning a scalar δ: one O(P³) eigendecomposition, then O(P) per evaluation.
            lam, _ = self._eig_precision(prior, scale)
            return torch.log(lam).sum()
        # One value (a fit's summary, `laplace marglik`) or a non-scalar prior: one Cholesky
        # factorisation, about 15× cheaper than the eigendecomposition (P = 2,000, measured).
        return self._name_hessian(logdet_spd, self.precision(prior, scale))

    def quad_form(self, v, prior, scale):
        return (
            v @ (self.scaled_curvature(scale) @ v)
            + (expand_prior(prior, self.groups) * v * v).sum()
        )

    def dense_precision(self, prior, scale):
        return self.precision(prior, scale)

    def diag_precision(self, prior, scale):
        if self.split_outputs is None:
            d = scale.reshape(()) * self.H.diagonal()
        else:
            s = scale.reshape(-1).expand(self.split_outputs)
            d = s @ self.H.diagonal(dim1=-2, dim2=-1)
        if self.prior_curvature is not None:
            d = d + self.prior_curvature.diagonal()
        return d + expand_prior(prior, self.groups)

    def dense_covariance(self, prior, scale):
        if self.is_scalar_prior(prior):
            lam, V = self._eig_precision(prior, scale)
            return (V / lam) @ V.T
        return torch.cholesky_inverse(self.cholesky(prior, scale))

    def functional_variance(self, prior, scale, factors=None, J=None):
        if J is None and factors is None:
            raise BadInputError("the full functional variance needs Jacobians or their factors")
        if self.is_scalar_prior(prior):
            lam, V = self._eig_precision(prior, scale)
            # U = J V (B, C, P), a fresh tensor: scaled in place by (s·d + δ)^(-1/2).
            U = J @ V if J is not None else jacobian_products.matmul(factors, V)
            U.mul_(lam.rsqrt())
            return U @ U.transpose(1, 2)
        if J is None:
            J = dense_from_factors(factors).to(self.dtype)
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
        if self.is_scalar_prior(prior):
            lam, V = self._eig_precision(prior, scale)
            return (eps / lam.sqrt()) @ V.T
        L = self.cholesky(prior, scale)
        # z = L⁻ᵀ ε has covariance (L Lᵀ)⁻¹ = Λ⁻¹.
        return torch.linalg.solve_triangular(L.T, eps.T, upper=True).T

    def raw_state(self):
        return {"H": self.H}

    def load_raw_state(self, tensors):
        self.H = tensors["H"].to(dtype=self.dtype, device=self.device).clone()
        self._eig = None

    def state(self):
        key = "full.curvature" if self.split_outputs is None else "full.curvature_per_output"
        out = {key: self.H}
        if self.prior_curvature is not None:
            out["full.prior_curvature"] = self.prior_curvature
        return out

    def load_state(self, tensors):
        p = self.n_params
        if "full.curvature_per_output" in tensors:
            H = tensors["full.curvature_per_output"]
            if H.ndim != 3 or H.shape[1:] != (p, p):
                raise BadInputError(
                    f"full.curvature_per_output: expected shape (C, {p}, {p}), got {tuple(H.shape)}"
                )
            self.split_outputs = int(H.shape[0])
        else:
            H = tensors["full.curvature"]
            if H.shape != (p, p):
                raise BadInputError(
                    f"full.curvature: expected shape ({p}, {p}), got {tuple(H.shape)}"
                )
            self.split_outputs = None
        self.H = H.to(self.dtype).to(self.device)
        self._eig = None
        C = tensors.get("full.prior_curvature")
        if C is not None:
            if C.shape != (p, p):
                raise BadInputError(
                    f"full.prior_curvature: expected shape ({p}, {p}), got {tuple(C.shape)}"
                )
            C = C.to(self.dtype).to(self.device)
        self.prior_curvature = C
