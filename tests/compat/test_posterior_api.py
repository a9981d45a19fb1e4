"""laplace-torch's posterior methods and properties, same call on both libraries (float64)."""

from __future__ import annotations

import pytest
import torch

from laplace_cli import Laplace

from .behaviour_helpers import close, data, loader, mlp, needs_laplace_torch

pytestmark = needs_laplace_torch

CASES = [
    ("all", "diag"),
    ("all", "kron"),
    ("all", "full"),
    ("last_layer", "kron"),
    ("last_layer", "diag"),
    ("last_layer", "full"),
]


def _pair(subset, structure, likelihood="classification", **kw):
    from laplace import Laplace as TorchLaplace
    from laplace.curvature import CurvlinopsGGN

    d_out = 2 if likelihood == "regression" else 3
    X, y = data(likelihood, d_out=d_out)
    model = mlp(d_out=d_out)
    ours = Laplace(model, likelihood, subset, structure, **kw).fit(loader(X, y))
    theirs = TorchLaplace(model, likelihood, subset, structure, backend=CurvlinopsGGN, **kw)
    theirs.fit(loader(X, y))
    return ours, theirs, X


@pytest.mark.parametrize("subset,structure", CASES)
def test_log_prob_square_norm_prior_diag(subset, structure):
    ours, theirs, _ = _pair(subset, structure, prior_precision=2.0)
    g = torch.Generator().manual_seed(3)
    value = theirs.mean + 0.1 * torch.randn(theirs.n_params, generator=g, dtype=torch.float64)
    close(ours.square_norm(value), theirs.square_norm(value))
    close(ours.log_prob(value), theirs.log_prob(value))
    close(ours.log_prob(value, normalized=False), theirs.log_prob(value, normalized=False))
    close(ours.prior_precision_diag, theirs.prior_precision_diag)
    close(ours.mean, theirs.mean)


@pytest.mark.parametrize("subset,structure", CASES)
def test_functional_covariance_of_jacobians(subset, structure):
    ours, theirs, X = _pair(subset, structure, prior_precision=2.0)
    Js, _ = (
        theirs.backend.last_layer_jacobians(X[:3])
        if subset == "last_layer"
        else (theirs.backend.jacobians(X[:3]))
    )
    close(ours.functional_covariance(Js), theirs.functional_covariance(Js))


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_functional_variance_fast_and_H(structure):
    ours, theirs, X = _pair("last_layer", structure, prior_precision=2.0)
    f_mu, f_var = ours.functional_variance_fast(X[:5])
    t_mu, t_var = theirs.functional_variance_fast(X[:5])
    close(f_mu, t_mu)
    close(f_var, t_var)
    close(ours.H, theirs.H)


def test_predictive_alias():
    ours, theirs, X = _pair("all", "diag", prior_precision=2.0)
    close(
        ours.predictive(X[:4], "glm", "probit", 10), theirs.predictive(X[:4], "glm", "probit", 10)
    )


def test_n_params_subnet():
    from laplace import Laplace as TorchLaplace

    X, y = data()
    model = mlp()
    idx = torch.tensor([1, 5, 9, 30])
    ours = Laplace(model, "classification", "subnetwork", "full", subnetwork_indices=idx)
    theirs = TorchLaplace(model, "classification", "subnetwork", "full", subnetwork_indices=idx)
    ours.fit(loader(X, y))
    theirs.fit(loader(X, y))
    assert ours.n_params_subnet == theirs.n_params_subnet == 4
    # mean and samples over all parameters, as laplace-torch (they used to be the 4 entries)
    close(ours.mean, theirs.mean)
    s = ours.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == theirs.sample(5).shape == (5, theirs.n_params)
    rest = torch.ones(theirs.n_params, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(s[:, rest], ours.mean[rest].expand(5, -1))
    value = theirs.mean.clone()
    value[idx] += 0.1
    # laplace-torch's subnetwork log_prob fails (a (P,) delta against the (4, 4) precision):
    # the Gaussian density over the subnetwork, from its precision, is checked instead.
    P = theirs.posterior_precision
    delta = (value - theirs.mean)[idx]
    want = -2 * torch.log(torch.tensor(2 * torch.pi, dtype=P.dtype)) + P.logdet() / 2
    close(ours.log_prob(value), want - delta @ P @ delta / 2)
    close(ours.posterior_precision, P)
