"""`state_dict()` / `load_state_dict()`: tensors and plain values only, a round trip through
`torch.load(weights_only=True)`, and refusal of another flavour or another model."""

from __future__ import annotations

import pytest
import torch

from laplace_cli import Laplace
from laplace_cli.core.errors import BadInputError

from .behaviour_helpers import close, data, loader, mlp, needs_laplace_torch

CASES = [
    ("classification", "all", "diag"),
    ("classification", "all", "kron"),
    ("regression", "all", "full"),
    ("classification", "last_layer", "kron"),
    ("regression", "all", "lowrank"),
]


def _fit(likelihood, subset, structure, model=None):
    d_out = 2 if likelihood == "regression" else 3
    X, y = data(likelihood, d_out=d_out)
    model = model or mlp(d_out=d_out)
    kw = {"sigma_noise": 0.3} if likelihood == "regression" else {}
    la = Laplace(model, likelihood, subset, structure, prior_precision=2.0, **kw)
    return la.fit(loader(X, y)), model, X


@pytest.mark.parametrize("likelihood,subset,structure", CASES)
def test_round_trip(tmp_path, likelihood, subset, structure):
    la, model, X = _fit(likelihood, subset, structure)
    la.optimize_prior_precision(method="marglik")
    path = tmp_path / "la.pt"
    torch.save(la.state_dict(), path)
    state = torch.load(path, weights_only=True)  # plain values and tensors only
    fresh = Laplace(model, likelihood, subset, structure)
    fresh.load_state_dict(state)
    close(fresh.prior_precision, la.prior_precision, rtol=0)
    close(fresh.sigma_noise, la.sigma_noise, rtol=0)
    close(fresh.log_marginal_likelihood(), la.log_marginal_likelihood(), rtol=1e-12)
    close(fresh.posterior_precision, la.posterior_precision, rtol=1e-12)
    if likelihood == "regression":
        for a, b in zip(fresh(X[:4]), la(X[:4])):
            close(a, b, rtol=1e-12)
    else:
        close(fresh(X[:4]), la(X[:4]), rtol=1e-12)


def test_refuses_another_model_or_flavour():
    la, _, _ = _fit("classification", "all", "diag")
    state = la.state_dict()
    with pytest.raises(BadInputError, match="MAP weights differ"):
        Laplace(mlp(seed=5), "classification", "all", "diag").load_state_dict(state)
    with pytest.raises(BadInputError, match="parameters"):
        from torch import nn

        other = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
        Laplace(other, "classification", "all", "diag").load_state_dict(state)
    with pytest.raises(BadInputError, match="subset_of_weights and hessian_structure"):
        Laplace(la.model, "classification", "all", "kron").load_state_dict(state)


@needs_laplace_torch
def test_keys_cover_laplace_torchs():
    from laplace import Laplace as TorchLaplace

    la, model, X = _fit("classification", "all", "diag")
    theirs = TorchLaplace(model, "classification", "all", "diag", prior_precision=2.0)
    theirs.fit(loader(X, data()[1]))
    assert set(theirs.state_dict()) <= set(la.state_dict())
    assert la.state_dict()["cls_name"] == theirs.state_dict()["cls_name"] == "DiagLaplace"
    close(la.state_dict()["mean"], theirs.state_dict()["mean"], rtol=0)
    close(la.state_dict()["H"], theirs.state_dict()["H"])
