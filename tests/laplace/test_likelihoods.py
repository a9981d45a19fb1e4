"""Engine II likelihoods and curvatures against dense references: MC Fisher, binary / multi-label
(sigmoid BCE) and regression with one noise level per output (float64, tiny models, fixed seeds)."""

from __future__ import annotations

import math

import pytest
import torch

from laplace_cli import Laplace
from laplace_cli.fisher.mc_fisher import sampled_output_gradients
from laplace_cli.posterior import expand_prior
from tests import reference as ref
from tests.conftest import tiny_data, tiny_mlp
from tests.laplace.test_reference import assert_close, loader

LIKELIHOODS = ["classification", "regression", "binary"]


# --- MC Fisher ------------------------------------------------------------------------------
def rel_error(H, G):
    return float(torch.linalg.matrix_norm(H - G) / torch.linalg.matrix_norm(G))


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_mc_fisher_converges_to_ggn(float64, likelihood):
    """The MC Fisher is unbiased for the GGN: its error shrinks like 1/√S (tolerance 3/√S)."""
    model = tiny_mlp()
    X, y = tiny_data(likelihood)
    ggn = ref.ggn(model, [n for n, _ in model.named_parameters()], X, y, likelihood)
    errors = {}
    for S in (10, 100, 1000, 10000):
        la = Laplace(model, likelihood, "all", "full", curvature="mc_fisher", n_mc_samples=S)
        errors[S] = rel_error(la.fit(loader(X, y)).posterior.curvature_dense(), ggn)
        assert errors[S] <= 3.0 / math.sqrt(S), (S, errors)
    assert errors[10000] < errors[10] / 10, errors


@pytest.mark.parametrize("structure", ["diag", "kron"])
def test_mc_fisher_structured_converges(float64, structure):
    """diag / kron with MC Fisher approach the same structure fitted with the exact GGN."""
    model = tiny_mlp()
    X, y = tiny_data("classification")
    exact = Laplace(model, "classification", "all", structure).fit(loader(X, y))
    G = exact.posterior.curvature_dense()
    errs = []
    for S in (10, 10000):
        la = Laplace(
            model, "classification", "all", structure, curvature="mc_fisher", n_mc_samples=S
        ).fit(loader(X, y))
        errs.append(rel_error(la.posterior.curvature_dense(), G))
    assert errs[1] < 3.0 / math.sqrt(10000) and errs[1] < errs[0] / 10, errs


def test_mc_fisher_is_seeded(float64):
    model = tiny_mlp()
    X, y = tiny_data("classification")

    def fit(seed):
        la = Laplace(
            model, "classification", "all", "diag", curvature="mc_fisher", n_mc_samples=3, seed=seed
        )
        return la.fit(loader(X, y)).posterior.h

    assert torch.equal(fit(7), fit(7))
    assert not torch.allclose(fit(7), fit(8))


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_sampled_gradients_average_to_output_hessian(float64, likelihood):
    """W Wᵀ → ∂²ℓ/∂f² per sample (B, C, C) as S grows, for each likelihood."""
    f = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    W = sampled_output_gradients(likelihood, f, 200_000, g)
    assert W.shape == (4, 3, 200_000)
    from laplace_cli.core import likelihoods as lik

    H = lik.hessian(lik.Likelihood(likelihood), f)
    assert (W @ W.transpose(1, 2) - H).abs().max() < 0.01


