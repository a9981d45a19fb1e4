"""`enable_backprop=True`: GLM and NN predictions differentiable in the inputs (and, as in
laplace-torch, in a prior precision that requires gradients); checked by finite differences."""

from __future__ import annotations

import pytest
import torch

from laplace_cli import Laplace

from .behaviour_helpers import close, data, loader, mlp, needs_laplace_torch

CASES = [
    ("classification", "all", "diag"),
    ("classification", "all", "kron"),
    ("classification", "all", "full"),
    ("classification", "last_layer", "kron"),
    ("regression", "all", "kron"),
    ("regression", "last_layer", "full"),
    ("classification", "subnetwork", "full"),
]


def _fitted(likelihood, subset, structure, enable_backprop=True):
    X, y = data(likelihood, d_out=3)
    kw = {"subnetwork_indices": torch.tensor([0, 7, 19, 33])} if subset == "subnetwork" else {}
    la = Laplace(mlp(), likelihood, subset, structure, enable_backprop=enable_backprop, **kw)
    return la.fit(loader(X, y)), X


def _scalar(la, x, pred_type):
    kw = dict(pred_type=pred_type, generator=torch.Generator().manual_seed(0), n_samples=5)
    if la.likelihood.value == "regression":
        mean, var = la(x, **kw)
        return mean.sum() + var.sum()
    return la(x, link_approx="probit" if pred_type == "glm" else "mc", **kw)[:, 0].sum()


def _finite_difference(f, x, eps=1e-6):
    fd = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(x.numel()):
            e = torch.zeros_like(x).reshape(-1)
            e[i] = eps
            e = e.reshape(x.shape)
            fd.reshape(-1)[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return fd


@pytest.mark.parametrize("pred_type", ["glm", "nn"])
@pytest.mark.parametrize("likelihood,subset,structure", CASES)
def test_gradient_in_inputs(likelihood, subset, structure, pred_type):
    la, X = _fitted(likelihood, subset, structure)
    x = X[:3].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_scalar(la, x, pred_type), x)
    fd = _finite_difference(lambda z: _scalar(la, z, pred_type), X[:3].clone())
    close(grad, fd, rtol=1e-5, atol=1e-8)
    assert fd.abs().max() > 1e-4  # the check is not vacuous


def test_off_by_default():
    la, X = _fitted("classification", "all", "kron", enable_backprop=False)
    x = X[:3].clone().requires_grad_(True)
    assert not la(x).requires_grad


def test_gradient_in_prior_precision():
    la, X = _fitted("classification", "all", "diag")
    delta = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    la.prior_precision = delta
    (grad,) = torch.autograd.grad(_scalar(la, X[:3], "glm"), delta)

    def at(v):
        la.prior_precision = v
        return _scalar(la, X[:3], "glm")

    fd = (at(2.0 + 1e-6) - at(2.0 - 1e-6)) / 2e-6
    close(grad, fd, rtol=1e-5)


@needs_laplace_torch
def test_input_gradient_matches_laplace_torch():
    from laplace import Laplace as TorchLaplace
    from laplace.curvature import CurvlinopsGGN

    X, y = data()
    model = mlp()
    ours = Laplace(model, "classification", "all", "full", enable_backprop=True)
    ours.fit(loader(X, y))
    theirs = TorchLaplace(
        model, "classification", "all", "full", enable_backprop=True, backend=CurvlinopsGGN
    )
    theirs.fit(loader(X, y))
    x1 = X[:3].clone().requires_grad_(True)
    x2 = X[:3].clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(ours(x1)[:, 0].sum(), x1)
    (g2,) = torch.autograd.grad(theirs(x2, pred_type="glm")[:, 0].sum(), x2)
    close(g1, g2)
