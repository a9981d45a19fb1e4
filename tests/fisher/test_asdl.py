"""The optional ASDL backend (`asdfghjkl`) against the native curvature, on tiny MLPs in float64."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from laplace_cli import Laplace
from laplace_cli.core.errors import BadInputError
from tests import reference as ref
from tests.conftest import tiny_cnn, tiny_data, tiny_mlp


def _have_asdfghjkl() -> bool:
    try:
        importlib.metadata.distribution("asdfghjkl")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_asdl = pytest.mark.skipif(
    not _have_asdfghjkl(), reason="asdfghjkl (extra 'asdl') not installed"
)


def fit_pair(likelihood, structure, curvature="ggn", **kw):
    torch.manual_seed(0)
    X, y = tiny_data(likelihood, n=12)
    batches = [(X[:7], y[:7]), (X[7:], y[7:])]
    out = []
    for backend in ("native", "asdl"):
        model = tiny_mlp()
        la = Laplace(
            model,
            likelihood,
            "all",
            structure,
            curvature=curvature,
            backend=backend,
            prior_precision=0.3,
            **kw,
        )
        la.fit(batches)
        out.append(la)
    return out


@needs_asdl
@pytest.mark.parametrize(
    "likelihood,structure,curvature",
    [
        ("classification", "kron", "ggn"),
        ("classification", "diag", "ggn"),
        ("classification", "kron", "ef"),
        ("regression", "kron", "ggn"),
        ("regression", "diag", "ggn"),
        ("regression", "diag", "ef"),
    ],
    ids=lambda v: str(v),
)
def test_asdl_matches_native(float64, likelihood, structure, curvature):
    native, asdl = fit_pair(likelihood, structure, curvature)
    P_n, P_a = ref.dense_precision(native), ref.dense_precision(asdl)
    err = (P_n - P_a).abs()
    assert err.max() <= 1e-5 * P_n.abs().max(), (
        f"max abs diff {err.max():.3e} at {tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))}"
    )
    torch.testing.assert_close(
        native.log_marginal_likelihood(), asdl.log_marginal_likelihood(), rtol=1e-8, atol=1e-10
    )
    # The curvature is not trivially zero or the prior alone.
    assert (P_n - 0.3 * torch.eye(P_n.shape[0])).abs().max() > 1e-3
    assert all(p.grad is None for p in asdl.model.parameters())
    assert not any(hasattr(m, "fisher") for m in asdl.model.modules())


@needs_asdl
def test_asdl_refuses_what_it_does_not_cover(float64):
    with pytest.raises(BadInputError, match="structure 'full'.*use backend 'native'"):
        Laplace(tiny_mlp(), "classification", "all", "full", backend="asdl")
    with pytest.raises(BadInputError, match="subset 'last_layer'"):
        Laplace(tiny_mlp(), "classification", "last_layer", "kron", backend="asdl")
    with pytest.raises(BadInputError, match="not an nn.Linear"):
        Laplace(tiny_cnn(), "classification", "all", "kron", backend="asdl")
    with pytest.raises(BadInputError, match="likelihood 'binary'"):
        Laplace(tiny_mlp(), "binary", "all", "kron", backend="asdl")


def test_asdl_missing_is_a_clear_error(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(BadInputError, match=r"asdfghjkl, not the unrelated package 'asdl'"):
        Laplace(tiny_mlp(), "classification", "all", "kron", backend="asdl")


def test_auto_backend_is_native(float64):
    X, y = tiny_data("classification", n=6)
    a = Laplace(tiny_mlp(), "classification", "all", "kron", backend="auto").fit([(X, y)])
    b = Laplace(tiny_mlp(), "classification", "all", "kron", backend="native").fit([(X, y)])
    torch.testing.assert_close(ref.dense_precision(a), ref.dense_precision(b), rtol=0, atol=0)
