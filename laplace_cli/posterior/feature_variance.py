"""Predictive variances of a last-layer posterior straight from the head's features.

For a linear head f = W φ + b the per-sample Jacobian is I_C ⊗ φᵀ in W (row-major) and I_C in
b, so the diagonal of J Σ Jᵀ, all that a probit prediction needs, takes no output Jacobians:

    Var f_c(x) = Σ_j M_cj u_j² + v_c,   u = R φ

- kron (Σ_W = (Q_B ⊗ Q_A) diag(1/λ) (Q_B ⊗ Q_A)ᵀ, λ_xy = τ·λ_B,x·λ_A,y + δ with τ the
  curvature scale): R = Q_Aᵀ and M = (Q_B ⊙ Q_B)(1/λ), i.e. M_cy = Σ_x Q_B[c, x]² / λ_xy;
  the bias block adds v = (Q_B ⊙ Q_B)(1/λ_b);
- diag: R = I, M_cj = 1/Λ_(c, j) (the weight block's precision in its (C, d) shape) and
  v_c = 1/Λ_b,c.

M (C, d) and v (C,) depend on the prior precision and the curvature scale, not on x. A
`FeatureVarianceForm` holds them and a posterior keeps the last one it built
(`FeatureFormCache`): a prediction then costs one (B, d)(d, d) rotation and one (B, d)(d, C)
product on top of the forward pass. M is kept as (C, d) and applied transposed, as `F.linear`
does (23 µs against 44 µs for a (100, 256)(256, 10) product on one thread). Rebuilding M and v
per call, with the block eigenvalues, their reciprocals and the identity checks of the
generic layer-factor path, was most of the last-layer prediction overhead on a 1M-parameter
MLP (docs/design.md, "Last-layer prediction from features").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from laplace_cli.subsets.factors import ParamGroup

__all__ = ["FeatureFormCache", "FeatureVarianceForm", "OutputDraws", "head_shape"]


def head_shape(groups: Sequence[ParamGroup]) -> tuple[int, int] | None:
    """(C, d) when `groups` are a linear head's weight (C, d) and optional bias (C,) — the
    blocks a last-layer subset hands over — else None."""
    if not 1 <= len(groups) <= 2 or groups[0].kind != "weight" or len(groups[0].shape) != 2:
        return None
    n_out, d = groups[0].shape
    if len(groups) == 2 and (groups[1].kind != "bias" or groups[1].shape != (n_out,)):
        return None
    return n_out, d


@dataclass(frozen=True)
class OutputDraws:
    """Exact draws of a last-layer K-FAC posterior's logits without its (C, C) covariance.

    Per row, J Σ Jᵀ = Q_B diag(w) Q_Bᵀ + Q_b diag(v_b) Q_bᵀ with w = u² (1/λ)ᵀ (u = φ Q_A, the
    weight block) and v_b = 1/λ_b (the bias block, eigenvectors Q_b), so
    f = f_μ + Q_B(√w ⊙ ε) + Q_b(√v_b ⊙ ε′), ε, ε′ ~ N(0, I_C), is a draw from N(f_μ, J Σ Jᵀ):
    2C² per draw and row, where a Cholesky factor of the covariance costs C³/3 per row and the
    covariance C² memory per row (C = 2,000, 64 rows, 100 draws: 52 s and 3.3 GB before).
    """

    inv_eigvals: Tensor  # (C, d): 1/λ of the weight block
    basis: Tensor  # Q_B (C, C)
    bias_basis: Tensor | None  # Q_b (C, C)
    bias_scale: Tensor | None  # √(1/λ_b) (C,)

    @property
    def width(self) -> int:
        """Standard normals per draw and row: C, or 2C with a bias block."""
        n = self.basis.shape[0]
        return n if self.bias_basis is None else 2 * n

    def draw(self, u_sq: Tensor, f_mu: Tensor, eps: Tensor) -> Tensor:
        """(S, B, C) draws at squared rotated features u² = (φ Q_A)² (B, d) from standard
        normals eps (S, B, width)."""
        n = self.basis.shape[0]
        w = F.linear(u_sq, self.inv_eigvals)  # (B, C): Σ_y u_y² / λ_xy
        f = f_mu + (eps[..., :n] * w.clamp_min(0).sqrt()) @ self.basis.T
        if self.bias_basis is not None:
            f = f + (eps[..., n:] * self.bias_scale) @ self.bias_basis.T
        return f


@dataclass(frozen=True)
class FeatureVarianceForm:
    """Var f(x) = (Rφ)² Mᵀ + v: `rotation` (d, d) applied as φ ↦ φ·rotation, i.e. Rᵀ
    (None: the identity), `weights` M (C, d), `bias` v (C,) (None: no bias block); `draws`
    where the covariance is not diagonal (kron), None where it is (diag: its draws are
    ε ⊙ √Var)."""

    rotation: Tensor | None
    weights: Tensor
    bias: Tensor | None
    draws: OutputDraws | None = None

    def variance_diag(self, phi: Tensor) -> Tensor:
        """(B, C) variances of the outputs at features φ (B, d)."""
        u = phi if self.rotation is None else phi @ self.rotation
        return F.linear(u * u, self.weights, self.bias)

    def variance_and_draws(self, phi: Tensor, f_mu: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C) variances and (S, B, C) draws at features φ (B, d), one rotation for both."""
        if self.draws is None:
            raise ValueError("this form has no structured draws (its covariance is diagonal)")
        u = phi if self.rotation is None else phi @ self.rotation
        u_sq = u * u
        return F.linear(u_sq, self.weights, self.bias), self.draws.draw(u_sq, f_mu, eps)


@dataclass(frozen=True)
class _Entry:
    prior: Tensor
    scale: Tensor
    state: tuple[Tensor, ...]
    versions: tuple[int, ...]
    form: FeatureVarianceForm

    def matches(self, prior: Tensor, scale: Tensor, state: Sequence[Tensor]) -> bool:
        return (
            len(state) == len(self.state)
            and all(a is b for a, b in zip(state, self.state, strict=True))
            and all(t._version == v for t, v in zip(state, self.versions, strict=True))
            # a form built under inference mode cannot enter an autograd graph later
            and self.form.weights.is_inference() == torch.is_inference_mode_enabled()
            and _same_values(prior, self.prior)
            and _same_values(scale, self.scale)
        )


def _same_values(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


class FeatureFormCache:
    """The last `FeatureVarianceForm` a posterior built, reused while the prior precision and
    curvature scale have the same values and the tensors the curvature lives in (`state`) are
    the same objects, unmodified (their version counters). A prior or scale that requires grad
    (a hyperparameter being optimised through the predictive), or a curvature made under
    `torch.inference_mode` (its tensors have no version counter), is never cached."""

    def __init__(self) -> None:
        self._entry: _Entry | None = None

    def get(
        self,
        prior: Tensor,
        scale: Tensor,
        state: Sequence[Tensor],
        build: Callable[[], FeatureVarianceForm],
    ) -> FeatureVarianceForm:
        if not (isinstance(prior, Tensor) and isinstance(scale, Tensor)):
            return build()
        if prior.requires_grad or scale.requires_grad:
            return build()
        if any(t.is_inference() for t in state):
            return build()  # made in inference mode: no version counter to key on
        entry = self._entry
        if entry is not None and entry.matches(prior, scale, state):
            return entry.form
        form = build()
        self._entry = _Entry(
            prior.detach().clone(),
            scale.detach().clone(),
            tuple(state),
            tuple(t._version for t in state),
            form,
        )
        return form
