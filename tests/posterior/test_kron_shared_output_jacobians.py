"""K-FAC functional variance when every row shares its output Jacobians.

A last layer's G is the identity expanded over the batch (stride 0): `kron_functional_variance`
rotates it once instead of once per row. The result must equal the per-row computation on the
same G materialised, and the dense J Σ Jᵀ of the Kronecker covariance.
"""

from __future__ import annotations

import pytest
import torch

from laplace_cli.posterior.kron_products import kron_functional_variance
from laplace_cli.subsets.factors import LayerFactor


def _eigs(d_out: int, d_in: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    qa, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64))
    qb, _ = torch.linalg.qr(torch.randn(d_out, d_out, generator=g, dtype=torch.float64))
    return {"A.eigvecs": qa, "B.eigvecs": qb}


@pytest.mark.parametrize("kind", ["kron", "kron_bias"])
@pytest.mark.parametrize("shared", ["identity", "random"])
def test_shared_output_jacobians_equal_per_row(kind, shared) -> None:
    g = torch.Generator().manual_seed(0)
    B, C, d_in = 6, 4, 5
    eigs = _eigs(C, d_in, g)
    G0 = (
        torch.eye(C, dtype=torch.float64)
        if shared == "identity"
        else torch.randn(C, C, generator=g, dtype=torch.float64)
    )
    G = G0[None, :, None, :].expand(B, C, 1, C)  # stride 0 over the rows
    a = torch.randn(B, 1, d_in, generator=g, dtype=torch.float64)
    lam_shape = (C, d_in) if kind == "kron" else (C,)
    lam = torch.rand(lam_shape, generator=g, dtype=torch.float64) + 0.5
    fac = LayerFactor(a if kind == "kron" else None, G)
    got = kron_functional_variance(eigs, kind, fac, lam)
    per_row = kron_functional_variance(eigs, kind, LayerFactor(fac.a, G.contiguous()), lam)
    torch.testing.assert_close(got, per_row, rtol=1e-12, atol=1e-13)
    # dense oracle: Σ = (Q_B ⊗ Q_A) diag(1/λ) (Q_B ⊗ Q_A)ᵀ, J_b = G0 ⊗ a_bᵀ (or G0 for a bias)
    if kind == "kron":
        Q = torch.kron(eigs["B.eigvecs"], eigs["A.eigvecs"])
        J = torch.stack([torch.kron(G0, a[b, 0][None]) for b in range(B)])
    else:
        Q, J = eigs["B.eigvecs"], G0.expand(B, C, C)
    Sigma = Q @ torch.diag(1.0 / lam.reshape(-1)) @ Q.T
    torch.testing.assert_close(got, J @ Sigma @ J.mT, rtol=1e-12, atol=1e-13)
