"""`state_dict()` / `load_state_dict()`: tensors and plain values only, a round trip through
`torch.load(weights_only=True)`, and refusal of another flavour or another model."""

from __future__ import annotations

import pickle

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


ALL_FLAVOURS = CASES + [
    ("regression", "last_layer", "diag"),
    ("regression", "last_layer", "full"),
    ("regression", "subnetwork", "diag"),
    ("regression", "subnetwork", "full"),
]


def _fit_any(likelihood, subset, structure):
    if subset != "subnetwork":
        return _fit(likelihood, subset, structure)
    X, y = data(likelihood, d_out=2)
    model = mlp(d_out=2)
    la = Laplace(
        model,
        likelihood,
        subset,
        structure,
        sigma_noise=0.3,
        subnetwork_indices=torch.tensor([1, 10, 20, 31]),
    )
    return la.fit(loader(X, y)), model, X


@pytest.mark.parametrize("likelihood,subset,structure", ALL_FLAVOURS)
def test_values_are_plain_as_laplace_torchs(tmp_path, likelihood, subset, structure):
    """laplace-torch's test_serialize_no_pickle: every value a tensor or a plain value (no
    dict), lists holding tensors only; a round trip through weights_only=True."""
    la, model, X = _fit_any(likelihood, subset, structure)
    state = la.state_dict()
    for key, value in state.items():
        assert isinstance(value, (list, tuple, int, float, str, bool, torch.Tensor)), key
        if isinstance(value, (list, tuple)):
            flat = [t for v in value for t in (v if isinstance(v, (list, tuple)) else [v])]
            assert all(isinstance(t, torch.Tensor) for t in flat), key
    torch.save(state, tmp_path / "la.pt")
    loaded = torch.load(tmp_path / "la.pt", weights_only=True)
    fresh = Laplace(model, likelihood, subset, structure, **_subnet_kw(subset))
    fresh.load_state_dict(loaded)
    close(fresh.log_marginal_likelihood(), la.log_marginal_likelihood(), rtol=1e-12)


def _subnet_kw(subset):
    return {"subnetwork_indices": torch.tensor([1, 10, 20, 31])} if subset == "subnetwork" else {}


def test_nested_form_of_earlier_versions_still_loads():
    import json

    la, model, _ = _fit("classification", "all", "kron")
    state = la.state_dict()
    n = len("posterior.")
    old = {k: v for k, v in state.items() if not k.startswith("posterior.")}
    old["posterior"] = {k[n:]: v for k, v in state.items() if k.startswith("posterior.")}
    old["metadata"] = json.loads(state["metadata"])
    fresh = Laplace(model, "classification", "all", "kron")
    fresh.load_state_dict(old)
    close(fresh.log_marginal_likelihood(), la.log_marginal_likelihood(), rtol=1e-12)


@needs_laplace_torch
def test_kron_H_is_laplace_torchs_factors():
    from laplace import Laplace as TorchLaplace

    la, model, X = _fit("classification", "all", "kron")
    theirs = TorchLaplace(model, "classification", "all", "kron", prior_precision=2.0)
    theirs.fit(loader(X, data()[1]))
    ours_H, their_H = la.state_dict()["H"], theirs.state_dict()["H"]
    assert [len(F) for F in ours_H] == [len(F) for F in their_H]
    for F, G in zip(ours_H, their_H):
        for a, b in zip(F, G):
            close(a, b)


@pytest.mark.parametrize("subset", ["all", "subnetwork"])
def test_whole_object_pickle_needs_weights_only_false(tmp_path, subset):
    """torch >= 2.6 refuses a pickled Laplace object under its default weights_only=True, for
    laplace-torch's objects as for these (docs/migrating.md); a trusted file loads with
    weights_only=False, on the map_location device."""
    la, _, X = _fit_any("regression", subset, "full")
    path = tmp_path / "la.pt"
    torch.save(la, path)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        torch.load(path, map_location="cpu")
    la2 = torch.load(path, map_location="cpu", weights_only=False)
    assert la2.device.type == "cpu"
    for name in ("prior_precision_diag", "prior_mean", "prior_precision", "sigma_noise"):
        assert getattr(la2, name).device.type == "cpu"
    for a, b in zip(la2(X[:4]), la(X[:4])):
        close(a, b, rtol=1e-12)
