"""`functional_variance` in laplace-torch's form (Jacobians (B, C, P) → J Σ Jᵀ (B, C, C)) next
to this project's form (inputs → (f_mu, f_var), also `functional_variance_at`), dispatched on
the argument: a tensor of shape (B, n_outputs, n_params) is Jacobians, anything else inputs.

Checked against a dense reference (J Σ Jᵀ with Σ the dense posterior covariance) and side by
side with laplace-torch 0.3 (same Jacobians, float64, rtol 1e-4).
"""

from __future__ import annotations

import pytest
import torch

from laplace_cli import Laplace
from laplace_cli.core.errors import BadInputError

from .behaviour_helpers import close, data, loader, mlp, needs_laplace_torch

CASES = [
    (subset, structure, likelihood)
    for subset in ("all", "last_layer")
    for structure in ("diag", "kron", "full")
    for likelihood in ("classification", "regression")
]


def _fit(subset, structure, likelihood):
    X, y = data(likelihood)
    model = mlp()
    kw = {"sigma_noise": 0.3} if likelihood == "regression" else {}
    la = Laplace(model, likelihood, subset, structure, prior_precision=0.7, **kw)
    la.fit(loader(X, y))
    return la, model, X, y


def _jacobians(la, X):
    if la.subset_of_weights.value == "last_layer":
        return la.backend.last_layer_jacobians(X)[0]
    return la.backend.jacobians(X)[0]


@pytest.mark.parametrize("subset,structure,likelihood", CASES)
def test_jacobian_form_equals_dense_reference_and_inputs_form(subset, structure, likelihood):
    la, _, X, _ = _fit(subset, structure, likelihood)
    Js = _jacobians(la, X)
    assert Js.shape == (len(X), 3, la.n_params)
    sigma = torch.linalg.inv(la.posterior.dense_precision(la.prior_precision, la.curvature_scale()))
    expected = torch.einsum("ncp,pq,nkq->nck", Js, sigma, Js)
    f_var = la.functional_variance(Js)
    assert isinstance(f_var, torch.Tensor) and f_var.shape == (len(X), 3, 3)
    close(f_var, expected, rtol=1e-8)
    # the inputs form: the same variance through this project's structured path
    f_mu, f_var_x = la.functional_variance(X)
    close(f_var_x, expected, rtol=1e-8)
    mu_at, var_at = la.functional_variance_at(X)
    close(mu_at, f_mu, rtol=0)
    close(var_at, f_var_x, rtol=0)
    # laplace-torch's joint form on the same Jacobians: its (C, C) diagonal blocks
    joint = la.functional_covariance(Js)
    blocks = torch.stack([joint[3 * i : 3 * i + 3, 3 * i : 3 * i + 3] for i in range(len(X))])
    close(blocks, expected, rtol=1e-8)


def test_dispatch_is_by_shape():
    la, _, X, _ = _fit("last_layer", "kron", "classification")
    # inputs of another shape, one row, or a list of rows: inputs
    assert isinstance(la.functional_variance(X[:1]), tuple)
    assert isinstance(la.functional_variance(X[:5]), tuple)
    # a 3-D tensor whose last axis is not n_params cannot be Jacobians: taken as inputs
    with pytest.raises(RuntimeError):  # the model cannot take it: its own error
        la.functional_variance(torch.zeros(2, 3, la.n_params + 1, dtype=torch.float64))
    wrong = torch.zeros(2, 3, la.n_params - 1, dtype=torch.float64)
    with pytest.raises(BadInputError, match="functional_variance_at"):
        la.functional_covariance(wrong)


def test_jacobian_form_is_differentiable():
    la, _, X, _ = _fit("all", "diag", "regression")
    Js = _jacobians(la, X[:2]).clone().requires_grad_(True)
    la.functional_variance(Js).sum().backward()
    assert Js.grad is not None and torch.isfinite(Js.grad).all() and Js.grad.abs().sum() > 0


@needs_laplace_torch
@pytest.mark.parametrize("subset,structure,likelihood", CASES)
def test_same_as_laplace_torch(subset, structure, likelihood):
    import laplace as lt

    la, model, X, y = _fit(subset, structure, likelihood)
    kw = {"sigma_noise": 0.3} if likelihood == "regression" else {}
    theirs = lt.Laplace(model, likelihood, subset, structure, prior_precision=0.7, **kw)
    theirs.fit(loader(X, y))
    Js = _jacobians(la, X)
    if subset == "last_layer":
        their_Js, _ = theirs.backend.last_layer_jacobians(X)
    else:
        their_Js, _ = theirs.backend.jacobians(X)
    close(Js, their_Js)
    close(la.functional_variance(Js), theirs.functional_variance(their_Js))
