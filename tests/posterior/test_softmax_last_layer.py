"""Closed-form last-layer softmax curvature and variances (posterior/softmax_last_layer.py)
against the per-class Jacobian path, in float64 at small C."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from laplace_cli import Laplace
from laplace_cli.core.enums import Structure
from laplace_cli.posterior import softmax_last_layer as slf


def _dense_ggn(phi: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Σ Jₙᵀ Λₙ Jₙ with the dense per-class Jacobian Jₙ = [I_C ⊗ φₙᵀ, I_C] (C, C·d + C)."""
    n, d = phi.shape
    c = p.shape[1]
    H = torch.zeros(c * d + c, c * d + c, dtype=torch.float64)
    eye = torch.eye(c, dtype=torch.float64)
    for i in range(n):
        J = torch.cat([torch.kron(eye, phi[i : i + 1]), eye], dim=1)
        lam = torch.diag(p[i]) - torch.outer(p[i], p[i])
        H += J.T @ lam @ J
    return H


def test_increments_equal_dense_per_class_jacobians():
    torch.manual_seed(0)
    phi = torch.randn(7, 4, dtype=torch.float64)
    p = torch.softmax(torch.randn(7, 5, dtype=torch.float64), -1)
    H = _dense_ggn(phi, p)
    w, b = slf.diag_increments(phi, p)
    assert torch.allclose(torch.cat([w, b]), H.diagonal(), rtol=1e-12, atol=1e-14)
    B, A = slf.kron_increments(phi, p)
    lam_sum = sum(torch.diag(q) - torch.outer(q, q) for q in p)
    assert torch.allclose(B, lam_sum, rtol=1e-12, atol=1e-14)
    assert torch.allclose(A, phi.T @ phi)
    # Monte Carlo roots: Σ WWᵀ in place of Λ.
    W = torch.randn(7, 5, 3, dtype=torch.float64)
    Bw, ww, bw = slf.root_increments(phi, W)
    assert torch.allclose(Bw, torch.einsum("nck,ndk->cd", W, W))
    lam_w = torch.einsum("nck,nck->nc", W, W)
    ref = torch.einsum("nc,nj->cj", lam_w, phi * phi).reshape(-1)
    assert torch.allclose(ww, ref) and torch.allclose(bw, lam_w.sum(0))


class _Net(nn.Module):
    def __init__(self, n_classes: int) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.head = nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.parametrize("structure", ["diag", "kron"])
@pytest.mark.parametrize("curvature", ["ggn", "mc_fisher", "ef"])
def test_laplace_closed_form_equals_generic_path(monkeypatch, structure, curvature):
    torch.manual_seed(0)
    X = torch.randn(40, 6, dtype=torch.float64)
    y = torch.randint(0, 9, (40,))
    loader = [(X[i : i + 10], y[i : i + 10]) for i in range(0, 40, 10)]
    model = _Net(9).double()
    kw = {"curvature": curvature, "n_mc_samples": 3, "prior_precision": 0.7}
    ref = Laplace(model, "classification", "last_layer", structure, **kw).fit(loader)
    assert not ref.softmax_closed_form()
    monkeypatch.setattr(slf, "MIN_OUTPUTS", 1)
    la = Laplace(model, "classification", "last_layer", structure, **kw).fit(loader)
    assert la.softmax_closed_form()
    for key, t in ref.posterior.state().items():
        assert torch.allclose(la.posterior.state()[key], t, rtol=1e-10, atol=1e-12), key
    f_mu, var = la.functional_variance_diag(X)
    f_ref, cov_ref = ref.functional_variance_at(X)
    assert torch.allclose(f_mu, f_ref)
    assert torch.allclose(var, cov_ref.diagonal(dim1=-2, dim2=-1), rtol=1e-10, atol=1e-12)
    assert torch.allclose(la(X), ref(X), rtol=1e-10, atol=1e-12)
    assert torch.allclose(la.log_marginal_likelihood(), ref.log_marginal_likelihood())


def test_threshold_and_structures():
    assert {Structure.DIAG, Structure.KRON} == set(slf.CLOSED_FORM_STRUCTURES)
    model = _Net(slf.MIN_OUTPUTS)
    X = torch.randn(8, 6)
    y = torch.randint(0, slf.MIN_OUTPUTS, (8,))
    la = Laplace(model.float(), "classification", "last_layer", "kron").fit([(X.float(), y)])
    assert la.softmax_closed_form()
    full = Laplace(model.float(), "classification", "last_layer", "full").fit([(X.float(), y)])
    assert not full.softmax_closed_form()
