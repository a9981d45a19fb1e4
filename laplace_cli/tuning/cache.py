"""`PredictiveCache`: the prior-independent part of the GLM predictive on a fixed input set.

The GLM predictive at inputs x is N(f_μ, J Λ⁻¹ Jᵀ) with Λ = s·H + diag(δ). Only Λ depends on the
prior precision δ and the likelihood factor s = 1/T (1/(σ²T) for regression), and every posterior
structure stores H in a basis in which Λ is diagonal block by block. So one pass over the
validation data can project the Jacobians into that basis once, and every (δ, s) afterwards costs
a few small tensor products:

* K-FAC weight block, T = 1 (Linear input): per sample J_c = g_c ⊗ a; with u = G Q_B (N, C, d_out)
  and s² = (a Q_A)² (N, d_in),
  [J Λ⁻¹ Jᵀ]_cd = Σ_x u_cx u_dx w_x,  w = s² (1 / (s·λ_B λ_Aᵀ + δ))ᵀ  (N, d_out).
  Its bias has the Jacobian g_c and, when the bias block's B has the same eigenvectors (it is
  the same matrix for a Linear layer), adds 1 / (s·λ_B + δ_b) to w: one block for both.
* diag weight block, T = 1: the same with u = G and s² = a², and 1/(s·h + δ) reshaped (d_out, d_in)
  (the bias, with u = G, always folds in).
* other K-FAC / diag bias blocks (u = Σ_t G_t Q_B or Σ_t G_t), weight blocks with a weight-sharing
  dimension T > 1 (per-sample Jacobians in the eigenbasis, (N, C, d_out·d_in)) and parameters of
  other modules (their dense Jacobian): [J Λ⁻¹ Jᵀ]_cd = Σ_k U_ck U_dk / λ_k.
* full: H = V diag(d) Vᵀ and U = J V (N, C, P), so J Λ⁻¹ Jᵀ = Σ_p U_cp U_dp / (s·d_p + δ) for a
  scalar prior; any other Λ (layer-wise or per-parameter δ, per-output σ, a posterior as prior)
  is solved in that basis, Λ̃ = Vᵀ Λ V, by Cholesky.

The eigenvalues s·λ without δ are taken from the posterior itself (`block_eigvals`,
`diag_precision`, `eig`), so the cached variance is what `la.functional_variance` computes.

Memory: per-sample pieces of size N·C·d_out and N·d_in per layer for diag/K-FAC (N·C·numel only
for weight-shared layers and non-Linear parameters), N·C·P for full; the cache refuses with a
`MemoryBudgetError` when it would exceed half of `la.max_memory`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import batch_size
from laplace_cli.core.enums import Structure, Subset
from laplace_cli.core.errors import BadInputError, MemoryBudgetError
from laplace_cli.posterior.base import expand_prior
from laplace_cli.posterior.full import robust_cholesky
from laplace_cli.posterior.memory import format_bytes
from laplace_cli.posterior.table import STRUCTURES, structure_spec
from laplace_cli.subsets import jacobian_products
from laplace_cli.subsets.base import dense_from_factors, iter_rows
from laplace_cli.tuning.cache_blocks import Part, input_rows, joined_inputs
from laplace_cli.tuning.cache_projection import assemble_blocks, fold_plan, project_factors
from laplace_cli.tuning.protocol import FittedLaplace

__all__ = ["PredictiveCache", "cache_unsupported_reason"]

#: Structures and subsets the cache implements; anything else is scored by calling `la(...)`.
#: (The structures are those with `tuning_cache` in `posterior.table`.)
CACHED_STRUCTURES = tuple(Structure(n) for n, spec in STRUCTURES.items() if spec.tuning_cache)
CACHED_SUBSETS = (Subset.ALL, Subset.LAST_LAYER)


def cache_unsupported_reason(la: FittedLaplace) -> str | None:
    """Why `PredictiveCache` cannot serve `la` (None when it can)."""
    if getattr(la, "output_positions", None) is not None:
        return "dense outputs (output_positions) have no predictive cache"
    if not structure_spec(la.hessian_structure).tuning_cache:
        return f"structure {la.hessian_structure.value!r} has no predictive cache"
    if la.subset_of_weights not in CACHED_SUBSETS:
        return f"subset {la.subset_of_weights.value!r} has no predictive cache"
    return None


class PredictiveCache:
    """Prior-independent GLM quantities on a fixed input set; see the module docstring.

    Build it with `PredictiveCache.from_loader(la, loader)` (it keeps the targets too) or
    `PredictiveCache(la, inputs)`; then `functional_variance(prior, scale)` equals
    `la.functional_variance(x)[1]` at that prior and scale, and `variance_diag(priors, scales)`
    gives the output variances at many (δ, s) at once. The hyperparameters are read from the
    arguments only: the cache stays valid when `la.prior_precision`, `la.sigma_noise` or
    `la.temperature` change, but not when `la` is refitted.

    Attributes:
        f_mu: MAP outputs (N, C).
        y: targets (classification (N,), otherwise (N, C)), or None.
        n: number of samples N.
        blocks: rank-one weight blocks (with their biases) and dense blocks.
    """

    def __init__(
        self, la: FittedLaplace, inputs: Iterable[Any], targets: Tensor | None = None
    ) -> None:
        la.require_fit()
        reason = cache_unsupported_reason(la)
        if reason is not None:
            raise BadInputError(reason)
        self.structure = la.hessian_structure
        self.posterior = la.posterior
        self.groups = la.subset.groups
        self.n_groups = len(self.groups)
        self.n_params = la.n_params
        self.dtype, self.device = la.dtype, la.device
        self.budget = la.max_memory // 2
        self._data: dict[tuple[float, ...], list[Tensor]] = {}
        # Biases folded into their weight's block (tuning/cache_projection.py).
        self._layout = fold_plan(self.structure, self.posterior, self.groups)
        mus: list[Tensor] = []
        pieces: list[list[tuple[Tensor, Tensor | None]]] = []
        used = 0
        for x in joined_inputs(la.as_inputs(x) for x in inputs):
            for f, parts in self._pieces(la, x):
                mus.append(f.to(self.dtype))
                pieces.append(parts)
                # Pieces shared by every sample (a leading 1 in a chunk of several rows, e.g. the
                # last layer's G = I) are held once; ×2 for their squares.
                rows = f.shape[0]
                used += sum(
                    2 * (a.numel() + (0 if b is None else b.numel())) * a.element_size()
                    for a, b in parts
                    if a.shape[0] == rows or len(pieces) == 1
                )
                if used > self.budget:
                    raise MemoryBudgetError(
                        f"the grid-search cache needs more than {format_bytes(used)} for "
                        f"{sum(m.shape[0] for m in mus)} validation samples ({self._what()}), "
                        f"more than half of max_memory ({format_bytes(la.max_memory)}); use a "
                        "smaller validation set, structure kron or diag, or raise max_memory"
                    )
        if not mus:
            raise BadInputError("the validation data is empty")
        self.f_mu = torch.cat(mus)
        self.n = self.f_mu.shape[0]
        self.n_outputs = self.f_mu.shape[1]
        self.blocks = assemble_blocks(
            pieces,
            [m.shape[0] for m in mus],
            self.structure,
            self.groups,
            self._layout,
            self.n_params,
        )
        self.y = targets

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_loader(cls, la: FittedLaplace, loader: Iterable[Any]) -> PredictiveCache:
        """Build from a loader of `(x, y)` or dict batches; keeps the targets as `cache.y`."""
        ys: list[Tensor] = []

        def inputs() -> Iterable[Any]:
            for batch in loader:
                x, y = la.prepare_batch(batch)
                if batch_size(x) == 0:
                    continue
                ys.append(y)
                yield x

        cache = cls(la, inputs())
        cache.y = torch.cat(ys)
        if cache.y.shape[0] != cache.n:
            raise BadInputError(
                f"the validation data has {cache.n} inputs but {cache.y.shape[0]} targets"
            )
        return cache

    def _what(self) -> str:
        if self.structure == Structure.FULL:
            return f"{self.n_params} projected Jacobian entries per sample and output"
        return "per-layer projected inputs and output Jacobians"

    def _pieces(self, la: FittedLaplace, x: Any) -> Iterable[tuple[Tensor, list]]:
        """Row chunks of a batch and their pieces.

        full: dense Jacobian rows bounded as in `la.functional_variance`. diag / kron: the
        first chunk as there (`la.factor_rows`); the later ones as large as `max_memory // 4`
        allows for the layer factors, measured as 3× the pieces of the first chunk (the factors
        G and a, the projections, the autograd intermediates). The cache keeps pieces of that
        size for every row anyway, so small chunks would bound nothing and only cost calls.
        """
        n = batch_size(x)
        if self.structure == Structure.FULL:
            V = self._full_basis()
            for xc in iter_rows(x, la.jacobian_chunk_rows()):
                f, factors, J = la.jacobian_pieces(xc)
                if J is None and V is None:
                    J = dense_from_factors(factors)
                if J is not None:
                    J = J.to(self.dtype)
                    U = J if V is None else J @ V
                else:
                    U = jacobian_products.matmul(factors, V)
                yield f, [(U, None)]  # U = J V, (rows, C, P)
            return
        rows_fn = getattr(la, "factor_rows", None)
        rows = rows_fn(x) if rows_fn is not None else n
        start = 0
        while start < n:
            xc = input_rows(x, start, start + rows)
            f, factors = la.subset.factors(xc)
            parts = project_factors(
                factors, self.structure, self.posterior, self._layout, self.dtype
            )
            yield f, parts
            done = f.shape[0]
            start += done
            per_row = sum(
                (a.numel() + (0 if b is None else b.numel())) * a.element_size() for a, b in parts
            ) / max(done, 1)
            rows = max(rows, int((la.max_memory // 4) // max(3 * per_row, 1)))

    # --- the posterior's data part -------------------------------------------------------------
    def _data_eigs(self, scale: Tensor) -> list[Tensor]:
        """D(s) per parameter tensor (full: one for all): the precision eigenvalues without δ.

        kron: `block_eigvals(i, 0, s)` = s·λ_B λ_Aᵀ (weights), s·λ_B (biases), s·h (other);
        diag: `diag_precision(0, s)` (s·h, plus the curvature of a posterior used as prior);
        full: s·d. Adding δ afterwards gives bit for bit what the posterior computes with δ.
        """
        key = tuple(float(v) for v in scale.reshape(-1))
        if key not in self._data:
            post = self.posterior
            zero = torch.zeros(1, dtype=self.dtype, device=self.device)
            if self.structure == Structure.KRON:
                out = [post.block_eigvals(i, zero.reshape(()), scale) for i in range(self.n_groups)]
            elif self.structure == Structure.DIAG:
                d = post.diag_precision(zero, scale)
                out, start = [], 0
                for g in self.groups:
                    out.append(d[start : start + g.numel])
                    start += g.numel
            else:
                d, _ = post.eig()
                out = [scale.reshape(()) * d]
            if len(self._data) > 64:  # a temperature grid has few distinct scales
                self._data.clear()
            self._data[key] = out
        return self._data[key]

    def _inverse(self, part: Part, priors: Tensor, scales: Tensor) -> Tensor:
        """1 / (D(s_g) + δ_g) of one part at G grid points, (G, *part.shape)."""
        if bool((scales == scales[:1]).all()):  # one scale for the whole grid (no T grid)
            data = self._data_eigs(scales[0])[part.group].reshape(1, *part.shape)
        else:
            data = torch.stack([self._data_eigs(s)[part.group].reshape(part.shape) for s in scales])
        denom = data + part.delta(priors, self.n_groups)
        # An indefinite curvature (exact Hessian) can leave Λ not positive definite at small δ:
        # no Gaussian posterior there, so NaN, which the grid search skips as non-finite.
        return torch.where(denom > 0, 1.0 / denom, torch.nan)

    # --- queries ------------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes held by the cached projections (and their squares)."""
        return sum(b.nbytes() for b in self.blocks) + self.f_mu.numel() * self.f_mu.element_size()

    def _priors(self, prior: Tensor | float) -> Tensor:
        """Priors as (G, k), k ∈ {1, groups, P}."""
        prior = torch.as_tensor(prior, dtype=self.dtype, device=self.device)
        prior = prior.reshape(-1, 1) if prior.ndim <= 1 else prior
        if prior.shape[1] not in (1, self.n_groups, self.n_params):
            expand_prior(prior[0], self.groups)  # raises the standard message
        if not torch.isfinite(prior).all() or (prior <= 0).any():
            raise BadInputError("prior precisions must be positive and finite")
        return prior

    def _scales(self, scale: Tensor | float, n: int) -> Tensor:
        """Likelihood factors as (G, m): m = 1, or one per output (per-output σ)."""
        s = torch.as_tensor(scale, dtype=self.dtype, device=self.device)
        if s.ndim == 0 or (s.ndim == 1 and s.numel() in (1, n) and n > 1):
            s = s.reshape(-1, 1)
        elif s.ndim == 1:
            s = s.reshape(1, -1)
        return s.expand(n, s.shape[1]) if s.shape[0] == 1 else s

    def _is_eigen_path(self, prior_k: int, scale: Tensor) -> bool:
        """full: whether Λ = s·H + δ·I, diagonal in H's eigenbasis."""
        probe = torch.ones(prior_k, dtype=self.dtype, device=self.device)
        return self.posterior.is_scalar_prior(probe) and scale.shape[-1] == 1

    def functional_variance(self, prior: Tensor | float, scale: Tensor | float) -> Tensor:
        """J Λ⁻¹ Jᵀ per sample, (N, C, C), at one prior δ and likelihood factor s.

        Args:
            prior: δ as a scalar, one value per parameter tensor or one per parameter.
            scale: s (`la.curvature_scale()`): 1/T, or 1/(σ²T) for regression.
        """
        priors = self._priors(torch.as_tensor(prior).reshape(1, -1))
        scales = self._scales(torch.as_tensor(scale).reshape(-1), 1)
        if self.structure == Structure.FULL and not self._is_eigen_path(priors.shape[1], scales):
            return self._full_general(priors[0], scales[0])
        out = torch.zeros(
            self.n, self.n_outputs, self.n_outputs, dtype=self.dtype, device=self.device
        )
        for blk in self.blocks:
            out.add_(blk.covariance([self._inverse(p, priors, scales) for p in blk.parts]))
        return out

    def variance_diag(self, priors: Tensor, scales: Tensor | float) -> Tensor:
        """Output variances diag(J Λ⁻¹ Jᵀ) at G grid points (δ_g, s_g): (G, N, C).

        Args:
            priors: (G,) scalar priors or (G, k) with k = 1, the number of parameter tensors, or
                the number of parameters.
            scales: s per grid point (G,), one s for all, or (G, C) per-output factors.
        """
        return self.variance_ncg(priors, scales).permute(2, 0, 1)

    def variance_ncg(self, priors: Tensor, scales: Tensor | float) -> Tensor:
        """`variance_diag` in the layout it is computed in, (N, C, G) (contiguous)."""
        priors = self._priors(priors)
        scales = self._scales(scales, priors.shape[0])
        if self.structure == Structure.FULL and not self._is_eigen_path(priors.shape[1], scales):
            return torch.stack(
                [
                    self._full_general(p, s).diagonal(dim1=-2, dim2=-1)
                    for p, s in zip(priors, scales)
                ],
                dim=-1,
            )
        acc = torch.zeros(
            self.n, self.n_outputs, priors.shape[0], dtype=self.dtype, device=self.device
        )
        for blk in self.blocks:
            blk.add_var(acc, [self._inverse(p, priors, scales) for p in blk.parts])
        return acc

    def _full_basis(self) -> Tensor | None:
        """full: the eigenvectors V of H, or None (the parameter basis itself) when H is kept
        per output (per-output σ), where no single eigenbasis diagonalises s·H."""
        if getattr(self.posterior, "split_outputs", None) is not None:
            return None
        return self.posterior.eig()[1]

    def _full_general(self, prior: Tensor, scale: Tensor) -> Tensor:
        """full, any Λ: U Λ̃⁻¹ Uᵀ with Λ̃ = Vᵀ Λ V (H = V diag(d) Vᵀ, U = J V), by Cholesky."""
        V = self._full_basis()
        s = scale.reshape(()) if scale.numel() == 1 else scale
        lam = self.posterior.dense_precision(prior, s)
        if V is not None:
            lam = V.T @ lam @ V
        L = robust_cholesky(0.5 * (lam + lam.T))
        U = self.blocks[0].U
        n, c, p = U.shape
        X = torch.linalg.solve_triangular(L, U.reshape(n * c, p).T, upper=False)  # (P, N·C)
        X = X.T.reshape(n, c, p)
        return X @ X.transpose(1, 2)