# --- binary / multi-label -------------------------------------------------------------------
@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_binary_marglik_matches_dense_formula(float64, structure):
    model = tiny_mlp()
    X, y = tiny_data("binary")  # 4 independent labels per row (multi-label)
    la = Laplace(model, "binary", "all", structure, temperature=0.8).fit(loader(X, y))
    prior = torch.linspace(0.5, 2.0, len(la.subset.groups))
    la.prior_precision = prior
    H = la.posterior.curvature_dense()
    if structure != "kron":  # kron approximates H; diag / full must match the brute force
        names = [n for n, _ in model.named_parameters()]
        dense = ref.ggn(model, names, X, y, "binary")
        assert_close(H, dense if structure == "full" else torch.diag(dense.diagonal()))
    assert_close(la.loss, ref.total_loss(model, X, y, "binary"), what="BCE loss")
    expected = ref.dense_log_marglik(
        la.loss,
        H,
        la.mean,
        expand_prior(prior, la.subset.groups),
        "binary",
        la.n_data,
        4,
        torch.tensor(1.0),
        0.8,
    )
    assert_close(la.log_marginal_likelihood(), expected, rtol=1e-8, what="log marglik")


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_binary_marglik_gradient_matches_finite_differences(float64, structure):
    model = tiny_mlp()
    X, y = tiny_data("binary")
    la = Laplace(model, "binary", "all", structure).fit(loader(X, y))
    n = len(la.subset.groups)
    log_prior = torch.linspace(-0.5, 0.5, n).requires_grad_(True)
    (grad,) = torch.autograd.grad(la.log_marginal_likelihood(log_prior.exp()), log_prior)
    eps = 1e-6
    for i in range(n):
        e = torch.zeros(n)
        e[i] = eps
        lp = log_prior.detach()
        fd = (
            la.log_marginal_likelihood((lp + e).exp()) - la.log_marginal_likelihood((lp - e).exp())
        ) / (2 * eps)
        assert math.isclose(float(grad[i]), float(fd), rel_tol=1e-5, abs_tol=1e-7)


def test_binary_probit_predictive_matches_dense(float64):
    model = tiny_mlp()
    X, y = tiny_data("binary")
    la = Laplace(model, "binary", "all", "full", prior_precision=0.7).fit(loader(X, y))
    names = [n for n, _ in model.named_parameters()]
    H = ref.ggn(model, names, X, y, "binary")
    cov = torch.linalg.inv(H + 0.7 * torch.eye(H.shape[0]))
    f, J = ref.jacobians(model, names, X)
    var = torch.einsum("ncp,pq,ncq->nc", J, cov, J)
    expected = torch.sigmoid(f / torch.sqrt(1 + math.pi / 8 * var))
    assert_close(la(X, link_approx="probit"), expected, what="probit sigmoid")


def test_binary_refuses_targets_outside_unit_interval(float64):
    model = tiny_mlp()
    X, y = tiny_data("binary")
    y[0, 0] = 2.0
    with pytest.raises(ValueError, match=r"binary targets must lie in \[0, 1\]"):
        Laplace(model, "binary", "all", "diag").fit(loader(X, y))


# --- regression with one noise level per output ---------------------------------------------
SIGMA_VALUES = [0.5, 0.8, 1.3, 2.0]


def sigmas():
    """One noise level per output (built inside tests, under the float64 fixture)."""
    return torch.tensor(SIGMA_VALUES)


