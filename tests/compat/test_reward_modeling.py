"""likelihood="reward_modeling" (laplace-torch's): classification-style fit, regression-style
predictive (`fitting=True` gives the classification probabilities)."""

from __future__ import annotations

import pytest
import torch

from laplace_cli import Laplace

from .behaviour_helpers import close, data, loader, mlp, needs_laplace_torch


@needs_laplace_torch
@pytest.mark.parametrize(
    "subset,structure", [("all", "diag"), ("all", "kron"), ("last_layer", "full")]
)
def test_reward_modeling_matches_laplace_torch(subset, structure):
    from laplace import Laplace as TorchLaplace
    from laplace.curvature import CurvlinopsGGN

    X, y = data()
    model = mlp()
    ours = Laplace(model, "reward_modeling", subset, structure, prior_precision=2.0)
    ours.fit(loader(X, y))
    theirs = TorchLaplace(
        model, "reward_modeling", subset, structure, prior_precision=2.0, backend=CurvlinopsGGN
    )
    theirs.fit(loader(X, y))
    f_mu, f_var = ours(X[:5])
    t_mu, t_var = theirs(X[:5], pred_type="glm")
    close(f_mu, t_mu)
    close(f_var, t_var)
    close(ours(X[:5], fitting=True), theirs(X[:5], pred_type="glm", fitting=True))
    close(ours.log_marginal_likelihood(), theirs.log_marginal_likelihood())


def test_reward_modeling_is_classification_when_fitted():
    X, y = data()
    model = mlp()
    rm = Laplace(model, "reward_modeling", "all", "diag").fit(loader(X, y))
    cls = Laplace(model, "classification", "all", "diag").fit(loader(X, y))
    assert rm.reward_modeling and rm.likelihood.value == "classification"
    close(rm.posterior_precision, cls.posterior_precision, rtol=0)
    mean, var = rm(
        X[:3],
        pred_type="nn",
        link_approx="mc",
        n_samples=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert mean.shape == var.shape == (3, 3)
    assert rm.state_dict()["likelihood"] == "reward_modeling"
