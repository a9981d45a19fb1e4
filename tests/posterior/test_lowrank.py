"""Low-rank posterior: matrix-free top-k eigenpairs against the dense GGN, and k = P against full."""

from __future__ import annotations

import math

import pytest
import torch

from laplace_cli import Laplace
from laplace_cli.posterior import expand_prior
from laplace_cli.posterior.lowrank import top_eigenpairs
from tests import reference as ref
from tests.conftest import tiny_data, tiny_mlp
from tests.laplace.test_reference import assert_close, loader

LIKELIHOODS = ["classification", "regression", "binary"]


def names_of(model):
    return [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_recovers_top_k_spectrum_of_dense_ggn(float64, likelihood):
    """P = 204, k = 6: eigenvalues to 1e-8 and the eigenspace to 1e-6 of the brute-force GGN."""
    model = tiny_mlp(n_in=5, hidden=20, n_out=4)
    X, y = tiny_data(likelihood, n=30, n_in=5)
    dense = ref.ggn(model, names_of(model), X, y, likelihood)
    vals, vecs = torch.linalg.eigh(dense)
    vals, vecs = vals.flip(0), vecs.flip(1)
    k = 6
    la = Laplace(model, likelihood, "all", "lowrank", rank=k).fit(loader(X, y, bs=8))
    U, lam = la.posterior.U, la.posterior.eigvals
    assert U.shape == (204, k) and lam.shape == (k,)
    assert_close(lam, vals[:k], rtol=1e-8, what="top eigenvalues")
    assert_close(U.T @ U, torch.eye(k), rtol=1e-10, what="orthonormal U")
    proj = U @ U.T - vecs[:, :k] @ vecs[:, :k].T
    assert float(proj.abs().max()) < 1e-6
    # The posterior state has the documented names.
    assert set(la.posterior.state()) == {"lowrank.U", "lowrank.eigvals"}


def test_eigensolver_on_a_known_operator(float64):
    """A synthetic PSD operator with a slowly decaying spectrum, applied only as a matmat."""
    g = torch.Generator().manual_seed(0)
    n = 300
    Q = torch.linalg.qr(torch.randn(n, n, generator=g)).Q
    spectrum = 1.0 / torch.arange(1, n + 1) ** 1.5
    A = (Q * spectrum) @ Q.T
    calls = []

    def matmat(V):
        calls.append(V.shape[1])
        return A @ V

    lam, U = top_eigenpairs(
        matmat, n, 8, dtype=torch.float64, device=torch.device("cpu"), generator=g, n_iter=6
    )
    assert_close(lam, spectrum[:8], rtol=1e-6, what="eigenvalues")
    assert len(calls) == 7  # n_iter + 1 passes over the "data"
    # Low-rank operator: the Krylov space is exhausted early and the result is exact.
    B = (Q[:, :5] * spectrum[:5]) @ Q[:, :5].T
    lam, U = top_eigenpairs(
        lambda V: B @ V, n, 8, dtype=torch.float64, device=torch.device("cpu"), generator=g
    )
    assert_close(lam[:5], spectrum[:5], rtol=1e-10)
    assert float(lam[5:].abs().max()) < 1e-12


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_full_rank_equals_full(float64, likelihood, subset):
    model = tiny_mlp()
    X, y = tiny_data(likelihood)
    sigma = 0.7 if likelihood == "regression" else 1.0
    full = Laplace(model, likelihood, subset, "full", sigma_noise=sigma).fit(loader(X, y))
    P = full.n_params
    lr = Laplace(model, likelihood, subset, "lowrank", rank=P, sigma_noise=sigma).fit(loader(X, y))
    assert_close(lr.posterior.curvature_dense(), full.posterior.curvature_dense(), rtol=1e-10)
    g = torch.Generator().manual_seed(2)
    for prior in (
        torch.tensor([0.9]),
        torch.rand(len(full.subset.groups), generator=g) + 0.5,
        torch.rand(P, generator=g) + 0.5,
    ):
        full.prior_precision = prior
        lr.prior_precision = prior
        assert_close(lr.log_marginal_likelihood(), full.log_marginal_likelihood(), rtol=1e-10)
        assert_close(lr.posterior_covariance, full.posterior_covariance, rtol=1e-8)
        assert_close(
            lr.posterior.diag_precision(prior, lr.curvature_scale()),
            full.posterior.diag_precision(prior, full.curvature_scale()),
            rtol=1e-10,
        )
        _, v_lr = lr.functional_variance(X)
        _, v_full = full.functional_variance(X)
        assert_close(v_lr, v_full, rtol=1e-8, what="functional variance")


@pytest.mark.parametrize("prior_shape", ["scalar", "layerwise", "diag"])
def test_closed_forms_match_dense_algebra(float64, prior_shape):
    """k < P: log det (determinant lemma), covariance and J Σ Jᵀ (Woodbury), samples."""
    model = tiny_mlp()
    X, y = tiny_data("classification")
    la = Laplace(model, "classification", "all", "lowrank", rank=7, temperature=0.6)
    la.fit(loader(X, y))
    P = la.n_params
    g = torch.Generator().manual_seed(5)
    n = {"scalar": 1, "layerwise": len(la.subset.groups), "diag": P}[prior_shape]
    la.prior_precision = torch.rand(n, generator=g) + 0.3
    s = 1 / 0.6
    U, lam = la.posterior.U, la.posterior.eigvals
    dense = s * (U * lam) @ U.T + torch.diag(expand_prior(la.prior_precision, la.subset.groups))
    cov = torch.linalg.inv(dense)
    assert_close(la.posterior_precision, dense, rtol=1e-12)
    assert_close(la.log_det_posterior_precision, torch.logdet(dense), rtol=1e-10)
    assert_close(la.posterior_covariance, cov, rtol=1e-9)
    _, J = ref.jacobians(model, names_of(model), X)
    _, f_var = la.functional_variance(X)
    assert_close(f_var, torch.einsum("ncp,pq,ndq->ncd", J, cov, J), rtol=1e-9)
    # Samples are a linear map of standard normals z = M ε: recover M from P draws (same
    # generator state) and check M Mᵀ = Λ⁻¹ exactly, rather than estimating a covariance.
    eps = torch.randn(P, P, generator=torch.Generator().manual_seed(9))
    z = la.sample(P, generator=torch.Generator().manual_seed(9)) - la.mean
    M = torch.linalg.solve(eps, z).T
    assert_close(M @ M.T, cov, rtol=1e-8, what="sample covariance")


def test_marglik_gradients_match_finite_differences(float64):
    model = tiny_mlp()
    X, y = tiny_data("regression")
    la = Laplace(model, "regression", "all", "lowrank", rank=10).fit(loader(X, y))
    n_groups = len(la.subset.groups)

    def lml(log_prior, log_sigma):
        return la.log_marginal_likelihood(log_prior.exp(), log_sigma.exp())

    log_prior = torch.linspace(-0.5, 0.5, n_groups).requires_grad_(True)
    log_sigma = torch.tensor([-0.2], requires_grad=True)
    g_prior, g_sigma = torch.autograd.grad(lml(log_prior, log_sigma), (log_prior, log_sigma))
    eps = 1e-6
    lp, ls = log_prior.detach(), log_sigma.detach()
    for i in range(n_groups):
        e = torch.zeros(n_groups)
        e[i] = eps
        fd = (lml(lp + e, ls) - lml(lp - e, ls)) / (2 * eps)
        assert math.isclose(float(g_prior[i]), float(fd), rel_tol=1e-5, abs_tol=1e-7)
    fd = (lml(lp, ls + eps) - lml(lp, ls - eps)) / (2 * eps)
    assert math.isclose(float(g_sigma[0]), float(fd), rel_tol=1e-5, abs_tol=1e-7)
    # And the value is the dense formula with H = U diag(λ) Uᵀ.
    prior_vec = expand_prior(lp.exp(), la.subset.groups)
    expected = ref.dense_log_marglik(
        la.loss,
        la.posterior.curvature_dense(),
        la.mean,
        prior_vec,
        "regression",
        la.n_data,
        4,
        ls.exp()[0],
    )
    assert_close(lml(lp, ls), expected, rtol=1e-10)


def test_lowrank_needs_a_reiterable_loader(float64):
    model = tiny_mlp()
    X, y = tiny_data("classification")
    la = Laplace(model, "classification", "all", "lowrank", rank=3)
    with pytest.raises(ValueError, match="re-iterable loader"):
        la.fit(iter(loader(X, y)))
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        Laplace(model, "classification", "all", "lowrank", rank=0)


def test_lowrank_with_mc_fisher_and_ef_uses_the_same_operator_in_every_pass(float64):
    """k = P with the EF / MC Fisher equals full with the same curvature and seed."""
    model = tiny_mlp()
    X, y = tiny_data("classification")
    for curvature in ("ef", "mc_fisher"):
        kw = {"curvature": curvature, "n_mc_samples": 2, "seed": 3}
        full = Laplace(model, "classification", "all", "full", **kw).fit(loader(X, y))
        lr = Laplace(model, "classification", "all", "lowrank", rank=full.n_params, **kw)
        lr.fit(loader(X, y))
        assert_close(lr.posterior.curvature_dense(), full.posterior.curvature_dense(), rtol=1e-10)