def per_output_reference(model, X, y, sigma, prior_vec, temperature, diagonal=False):
    """Λ = Σ_k J_kᵀ J_k / (σ_k² T) + diag(δ) (or its diagonal) and the log marglik, brute force."""
    names = [n for n, _ in model.named_parameters()]
    f, J = ref.jacobians(model, names, X)  # (N, C, P)
    s = 1.0 / (sigma**2 * temperature)
    curvature = torch.einsum("ncp,c,ncq->pq", J, s, J)
    if diagonal:
        curvature = torch.diag(curvature.diagonal())
    precision = curvature + torch.diag(prior_vec)
    loss_k = 0.5 * ((f - y) ** 2).sum(0)
    n = X.shape[0]
    log_lik = -(loss_k * s).sum() - n * torch.log(sigma * math.sqrt(2 * math.pi)).sum()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    lml = log_lik - 0.5 * (
        torch.logdet(precision) - torch.log(prior_vec).sum() + (theta * prior_vec * theta).sum()
    )
    return precision, lml, J


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_per_output_sigma_matches_dense(float64, structure):
    model = tiny_mlp()
    X, y = tiny_data("regression")
    la = Laplace(model, "regression", "all", structure, sigma_noise=sigmas(), temperature=1.2).fit(
        loader(X, y)
    )
    prior = torch.linspace(0.5, 2.0, len(la.subset.groups))
    la.prior_precision = prior
    prior_vec = expand_prior(prior, la.subset.groups)
    precision, lml, J = per_output_reference(
        model, X, y, sigmas(), prior_vec, 1.2, diagonal=structure == "diag"
    )
    assert_close(ref.dense_precision(la), precision, what="posterior precision")
    assert la.loss.shape == (4,)
    assert_close(la.log_marginal_likelihood(), lml, rtol=1e-8, what="log marglik")
    # The GLM predictive uses the same precision.
    _, f_var = la.functional_variance(X)
    expected = torch.einsum("ncp,pq,ndq->ncd", J, torch.linalg.inv(precision), J)
    assert_close(f_var, expected, what="functional variance")


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_per_output_sigma_marglik_gradients_match_finite_differences(float64, structure):
    model = tiny_mlp()
    X, y = tiny_data("regression")
    la = Laplace(model, "regression", "all", structure, sigma_noise=sigmas()).fit(loader(X, y))
    n_groups = len(la.subset.groups)
    log_prior = torch.linspace(-0.5, 0.5, n_groups).requires_grad_(True)
    log_sigma = sigmas().log().clone().requires_grad_(True)

    def lml(lp, ls):
        return la.log_marginal_likelihood(lp.exp(), ls.exp())

    g_prior, g_sigma = torch.autograd.grad(lml(log_prior, log_sigma), (log_prior, log_sigma))
    eps = 1e-6
    lp, ls = log_prior.detach(), log_sigma.detach()
    for i in range(n_groups):
        e = torch.zeros(n_groups)
        e[i] = eps
        fd = (lml(lp + e, ls) - lml(lp - e, ls)) / (2 * eps)
        assert math.isclose(float(g_prior[i]), float(fd), rel_tol=1e-5, abs_tol=1e-7)
    for k in range(4):
        e = torch.zeros(4)
        e[k] = eps
        fd = (lml(lp, ls + e) - lml(lp, ls - e)) / (2 * eps)
        assert math.isclose(float(g_sigma[k]), float(fd), rel_tol=1e-5, abs_tol=1e-7)


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_per_output_fit_with_scalar_sigma_equals_scalar_fit(float64, structure):
    model = tiny_mlp()
    X, y = tiny_data("regression")
    split = Laplace(model, "regression", "all", structure, sigma_noise=sigmas()).fit(loader(X, y))
    split.sigma_noise = 0.7
    plain = Laplace(model, "regression", "all", structure, sigma_noise=0.7).fit(loader(X, y))
    assert_close(ref.dense_precision(split), ref.dense_precision(plain))
    assert_close(split.log_marginal_likelihood(), plain.log_marginal_likelihood(), rtol=1e-10)


def test_per_output_sigma_last_layer(float64):
    model = tiny_mlp()
    X, y = tiny_data("regression")
    la = Laplace(model, "regression", "last_layer", "full", sigma_noise=sigmas()).fit(loader(X, y))
    names = la.subset.names
    _, J = ref.jacobians(model, names, X)
    expected = torch.einsum("ncp,c,ncq->pq", J, 1 / sigmas() ** 2, J) + torch.eye(J.shape[-1])
    assert_close(ref.dense_precision(la), expected)


@pytest.mark.parametrize(
    ("structure", "curvature", "match"),
    [
        ("kron", "ggn", "needs hessian_structure 'diag' or 'full'"),
        ("lowrank", "ggn", "needs hessian_structure 'diag' or 'full'"),
        ("full", "ef", "needs curvature 'ggn'"),
    ],
)
def test_per_output_sigma_refusals(float64, structure, curvature, match):
    with pytest.raises(ValueError, match=match):
        Laplace(
            tiny_mlp(), "regression", "all", structure, curvature=curvature, sigma_noise=sigmas()
        )


def test_per_output_sigma_needs_per_output_fit(float64):
    model = tiny_mlp()
    X, y = tiny_data("regression")
    la = Laplace(model, "regression", "all", "diag").fit(loader(X, y))
    with pytest.raises(ValueError, match="refit with a per-output sigma_noise"):
        la.sigma_noise = sigmas()
    with pytest.raises(ValueError, match="sigma_noise has 3 values but the model has 4 outputs"):
        Laplace(model, "regression", "all", "diag", sigma_noise=[1.0, 2.0, 3.0]).fit(loader(X, y))
