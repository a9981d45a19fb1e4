"""Behaviour that used to differ silently from laplace-torch 0.3, now the same (or refused)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from laplace_cli import Laplace
from laplace_cli.core.errors import BadInputError

from .behaviour_helpers import close, data, loader, mlp, needs_laplace_torch


def _regression(sigma_noise=0.3, structure="kron"):
    X, y = data("regression", d_out=2)
    model = mlp(d_out=2)
    la = Laplace(model, "regression", "all", structure, sigma_noise=sigma_noise)
    return la.fit(loader(X, y)), model, X, y


def test_prior_mean_column_is_refused():
    la, *_ = _regression()
    with pytest.raises(BadInputError, match="reshape"):
        la.prior_mean = torch.zeros(la.n_params, 1, dtype=torch.float64)
    la.prior_mean = torch.zeros(la.n_params, dtype=torch.float64)  # the vector form is fine


@needs_laplace_torch
def test_prior_mean_column_refused_by_laplace_torch_too():
    from laplace import Laplace as TorchLaplace

    model = mlp()
    n = sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError):
        TorchLaplace(model, "classification", "all", "diag", prior_mean=torch.zeros(n, 1))


def test_marglik_keeps_sigma_unless_asked():
    la, *_ = _regression(sigma_noise=0.3)
    la.optimize_prior_precision(method="marglik")
    close(la.sigma_noise, torch.tensor([0.3], dtype=torch.float64), rtol=0)
    assert la.tuning["tuned"] == ["prior_precision"]
    la.optimize_prior_precision(method="marglik", tune_sigma_noise=True)
    assert la.tuning["tuned"] == ["prior_precision", "sigma_noise"]
    assert abs(float(la.sigma_noise) - 0.3) > 1e-3


@needs_laplace_torch
def test_marglik_prior_matches_laplace_torch_with_sigma_fixed():
    from laplace import Laplace as TorchLaplace
    from laplace.curvature import CurvlinopsGGN

    la, model, X, y = _regression(sigma_noise=0.3)
    theirs = TorchLaplace(
        model, "regression", "all", "kron", sigma_noise=0.3, backend=CurvlinopsGGN
    )
    theirs.fit(loader(X, y))
    theirs.optimize_prior_precision(method="marglik", n_steps=2000, lr=0.05)
    la.optimize_prior_precision(method="marglik")
    close(theirs.sigma_noise, 0.3, rtol=0)
    close(la.prior_precision, theirs.prior_precision, rtol=1e-3)


def test_regression_nn_returns_the_variance():
    la, _, X, _ = _regression()
    kw = dict(pred_type="nn", link_approx="mc", n_samples=6)
    mean, var = la(X[:4], generator=torch.Generator().manual_seed(0), **kw)
    assert mean.shape == var.shape == (4, 2)
    samples = la.functional_samples(
        X[:4], pred_type="nn", n_samples=6, generator=torch.Generator().manual_seed(0)
    )
    close(mean, samples.mean(0), rtol=1e-12)
    close(var, samples.var(0), rtol=1e-12)


def test_feature_reduction_on_2d_features_is_a_no_op():
    X, y = data()
    model = mlp()
    plain = Laplace(model, "classification", "last_layer", "kron").fit(loader(X, y))
    reduced = Laplace(model, "classification", "last_layer", "kron", feature_reduction="average")
    reduced.fit(loader(X, y))
    close(reduced.posterior_precision, plain.posterior_precision, rtol=0)
    close(reduced(X[:4]), plain(X[:4]), rtol=0)


def test_optimize_prior_precision_takes_laplace_torchs_arguments(capsys):
    X, y = data()
    model = mlp()
    la = Laplace(model, "classification", "all", "diag").fit(loader(X, y))
    # pred_type first positionally, as laplace-torch 0.3
    la.optimize_prior_precision(
        "glm",
        "gridsearch",
        val_loader=loader(X, y),
        log_prior_prec_min=-1,
        log_prior_prec_max=1,
        grid_size=5,
        verbose=True,
        progress_bar=False,
        loss=lambda probs, yv: float(nn.functional.nll_loss(probs.log(), yv)),
    )
    assert "Optimized prior precision is" in capsys.readouterr().out
    assert la.tuning["pred_type"] == "glm" and len(la.tuning["curve"]) == 5
    grid = [c[0] for c in la.tuning["curve"]]
    close(torch.tensor(grid), torch.logspace(-1, 1, 5, dtype=torch.float64), rtol=1e-12)
    # this project's earlier form: the method first
    la.optimize_prior_precision("marglik")
    assert la.tuning["method"] == "marglik"
    la.optimize_prior_precision(
        "glm", "gridsearch", val_loader=loader(X, y), grid_size=3, log_prior_prec_base=2.0
    )
    grid = [c[0] for c in la.tuning["curve"]]
    close(torch.tensor(grid), torch.tensor([0.0625, 1.0, 16.0], dtype=torch.float64), rtol=1e-12)
    with pytest.raises(BadInputError, match="twice"):
        la.optimize_prior_precision("glm", pred_type="glm")
