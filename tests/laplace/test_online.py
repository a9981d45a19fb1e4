"""Online fitting (`override=False`) and a fitted posterior as the next prior (continual learning)."""

from __future__ import annotations

import pytest
import torch

from laplace_cli import Laplace
from tests import reference as ref
from tests.conftest import tiny_data, tiny_mlp
from tests.laplace.test_reference import assert_close, loader

STRUCTURES = ["diag", "kron", "full", "lowrank"]


def make(model, structure, likelihood="classification", **kw):
    if structure == "lowrank":
        kw.setdefault("rank", sum(p.numel() for p in model.parameters()))  # k = P: exact
    return Laplace(model, likelihood, "all", structure, **kw)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_three_online_fits_give_three_times_the_curvature(float64, structure):
    model = tiny_mlp()
    X, y = tiny_data("classification")
    once = make(model, structure).fit(loader(X, y))
    la = make(model, structure)
    for _ in range(3):
        la.fit(loader(X, y), override=False)
    assert la.n_data == 3 * once.n_data == 36
    assert_close(la.loss, 3 * once.loss, rtol=1e-12, what="loss")
    assert_close(la.posterior.curvature_dense(), 3 * once.posterior.curvature_dense(), rtol=1e-9)
    if structure == "kron":
        assert la.posterior.n_data == 36


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("curvature", ["ggn", "mc_fisher"])
def test_online_fit_equals_fit_on_the_union(float64, structure, curvature):
    if structure == "lowrank" and curvature == "mc_fisher":
        pytest.skip("lowrank redraws MC targets per pass; online pieces see other draws")
    model = tiny_mlp()
    X, y = tiny_data("classification", n=15)
    first, second = loader(X[:10], y[:10]), loader(X[10:], y[10:])
    kw = {"curvature": curvature, "n_mc_samples": 3}
    union = make(model, structure, **kw).fit(first + second)
    la = make(model, structure, **kw).fit(first)
    la.fit(second, override=False)
    assert la.n_data == 15
    assert_close(la.posterior.curvature_dense(), union.posterior.curvature_dense(), rtol=1e-9)
    assert_close(la.log_marginal_likelihood(), union.log_marginal_likelihood(), rtol=1e-10)


def split_tasks(likelihood="classification"):
    X, y = tiny_data(likelihood, n=16)
    return loader(X[:9], y[:9], 3), loader(X[9:], y[9:], 3), loader(X, y, 3)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_posterior_as_prior_equals_joint_fit(float64, structure, likelihood):
    """Same weights: Λ₂ = s·H₂ + Λ₁ equals the joint posterior, and the marginal likelihoods
    chain, log p(D₁) + log p(D₂ | D₁) = log p(D₁ ∪ D₂), which checks that P₀ = Λ₁."""
    model = tiny_mlp()
    task1, task2, both = split_tasks(likelihood)
    kw = (
        {"prior_precision": torch.linspace(0.5, 2.0, 4), "sigma_noise": 0.8}
        if (likelihood == "regression")
        else {"prior_precision": torch.linspace(0.5, 2.0, 4), "temperature": 0.7}
    )
    la1 = make(model, structure, likelihood, **kw).fit(task1)
    la2 = make(model, structure, likelihood, prior=la1, **kw).fit(task2)
    joint = make(model, structure, likelihood, **kw).fit(both)
    assert_close(la2.prior_mean, la1.mean)
    assert_close(ref.dense_precision(la2), ref.dense_precision(joint), rtol=1e-9)
    assert_close(la2.log_det_prior_precision, la1.log_det_posterior_precision, rtol=1e-10)
    assert_close(
        la1.log_marginal_likelihood() + la2.log_marginal_likelihood(),
        joint.log_marginal_likelihood(),
        rtol=1e-9,
        what="chained marglik",
    )
    X = torch.cat([b[0] for b in both])
    _, v2 = la2.functional_variance(X)
    _, vj = joint.functional_variance(X)
    assert_close(v2, vj, rtol=1e-8, what="functional variance")


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_posterior_prior_with_new_weights_matches_dense(float64, structure):
    """Weights move between tasks: Λ₂ = H₂(θ₂) + Λ₁ and scatter (θ₂ − θ₁)ᵀ Λ₁ (θ₂ − θ₁)."""
    model = tiny_mlp()
    task1, task2, _ = split_tasks()
    la1 = Laplace(model, "classification", "all", structure, prior_precision=0.9).fit(task1)
    model2 = tiny_mlp()
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    la2 = Laplace(model2, "classification", "all", structure, prior=la1).fit(task2)
    X2 = torch.cat([b[0] for b in task2])
    y2 = torch.cat([b[1] for b in task2])
    names = [n for n, _ in model.named_parameters()]
    H2 = ref.ggn(model2, names, X2, y2, "classification")
    if structure == "diag":
        H2 = torch.diag(H2.diagonal())
    lam1 = ref.dense_precision(la1)
    assert_close(ref.dense_precision(la2), H2 + lam1, what="posterior precision")
    delta = la2.mean - la1.mean
    assert_close(la2.scatter, delta @ lam1 @ delta, rtol=1e-10, what="scatter")
    expected = -la2.loss - 0.5 * (
        torch.logdet(H2 + lam1) - torch.logdet(lam1) + delta @ lam1 @ delta
    )
    assert_close(la2.log_marginal_likelihood(), expected, rtol=1e-10, what="marglik")


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_chain_of_three_tasks_equals_joint(float64, structure):
    model = tiny_mlp()
    X, y = tiny_data("classification", n=18)
    tasks = [loader(X[i : i + 6], y[i : i + 6]) for i in (0, 6, 12)]
    la = None
    total = 0.0
    for task in tasks:
        la = Laplace(model, "classification", "all", structure, prior=la).fit(task)
        total = total + la.log_marginal_likelihood()
    joint = Laplace(model, "classification", "all", structure).fit(loader(X, y))
    assert_close(ref.dense_precision(la), ref.dense_precision(joint), rtol=1e-9)
    assert_close(total, joint.log_marginal_likelihood(), rtol=1e-9)


