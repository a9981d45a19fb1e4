"""Last-layer GGN of softmax cross-entropy in closed form, for many classes (a vocabulary).

For a linear head f = W φ + b and softmax cross-entropy the per-sample Jacobian of f in the
head's weights is I_C ⊗ φᵀ, and the GGN is

    H = Σₙ Λₙ ⊗ φₙφₙᵀ,   Λₙ = diag(pₙ) − pₙpₙᵀ     (weight, row-major (C, d) order)

so every quantity the diag and kron structures need is a sum over (features φ, probabilities
p) alone, with no (B, C, C) Hessian root and no (B, C, P) Jacobian:

- kron: B = Σₙ Λₙ = diag(Σₙ pₙ) − PᵀP (C × C), A = Σₙ φₙφₙᵀ / N; the bias block's B is the same;
- diag: diag(H)[c, j] = Σₙ (p_nc − p_nc²) φ_nj², bias Σₙ (p_nc − p_nc²);
- the GLM predictive variances of any last-layer diag / kron posterior come from φ alone
  (`posterior.feature_variance`, for every C).

Cost per row: O(C·d + C²/B) for kron (one (C × N)(N × C) product per batch), O(C·d) for diag,
against O(C²·d) time and O(C²) memory per row for the generic Hessian-root path. Checked
against the per-class Jacobian path in tests/posterior/test_softmax_last_layer.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.core.enums import Structure
from laplace_cli.posterior.base import Posterior

#: Structures with a closed form here.
CLOSED_FORM_STRUCTURES: frozenset[Structure] = frozenset({Structure.DIAG, Structure.KRON})
#: `Laplace` takes these closed forms from this many classes on (below it the generic path,
#: whose (B, C, C) pieces are small, keeps every existing number bit for bit).
MIN_OUTPUTS = 128


def kron_increments(phi: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """(Σₙ Λₙ (C, C), Σₙ φₙφₙᵀ (d, d)) of a batch: features (N, d), probabilities (N, C)."""
    B = torch.diag(p.sum(0)) - p.T @ p
    return B, phi.T @ phi


def diag_increments(phi: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """(diag of the weight block (C·d,), row-major; diag of the bias block (C,)) of a batch."""
    v = p - p * p  # (N, C): diagonal of Λₙ
    return (v.T @ (phi * phi)).reshape(-1), v.sum(0)


def root_increments(phi: Tensor, W: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The same sums from output-space roots W (N, C, K) with Λₙ ≈ WₙWₙᵀ (the Monte Carlo
    Fisher's sampled gradients, K ≪ C): (Σ WWᵀ (C, C), diag weight (C·d,), diag bias (C,))."""
    flat = W.transpose(1, 2).reshape(-1, W.shape[1])  # (N·K, C)
    v = (W * W).sum(-1)  # (N, C)
    return flat.T @ flat, (v.T @ (phi * phi)).reshape(-1), v.sum(0)


def accumulate(
    posterior: Posterior, phi: Tensor, p: Tensor | None = None, W: Tensor | None = None
) -> None:
    """Add a batch's last-layer curvature to a diag or kron posterior (weight, then optional
    bias): the exact GGN from probabilities `p` (N, C), or Σ WWᵀ from roots `W` (N, C, K)."""
    groups = posterior.groups
    if W is not None:
        B, w, b = root_increments(phi, W)
    if posterior.structure == Structure.KRON:
        if W is None:
            B, _ = kron_increments(phi, p)
        A = phi.T @ phi
        posterior.n_data += phi.shape[0]  # type: ignore[attr-defined]
        posterior.B[0] += B  # type: ignore[attr-defined]
        posterior.A_sum[0] += A  # type: ignore[attr-defined]
        if len(groups) > 1:
            posterior.B[1] += B  # type: ignore[attr-defined]
        posterior.eigs = None  # type: ignore[attr-defined]
        return
    if W is None:
        w, b = diag_increments(phi, p)
    posterior.h += torch.cat([w, b]) if len(groups) > 1 else w  # type: ignore[attr-defined]
