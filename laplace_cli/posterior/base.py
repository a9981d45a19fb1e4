"""The interface every posterior structure implements, and the prior-precision helpers they share.

A posterior holds the *curvature* H (summed over the data, unit noise, temperature 1) in its
structure. Everything that depends on the prior precision δ and the likelihood factor
s = 1 / (σ² T) (regression) or 1 / T is computed on demand from H, δ and s:

    posterior precision  Λ = s·H + diag(δ)

so the prior, the noise and the temperature can change after fitting without refitting, and the
log-determinant stays differentiable in δ and s.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from laplace_cli.core.enums import Structure
from laplace_cli.core.errors import BadInputError
from laplace_cli.posterior.feature_variance import FeatureFormCache, FeatureVarianceForm
from laplace_cli.subsets.base import Factor, ParamGroup


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
    #: True when fitting needs dense per-sample Jacobians (B, C, P) rather than layer factors;
    #: batches are then chunked so that a dense Jacobian of a chunk fits the memory budget.
    needs_dense_jacobian: bool = False
    #: A dense structure that also takes the factors (and forms J only where that is cheaper).
    accepts_factors: bool = False
    #: A factor structure that also takes a dense J (B, C, P): used when the model has no
    #: per-layer factors (a layer that runs twice, or sees other rows than the batch's).
    accepts_dense_jacobian: bool = False
    #: False for the exact Hessian (curvature "hessian"), which may be indefinite: diag and full
    #: then check that Λ = s·H + diag(δ) is positive definite where they use it.
    psd_curvature: bool = True

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
        Structures with `needs_dense_jacobian` get `J` (B, C, P), unless they set
        `accepts_factors`; the others get `factors`.
        """

    def accumulate_directions(self, directions: Iterable[list[Factor]]) -> None:
        """Add one batch's curvature from pieces of already projected factors
        (`AllWeights.factor_directions`: each piece holds some of the root's K columns, G
        (B, k, T, d_out)); the pieces sum to `accumulate(W, factors, None)`. Only the
        structures that sum over columns (diag, kron) take this route."""
        raise NotImplementedError(f"{type(self).__name__} takes dense pieces via `accumulate`")

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

    #: Whether the structure has a `functional_variance_diag(prior, scale, factors, J)`
    #: (B, C) cheaper than `functional_variance`'s diagonal (no (C, C) products): a probit
    #: prediction then takes it.
    cheap_variance_diag: bool = False

    def feature_variance_form(self, prior: Tensor, scale: Tensor) -> FeatureVarianceForm | None:
        """The last-layer variance form Var f(x) = (Rφ)² Mᵀ + v (`posterior.feature_variance`),
        where the structure has one and its blocks are a linear head's weight and bias; None
        otherwise. The last one built is kept while the prior, the scale and the tensors of
        `feature_form_state` are unchanged (`FeatureFormCache`)."""
        if not self.has_feature_variance():
            return None
        cache = self.__dict__.setdefault("_feature_forms", FeatureFormCache())
        return cache.get(
            prior, scale, self.feature_form_state(), lambda: self.build_feature_form(prior, scale)
        )

    def has_feature_variance(self) -> bool:
        """Whether `feature_variance_form` gives a form (without building one)."""
        return False

    def feature_form_state(self) -> list[Tensor]:
        """The tensors the curvature lives in, whose identity and version key the form."""
        raise NotImplementedError

    def build_feature_form(self, prior: Tensor, scale: Tensor) -> FeatureVarianceForm:
        """A new form at this prior and scale (structures with `has_feature_variance`)."""
        raise NotImplementedError

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

    # --- raw sums (fits over data shards, resumable fits) ---------------------------------
    def raw_state(self) -> dict[str, Tensor]:
        """The curvature *sums over the data* before `finalize`, by name.

        Every entry is additive over disjoint parts of the data (shards, batch ranges), so a
        fit over shards is the sum of the shards' raw states. A posterior folded in as prior
        (continual learning) is left out; `load_raw_state` adds it back once.
        """
        raise BadInputError(
            f"structure {self.structure.value!r} cannot be fitted in shards or resumed "
            "(it is not a single sum over the data); use diag, kron or full"
        )

    def load_raw_state(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of `raw_state` (the tensors are copied)."""
        raise BadInputError(
            f"structure {self.structure.value!r} cannot be fitted in shards or resumed"
        )

    # --- per-output curvature (regression with one noise level per output) -----------------
    #: C when the curvature is kept per output (H_k for k = 1..C), None when kept summed.
    split_outputs: int | None = None

    def split_by_output(self, n_outputs: int) -> None:
        """Keep the curvature per output from now on (before fitting): Λ = Σ_k s_k H_k + diag(δ)."""
        raise BadInputError(
            f"structure {self.structure.value!r} cannot keep the curvature per output; "
            "per-output sigma_noise needs hessian_structure 'diag' or 'full'"
        )

    # --- a fitted posterior as the prior (continual learning) -----------------------------
    #: A frozen copy of the posterior used as prior, and its likelihood factor s' (kept by the
    #: structures that fold the prior into their curvature; diag and full know P₀ = C + diag(δ)
    #: from their fixed term C and keep no copy).
    prior_posterior: Posterior | None = None
    prior_scale: Tensor | None = None
    keeps_prior_copy: bool = True

    def set_prior_posterior(self, other: Posterior, scale_other: Tensor, scale_now: Tensor) -> None:
        """Use another fitted posterior's precision Λ' = s'·H' + diag(δ) as this one's prior.

        The prior precision P₀ = s'·H' + diag(δ) (δ: this posterior's prior precision, which
        the caller sets to the previous one's) enters the posterior precision as
        Λ = s·H + s'·H' + diag(δ). diag and full hold s'·H' as a separate, fixed term (exact);
        kron and lowrank fold it into their curvature (see `_fold_prior`). The log marginal
        likelihood uses P₀ through `prior_log_det` and `prior_quad_form`.

        Args:
            other: a fitted posterior of the same structure over the same parameter groups.
            scale_other: s' of `other` (1/T', or 1/(σ'²T') for regression).
            scale_now: this posterior's s at the time of the call (kron and lowrank fold
                s'/s·H' into their curvature).
        """
        if type(other) is not type(self):
            raise BadInputError(
                f"a posterior used as prior must have the same structure: this one is "
                f"{self.structure.value!r}, the prior {other.structure.value!r}"
            )
        mine = [(g.name, g.shape) for g in self.groups]
        theirs = [(g.name, g.shape) for g in other.groups]
        if mine != theirs:
            raise BadInputError(
                "a posterior used as prior must cover the same parameters: this one has "
                f"{len(mine)} tensors ({self.n_params} parameters), the prior {len(theirs)} "
                f"({other.n_params} parameters)"
            )
        scale_other = scale_other.detach().clone()
        source = other
        if self.keeps_prior_copy:
            frozen = copy.copy(other)
            # The prior's own prior is not needed for P₀ = Λ'; dropping it keeps a chain of
            # tasks from holding one copy per earlier task.
            frozen.prior_posterior = None
            frozen.prior_scale = None
            source = copy.deepcopy(frozen)
            self.prior_posterior = source
            self.prior_scale = scale_other
        self._fold_prior(source, scale_other, scale_now.detach().clone())

    def _fold_prior(self, other: Posterior, scale_other: Tensor, scale_now: Tensor) -> None:
        raise BadInputError(
            f"structure {self.structure.value!r} cannot take a posterior as prior"
        )  # pragma: no cover - every structure overrides it

    def prior_log_det(self, prior: Tensor) -> Tensor:
        """log det P₀: Σ log δ, or log det Λ'(δ) of a posterior used as prior (differentiable in δ)."""
        if self.prior_posterior is not None:
            return self.prior_posterior.log_det(prior, self.prior_scale)
        return torch.log(expand_prior(prior, self.groups)).sum()

    def prior_quad_form(self, v: Tensor, prior: Tensor) -> Tensor:
        """vᵀ P₀ v (the scatter term of the log marginal likelihood, v = θ* − μ₀)."""
        if self.prior_posterior is not None:
            return self.prior_posterior.quad_form(v, prior, self.prior_scale)
        return (v * expand_prior(prior, self.groups) * v).sum()

    def quad_form(self, v: Tensor, prior: Tensor, scale: Tensor) -> Tensor:
        """vᵀ Λ v with the posterior precision Λ = s·H + diag(δ) (dense fallback)."""
        return v @ (self.dense_precision(prior, scale) @ v)


def scale_curvature(curvature: Tensor, scale: Tensor, split_outputs: int | None) -> Tensor:
    """s·H for a scalar factor s, or Σ_k s_k H_k when H is kept per output (per-output σ).

    `curvature` is H, or (C, ...) per-output pieces when `split_outputs` = C.
    """
    if split_outputs is None:
        if scale.numel() != 1:
            raise BadInputError(
                "a per-output likelihood factor needs the curvature kept per output "
                "(fit with a per-output sigma_noise)"
            )
        return scale.reshape(()) * curvature
    return torch.tensordot(scale.reshape(-1).expand(split_outputs), curvature, dims=1)


def fv_dense_diag(J: Tensor, variances: Tensor) -> Tensor:
    """Σ_p J[b,c,p] J[b,d,p] v[p] for a diagonal covariance v (P,): (B, C, C)."""
    return torch.einsum("bcp,bdp->bcd", J * variances, J)