@pytest.mark.parametrize("structure", ["full", "kron"])
def test_marglik_gradient_with_posterior_prior(float64, structure):
    model = tiny_mlp()
    task1, task2, _ = split_tasks()
    la1 = Laplace(model, "classification", "all", structure).fit(task1)
    la2 = Laplace(model, "classification", "all", structure, prior=la1).fit(task2)
    log_prior = torch.linspace(-0.3, 0.3, 4).requires_grad_(True)
    (grad,) = torch.autograd.grad(la2.log_marginal_likelihood(log_prior.exp()), log_prior)
    eps = 1e-6
    for i in range(4):
        e = torch.zeros(4)
        e[i] = eps
        lp = log_prior.detach()
        fd = (
            la2.log_marginal_likelihood((lp + e).exp())
            - la2.log_marginal_likelihood((lp - e).exp())
        ) / (2 * eps)
        assert abs(float(grad[i]) - float(fd)) <= 1e-5 * abs(float(fd)) + 1e-7


def test_posterior_prior_refusals(float64):
    model = tiny_mlp()
    task1, _, _ = split_tasks()
    diag = Laplace(model, "classification", "all", "diag").fit(task1)
    with pytest.raises(ValueError, match="same structure"):
        Laplace(model, "classification", "all", "full", prior=diag)
    last = Laplace(model, "classification", "last_layer", "diag").fit(task1)
    with pytest.raises(ValueError, match="same parameters"):
        Laplace(model, "classification", "all", "diag", prior=last)
    with pytest.raises(ValueError, match="not fitted"):
        Laplace(model, "classification", "all", "diag", prior=Laplace(model, "classification"))


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_posterior_prior_survives_state_round_trip(float64, structure):
    """The fixed prior curvature is part of the state, so a reloaded posterior agrees."""
    model = tiny_mlp()
    task1, task2, _ = split_tasks()
    la1 = Laplace(model, "classification", "all", structure).fit(task1)
    la2 = Laplace(model, "classification", "all", structure, prior=la1).fit(task2)
    state = {k: v.clone() for k, v in la2.posterior.state().items()}
    assert f"{structure}.prior_curvature" in state
    la3 = Laplace(model, "classification", "all", structure)
    la3.posterior.load_state(state)
    la3.loss, la3.n_data, la3.n_outputs, la3.fitted = la2.loss, la2.n_data, 4, True
    la3.prior_mean = la2.prior_mean
    assert_close(ref.dense_precision(la3), ref.dense_precision(la2))
    assert_close(la3.log_marginal_likelihood(), la2.log_marginal_likelihood(), rtol=1e-12)
