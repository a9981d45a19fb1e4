"""A last-layer flavour without `last_layer_name` checks its prior mean's length at `fit`, as
laplace-torch does (it finds the layer only then): until `fit` the value is kept and read
back; `fit` refuses a wrong length before computing anything, and keeps refusing it."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from laplace_cli import KronLLLaplace, Laplace
from laplace_cli.core.errors import BadInputError

from .behaviour_helpers import data, loader, mlp, needs_laplace_torch


def _all_params_prior(model):
    return torch.zeros_like(parameters_to_vector(model.parameters()))


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_wrong_length_kept_until_fit_then_refused(structure):
    model = mlp()
    X, y = data()
    prior_mean = _all_params_prior(model)  # 38 values; the last layer has 18
    la = Laplace(model, "classification", "last_layer", structure, prior_mean=prior_mean)
    torch.testing.assert_close(la.prior_mean, prior_mean)
    for _ in range(2):  # refused again on a second try, never silently dropped
        with pytest.raises(BadInputError, match="18 values, got 38"):
            la.fit(loader(X, y))
        assert not la.fitted
    la.prior_mean = torch.full((18,), 0.5, dtype=torch.float64)
    la.fit(loader(X, y))
    torch.testing.assert_close(la.prior_mean, torch.full((18,), 0.5, dtype=torch.float64))


def test_named_layer_and_right_lengths_checked_at_once():
    model = mlp()
    with pytest.raises(BadInputError, match="18 values"):
        KronLLLaplace(
            model, "classification", last_layer_name="2", prior_mean=_all_params_prior(model)
        )
    # a (P, 1) column is refused at once, named layer or not
    with pytest.raises(BadInputError, match="reshape"):
        KronLLLaplace(model, "classification", prior_mean=torch.zeros(18, 1))
    la = KronLLLaplace(model, "classification", prior_mean=torch.ones(18, dtype=torch.float64))
    X, y = data()
    la.fit(loader(X, y))
    assert la.prior_mean.shape == (18,)


@needs_laplace_torch
def test_same_as_laplace_torch():
    from laplace import KronLLLaplace as TheirKronLL

    model = mlp()
    X, y = data()
    prior_mean = _all_params_prior(model)
    theirs = TheirKronLL(model, "classification", prior_mean=prior_mean)
    ours = KronLLLaplace(model, "classification", prior_mean=prior_mean)
    torch.testing.assert_close(ours.prior_mean, theirs.prior_mean)
    with pytest.raises(ValueError):
        theirs.fit(loader(X, y))
    with pytest.raises(ValueError):  # BadInputError is a ValueError
        ours.fit(loader(X, y))
    with pytest.raises(ValueError):
        TheirKronLL(model, "classification", last_layer_name="2", prior_mean=prior_mean)
    with pytest.raises(ValueError):
        KronLLLaplace(model, "classification", last_layer_name="2", prior_mean=prior_mean)
