"""The interface every posterior structure implements, and the prior-precision helpers they share.

A posterior holds the *curvature* H (summed over the data, unit noise, temperature 1) in its
structure. Everything that depends on the prior precision δ and the likelihood factor
s = 1 / (σ² T) (regression) or 1 / T is computed on demand from H, δ and s:

    posterior precision  Λ = s·H + diag(δ)

so the prior, the noise and the temperature can change after fitting without refitting, and the
log-determinant stays differentiable in δ and s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from laplace_cli.enums import Structure
from laplace_cli.errors import BadInputError
from laplace_cli.subsets import Factor, ParamGroup


def group_sizes(groups: Sequence[ParamGroup]) -> list[int]:
    return [g.numel for g in groups]


def expand_prior(prior: Tensor, groups: Sequence[ParamGroup]) -> Tensor:
    """Prior precision of shape (1,), (G,) or (P,) as one value per parameter, (P,)."""
    sizes = group_sizes(groups)
    n_params = sum(sizes)
    prior = prior.reshape(-1)
    if prior.numel() == 1:
        return prior.expand(n_params)
    if prior.numel() == len(sizes):
        return torch.repeat_interleave(prior, torch.tensor(sizes, device=prior.device))
    if prior.numel() == n_params:
        return prior
    raise BadInputError(
        f"prior precision has {prior.numel()} values; expected 1 (scalar), {len(sizes)} "
        f"(one per parameter tensor) or {n_params} (one per parameter)"
    )


def per_group_prior(prior: Tensor, groups: Sequence[ParamGroup], structure: str) -> Tensor:
    """Prior precision as one value per parameter tensor (G,); per-parameter priors are refused."""
    prior = prior.reshape(-1)
    if prior.numel() == 1:
        return prior.expand(len(groups))
    if prior.numel() == len(groups):
        return prior
    raise BadInputError(
        f"structure {structure!r} supports a scalar prior precision or one per parameter tensor "
        f"({len(groups)} values), got {prior.numel()} values"
    )


class Posterior(ABC):
    """A Gaussian posterior precision in one structure; see the module docstring."""

    structure: Structure
    #: True when fitting needs dense per-sample Jacobians (B, C, P) rather than layer factors.
    needs_dense_jacobian: bool = False

    def __init__(
        self, groups: Sequence[ParamGroup], dtype: torch.dtype, device: torch.device
    ) -> None:
        self.groups = list(groups)
        self.dtype = dtype
        self.device = device
        self.n_params = sum(g.numel for g in self.groups)

    # --- fitting --------------------------------------------------------------------------
    @abstractmethod
    def accumulate(self, W: Tensor, factors: list[Factor] | None, J: Tensor | None) -> None:
        """Add Σ_b Σ_k (J_bᵀ W_bk)(J_bᵀ W_bk)ᵀ for one batch.

        W (B, C, K) is the output-space square root of the loss curvature: for the GGN the
        square root of the loss Hessian, for the empirical Fisher the loss gradient (K = 1).
        Structures with `needs_dense_jacobian` get `J` (B, C, P), the others `factors`.
        """

    def finalize(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Called after the last batch (K-FAC normalises and eigendecomposes its factors)."""

    @abstractmethod
    def reset(self) -> None:
        """Zero the curvature."""

    # --- with a prior ---------------------------------------------------------------------
    @abstractmethod
    def log_det(self, prior: Tensor, scale: Tensor) -> Tensor:
        """log det(s·H + diag(δ)), differentiable in δ and s."""

    @abstractmethod
    def dense_precision(self, prior: Tensor, scale: Tensor) -> Tensor:
        """The posterior precision as a dense (P, P) matrix (tests and small models only)."""

    @abstractmethod
    def diag_precision(self, prior: Tensor, scale: Tensor) -> Tensor:
        """The diagonal of the posterior precision, (P,)."""

    @abstractmethod
    def functional_variance(
        self,
        prior: Tensor,
        scale: Tensor,
        factors: list[Factor] | None = None,
        J: Tensor | None = None,
    ) -> Tensor:
        """J Σ Jᵀ per sample, (B, C, C), from layer factors or a dense Jacobian."""

    @abstractmethod
    def sample(
        self, n: int, prior: Tensor, scale: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """n zero-mean draws from N(0, Λ⁻¹), (n, P)."""

    def dense_covariance(self, prior: Tensor, scale: Tensor) -> Tensor:
        """Λ⁻¹ as a dense (P, P) matrix."""
        return torch.cholesky_inverse(torch.linalg.cholesky(self.dense_precision(prior, scale)))

    def curvature_dense(self) -> Tensor:
        """H itself as a dense (P, P) matrix (tests)."""
        zero = torch.zeros(1, dtype=self.dtype, device=self.device)
        one = torch.ones((), dtype=self.dtype, device=self.device)
        return self.dense_precision(zero, one)

    # --- state ------------------------------------------------------------------------------
    @abstractmethod
    def state(self) -> dict[str, Tensor]:
        """Tensors that describe the curvature, named as in docs/posterior-format.md."""

    @abstractmethod
    def load_state(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of `state`."""

    def block_metadata(self) -> list[dict] | None:
        """The `blocks` metadata entry (K-FAC only)."""
        return None

    def add_prior_posterior(
        self, other: Posterior, scale_other: Tensor, prior_other: Tensor
    ) -> None:
        """Continual learning: fold another posterior's precision into this one's curvature."""
        raise BadInputError(f"structure {self.structure} cannot take a posterior as prior")


def fv_dense_diag(J: Tensor, variances: Tensor) -> Tensor:
    """Σ_p J[b,c,p] J[b,d,p] v[p] for a diagonal covariance v (P,): (B, C, C)."""
    return torch.einsum("bcp,bdp->bcd", J * variances, J)
