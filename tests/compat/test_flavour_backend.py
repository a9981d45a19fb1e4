"""A flavour's `la.backend` is laplace-torch's backend object, bound to its model and subset.

Same calls on both libraries (float64, rtol 1e-4): `la.backend.jacobians` /
`last_layer_jacobians` / `gradients` / `diag` of a fitted flavour. The engine's own choice stays
a string (`_backend_name`) and never reaches `state_dict`.
"""

from __future__ import annotations

import pytest
import torch

import laplace_cli
from laplace_cli.curvature import CurvatureInterface, CurvlinopsEF, CurvlinopsGGN

from .behaviour_helpers import close, data, loader, mlp, needs_laplace_torch

FLAVOURS = [
    "DiagLaplace",
    "KronLaplace",
    "FullLaplace",
    "DiagLLLaplace",
    "KronLLLaplace",
    "FullLLLaplace",
]


def _pair(name: str, likelihood: str = "classification"):
    import laplace

    X, y = data(likelihood)
    model = mlp()
    ours = getattr(laplace_cli, name)(model, likelihood)
    theirs = getattr(laplace, name)(model, likelihood)
    ours.fit(loader(X, y))
    theirs.fit(loader(X, y))
    return ours, theirs, X, y


@needs_laplace_torch
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("name", FLAVOURS)
def test_backend_jacobians_match_laplace_torch(name, likelihood):
    ours, theirs, X, y = _pair(name, likelihood)
    assert type(ours.backend).__name__ == type(theirs.backend).__name__ == "CurvlinopsGGN"
    assert ours.backend.last_layer == ("LL" in name)
    method = "last_layer_jacobians" if "LL" in name else "jacobians"
    Js, f = getattr(ours.backend, method)(X)
    Js_t, f_t = getattr(theirs.backend, method)(X)
    assert Js.shape == Js_t.shape
    close(Js, Js_t)
    close(f, f_t)
    # laplace-torch's use of them: J Σ Jᵀ of the fitted posterior. The two fits' H agree to
    # ~1e-8 relative (FullLL), so near-zero entries of the (≈1-sized) result need an atol.
    close(ours.functional_covariance(Js), theirs.functional_covariance(Js_t), atol=1e-6)


@needs_laplace_torch
@pytest.mark.parametrize("name", ["DiagLaplace", "FullLaplace"])
def test_backend_gradients_and_curvature_match_laplace_torch(name):
    ours, theirs, X, y = _pair(name)
    Gs, loss = ours.backend.gradients(X, y)
    Gs_t, loss_t = theirs.backend.gradients(X, y)
    close(Gs, Gs_t)
    close(loss, loss_t)
    structure = "diag" if name.startswith("Diag") else "full"
    loss, H = getattr(ours.backend, structure)(X, y)
    loss_t, H_t = getattr(theirs.backend, structure)(X, y)
    close(H, H_t)
    close(loss, loss_t)


def test_backend_object_reflects_choice_and_engine_keeps_its_name():
    X, y = data()
    model = mlp()
    la = laplace_cli.DiagLaplace(model, "classification", backend=CurvlinopsEF)
    assert isinstance(la.backend, CurvlinopsEF) and la.backend.model is model
    assert la.backend is la.backend  # one object, as laplace-torch's
    assert la._backend_name == "auto"
    la = laplace_cli.Laplace(model, "classification", "all", "diag", curvature="ef")
    assert type(la.backend) is CurvlinopsEF
    la = laplace_cli.Laplace(
        model,
        "classification",
        "all",
        "diag",
        backend_kwargs={"stochastic": True, "num_samples": 3},
    )
    assert type(la.backend) is CurvlinopsGGN
    assert (la.backend.stochastic, la.backend.num_samples) == (True, 3)
    la.fit(loader(X, y))
    state = la.state_dict()
    assert not any(isinstance(v, CurvatureInterface) for v in state.values())
    assert "backend" not in state


def test_last_layer_backend_jacobians_equal_dense_autograd():
    """Independent of laplace-torch: J of the head at the features, by torch.autograd."""
    X, y = data()
    model = mlp()
    la = laplace_cli.FullLLLaplace(model, "classification").fit(loader(X, y))
    Js, f = la.backend.last_layer_jacobians(X[:4])
    head = model[-1]
    phi = model[:-1](X[:4]).detach()

    def out(w, b):
        return phi @ w.T + b

    Jw, Jb = torch.autograd.functional.jacobian(out, (head.weight.detach(), head.bias.detach()))
    B, C = f.shape
    dense = torch.cat([Jw.reshape(B, C, -1), Jb.reshape(B, C, -1)], dim=2)
    torch.testing.assert_close(Js, dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f, model(X[:4]), rtol=1e-10, atol=1e-12)
