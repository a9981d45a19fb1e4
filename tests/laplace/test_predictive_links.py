"""Link approximations, generators, option validation, regression and uncertainty scores of the
predictive API, against closed forms written here independently, quadrature or long simulations
(float64, tiny models, fixed seeds). Shared cases and the brute-force oracle live in
`tests/laplace/test_predictive.py`.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from laplace_cli import BadInputError, Laplace
from laplace_cli.core.scores import mutual_information
from tests.laplace.test_predictive import (
    N_OUT,
    assert_close,
    brute_force,
    fit,
    make_case,
    skip_unavailable,
)

LIKELIHOODS = ["classification", "regression", "binary"]


# --- link approximations ----------------------------------------------------------------------


def test_probit_matches_closed_form(float64):
    for likelihood in ("classification", "binary"):
        model, X, y = make_case("mlp", likelihood)
        la = fit(model, X, y, likelihood, "all", "full")
        f, J, sigma = brute_force(la, model, X)
        var = torch.einsum("bcp,pq,bcq->bc", J, sigma, J)
        z = f / torch.sqrt(1 + math.pi / 8 * var)
        expected = torch.softmax(z, -1) if likelihood == "classification" else torch.sigmoid(z)
        assert_close(la(X, link_approx="probit"), expected, rtol=1e-10, what=likelihood)


def bridge_reference(mu: np.ndarray, cov: np.ndarray, normalize: bool) -> np.ndarray:
    """Laplace bridge (Hobbhahn et al. 2022), one row at a time in numpy.

    The Gaussian over logits is conditioned on Σ_k f_k = 0 (softmax is shift invariant):
    μ' = μ − Σ1 (1ᵀμ)/(1ᵀΣ1), Σ' = Σ − Σ11ᵀΣ/(1ᵀΣ1). Then α_k = (1 − 2/K + e^{μ'_k}/K² Σ_l
    e^{−μ'_l}) / Σ'_kk and the predictive is the Dirichlet mean α / Σα. The normalised variant
    first divides μ' by √s and the variances by s, s = mean_k Σ'_kk / √(K/2).
    """
    out = []
    for m, S in zip(mu, cov):
        k = len(m)
        one = np.ones(k)
        s1 = S @ one
        m = m - s1 * (one @ m) / (one @ s1)
        S = S - np.outer(s1, s1) / (one @ s1)
        v = np.diag(S).copy()
        if normalize:
            s = v.mean() / math.sqrt(k / 2)
            m, v = m / math.sqrt(s), v / s
        alpha = (1 - 2 / k + np.exp(m) / k**2 * np.exp(-m).sum()) / v
        out.append(alpha / alpha.sum())
    return np.stack(out)


@pytest.mark.parametrize("link_approx", ["bridge", "bridge_norm"])
def test_bridge_matches_independent_formula(float64, link_approx):
    model, X, y = make_case("mlp", "classification")
    la = fit(model, X, y, "classification", "all", "kron")
    f, J, sigma = brute_force(la, model, X)
    cov = torch.einsum("bcp,pq,bdq->bcd", J, sigma, J)
    expected = bridge_reference(f.numpy(), cov.numpy(), link_approx == "bridge_norm")
    assert_close(la(X, link_approx=link_approx), torch.from_numpy(expected), rtol=1e-8)


def exact_softmax_expectation(mu: torch.Tensor, cov: torch.Tensor, n: int = 1_000_000):
    """E[softmax(f)], f ~ N(μ, Σ), by a long simulation with torch.distributions (seed 1234)."""
    torch.manual_seed(1234)
    dist = torch.distributions.MultivariateNormal(mu, covariance_matrix=cov)
    total = torch.zeros_like(mu)
    chunk = 200_000
    for _ in range(n // chunk):
        total += torch.softmax(dist.sample((chunk,)), -1).sum(0)
    return total / n


def test_mc_link_converges_to_exact_expectation(float64):
    model, X, y = make_case("mlp", "classification")
    la = fit(model, X, y, "classification", "all", "kron", prior_precision=0.3)
    f_mu, f_var = la.functional_variance(X)
    exact = exact_softmax_expectation(f_mu, f_var)
    probit = la(X, link_approx="probit")
    errors = []
    for n in (10, 1_000, 100_000):
        err = [
            (
                la(X, link_approx="mc", n_samples=n, generator=torch.Generator().manual_seed(s))
                - exact
            )
            .abs()
            .mean()
            for s in range(3)
        ]
        errors.append(float(sum(err) / 3))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 1e-3, errors
    # The probabilities really differ from the MAP softmax and from probit: the test has teeth.
    assert float((exact - torch.softmax(f_mu, -1)).abs().max()) > 1e-2
    assert float((probit - exact).abs().max()) > 10 * errors[2]


def test_binary_mc_matches_quadrature(float64):
    """E[σ(f)], f ~ N(μ, s²): Gauss-Hermite quadrature with 80 nodes is exact to ~1e-12."""
    model, X, y = make_case("mlp", "binary")
    la = fit(model, X, y, "binary", "all", "diag", prior_precision=0.3)
    f_mu, f_var = la.functional_variance(X)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    mu, sd = (
        f_mu.numpy()[..., None],
        np.sqrt(np.diagonal(f_var.numpy(), axis1=1, axis2=2))[..., None],
    )
    exact = torch.from_numpy((weights / (1 + np.exp(-(mu + sd * nodes)))).sum(-1) / weights.sum())
    errors = []
    for n in (10, 1_000, 100_000):
        p = la(X, link_approx="mc", n_samples=n, generator=torch.Generator().manual_seed(0))
        errors.append(float((p - exact).abs().mean()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 2e-3, errors


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_classification_outputs_sum_to_one(float64, structure):
    model, X, y = make_case("cnn", "classification")
    la = fit(model, X, y, "classification", "all", structure)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    outputs = {
        f"glm-{link}": la(X, link_approx=link, n_samples=50, generator=gen())
        for link in ("probit", "bridge", "bridge_norm", "mc")
    }
    outputs["glm-mc-diagonal"] = la(X, link_approx="mc", diagonal_output=True, generator=gen())
    outputs["nn-mc"] = la(X, pred_type="nn", link_approx="mc", n_samples=20, generator=gen())
    outputs["uncertainty"] = la.uncertainty(X, n_samples=20, generator=gen())["probs"]
    for name, p in outputs.items():
        assert p.shape == (len(X), N_OUT), name
        assert bool(((p >= 0) & (p <= 1)).all()), name
        assert_close(p.sum(-1), torch.ones(len(X)), rtol=1e-12, what=name)
    samples = la.predictive_samples(X, n_samples=5, generator=gen())
    assert_close(samples.sum(-1), torch.ones(5, len(X)), rtol=1e-12, what="predictive_samples")


# --- generators --------------------------------------------------------------------------------


def stochastic_paths(la: Laplace, X: torch.Tensor):
    """Every random path of the predictive API, as functions of a generator."""
    paths = {
        "functional_samples-glm": lambda g: la.functional_samples(X, "glm", 7, generator=g),
        "functional_samples-nn": lambda g: la.functional_samples(X, "nn", 7, generator=g),
        "predictive_samples-glm": lambda g: la.predictive_samples(X, "glm", 7, generator=g),
        "predictive_samples-nn": lambda g: la.predictive_samples(X, "nn", 7, generator=g),
    }
    if la.likelihood.value == "regression":
        paths["call-nn"] = lambda g: torch.cat(
            la(X, pred_type="nn", n_samples=7, diagonal_output=True, generator=g)
        )
        paths["regression_predictive-nn"] = lambda g: (
            la.regression_predictive(X, "nn", 7, generator=g).epistemic_var
        )
    else:
        paths["call-glm-mc"] = lambda g: la(X, link_approx="mc", n_samples=7, generator=g)
        paths["call-nn"] = lambda g: la(
            X, pred_type="nn", link_approx="mc", n_samples=7, generator=g
        )
        paths["uncertainty-glm"] = lambda g: la.uncertainty(X, n_samples=7, generator=g)[
            "mutual_info"
        ]
        paths["uncertainty-nn"] = lambda g: la.uncertainty(
            X, pred_type="nn", link_approx="mc", n_samples=7, generator=g
        )["mutual_info"]
    return paths


GENERATOR_CASES = [
    ("all", "diag"),
    ("all", "kron"),
    ("all", "full"),
    ("all", "lowrank"),
    ("last_layer", "kron"),
    ("last_layer", "full"),
    ("subnetwork", "diag"),
]


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize(
    "subset, structure", GENERATOR_CASES, ids=[f"{a}-{b}" for a, b in GENERATOR_CASES]
)
def test_generator_is_honoured_on_every_stochastic_path(float64, likelihood, subset, structure):
    skip_unavailable(subset, structure)
    model, X, y = make_case("mlp", likelihood)
    la = fit(model, X, y, likelihood, subset, structure)
    for name, path in stochastic_paths(la, X).items():
        torch.manual_seed(1)
        a = path(torch.Generator().manual_seed(42))
        torch.manual_seed(2)  # the global RNG must not matter
        b = path(torch.Generator().manual_seed(42))
        c = path(torch.Generator().manual_seed(43))
        assert torch.equal(a, b), f"{name}: same seed, different output"
        assert not torch.allclose(a, c), f"{name}: different seeds, same output"


# --- option validation -------------------------------------------------------------------------


BAD_OPTIONS = [
    ("classification", {"pred_type": "nn", "link_approx": "probit"}, "must be 'mc'"),
    ("classification", {"pred_type": "nn", "link_approx": "bridge"}, "must be 'mc'"),
    ("binary", {"pred_type": "nn", "link_approx": "probit"}, "must be 'mc'"),
    ("binary", {"link_approx": "bridge"}, "softmax classification"),
    ("binary", {"link_approx": "bridge_norm"}, "softmax classification"),
    ("classification", {"joint": True}, "regression only"),
    ("regression", {"pred_type": "nn", "joint": True}, "pred_type 'glm'"),
    ("classification", {"link_approx": "mc", "n_samples": 0}, "n_samples"),
    ("classification", {"pred_type": "nn", "link_approx": "mc", "n_samples": -1}, "n_samples"),
    ("regression", {"pred_type": "nn", "n_samples": 1}, "n_samples ≥ 2"),
    ("classification", {"pred_type": "laplace"}, "pred_type: expected one of glm, nn"),
    ("classification", {"link_approx": "logit"}, "link_approx: expected one of"),
]


@pytest.mark.parametrize(
    "likelihood, options, message", BAD_OPTIONS, ids=[f"{o}" for _, o, _ in BAD_OPTIONS]
)
def test_bad_combinations_raise(float64, likelihood, options, message):
    model, X, y = make_case("mlp", likelihood)
    la = fit(model, X, y, likelihood, "last_layer", "diag")
    with pytest.raises(BadInputError, match=message):
        la(X, **options)


def test_other_bad_calls_raise(float64):
    model, X, y = make_case("mlp", "classification")
    la = fit(model, X, y, "classification", "last_layer", "diag")
    with pytest.raises(BadInputError, match="regression likelihood"):
        la.regression_predictive(X)
    with pytest.raises(BadInputError, match="n_samples"):
        la.functional_samples(X, n_samples=0)
    with pytest.raises(BadInputError, match="n_samples"):
        la.uncertainty(X, pred_type="nn", link_approx="mc", n_samples=1)
    with pytest.raises(BadInputError, match="torch.Generator"):
        la(X, link_approx="mc", generator=0)
    with pytest.raises(BadInputError, match="not fitted"):
        Laplace(model, "classification", "last_layer", "diag")(X)


# --- regression ----------------------------------------------------------------------------------


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_regression_mean_and_variance_with_and_without_noise(float64, structure):
    model, X, y = make_case("seq", "regression")
    la = fit(model, X, y, "regression", "all", structure, sigma_noise=0.6)
    f, J, sigma = brute_force(la, model, X)
    epistemic = torch.einsum("bcp,pq,bcq->bc", J, sigma, J)
    pred = la.regression_predictive(X)
    assert_close(pred.mean, f, what="mean")
    assert_close(pred.epistemic_var, epistemic, what="epistemic")
    assert_close(pred.aleatoric_var, torch.full_like(f, 0.36), rtol=1e-12, what="aleatoric")
    assert_close(pred.total_var, epistemic + 0.36, what="total")
    # la(x) keeps laplace-torch's convention: the covariance without observation noise.
    f_mu, f_var = la(X)
    assert_close(f_var.diagonal(dim1=-2, dim2=-1), epistemic, what="la(x) has no noise")
    scores = la.uncertainty(X, level=0.9)
    z = NormalDist().inv_cdf(0.95)
    assert_close(scores["var"], epistemic, what="uncertainty var")
    assert_close(scores["var_total"], epistemic + 0.36, what="uncertainty var_total")
    assert_close(scores["lower"], f - z * (epistemic + 0.36).sqrt(), what="lower")
    assert_close(scores["upper"], f + z * (epistemic + 0.36).sqrt(), what="upper")


def test_nn_sampling_equals_glm_for_a_head_linear_in_its_weights(float64):
    """Last-layer Laplace is exactly linear in its weights: nn sampling and the GLM agree up to
    Monte Carlo error (standard errors: mean √(v/S), variance ≈ v√(2/S))."""
    model, X, y = make_case("mlp", "regression")
    la = fit(model, X, y, "regression", "last_layer", "full", prior_precision=0.5)
    glm = la.regression_predictive(X)
    n = 40_000
    nn_pred = la.regression_predictive(X, "nn", n, generator=torch.Generator().manual_seed(0))
    v = glm.epistemic_var
    assert bool(((nn_pred.mean - glm.mean).abs() <= 5 * (v / n).sqrt()).all())
    assert bool(((nn_pred.epistemic_var - v).abs() <= 5 * v * math.sqrt(2 / n)).all())
    assert_close(nn_pred.aleatoric_var, glm.aleatoric_var, rtol=1e-12)


def test_nn_sampling_close_to_glm_when_the_network_is_nearly_linear(float64):
    """All weights with a tight posterior (large prior precision): the network is nearly linear
    over the posterior's spread, so nn and GLM variances agree to a few percent."""
    model, X, y = make_case("mlp", "regression")
    la = fit(model, X, y, "regression", "all", "kron", prior_precision=200.0)
    glm = la.regression_predictive(X)
    nn_pred = la.regression_predictive(X, "nn", 5_000, generator=torch.Generator().manual_seed(0))
    sd = glm.epistemic_var.sqrt()
    rel = (nn_pred.epistemic_var - glm.epistemic_var).abs() / glm.epistemic_var
    assert float(rel.max()) < 0.1, rel  # Monte Carlo alone: 5·√(2/S) = 0.1
    assert float(((nn_pred.mean - glm.mean).abs() / sd).max()) < 0.1


def test_regression_nn_call_returns_unbiased_sample_covariance(float64):
    model, X, y = make_case("mlp", "regression")
    la = fit(model, X, y, "regression", "all", "diag")
    samples = la.functional_samples(X, "nn", 9, generator=torch.Generator().manual_seed(5))
    mean, var = la(
        X,
        pred_type="nn",
        n_samples=9,
        diagonal_output=True,
        generator=torch.Generator().manual_seed(5),
    )
    assert_close(mean, samples.mean(0), rtol=1e-12)
    assert_close(var, samples.var(0), rtol=1e-12)


def test_last_layer_nn_samples_match_a_loop_over_sampled_networks(float64):
    """The vectorised last-layer head against the model run with each sampled weight vector."""
    model, X, y = make_case("seq", "classification")
    la = fit(model, X, y, "classification", "last_layer", "kron")
    f = la.functional_samples(X, "nn", 5, generator=torch.Generator().manual_seed(3))
    thetas = la.sample(5, generator=torch.Generator().manual_seed(3))
    names = la.subset.names
    params = dict(model.named_parameters())
    for s, theta in enumerate(thetas):
        w = {
            names[0]: theta[: params[names[0]].numel()].reshape(params[names[0]].shape),
            names[1]: theta[params[names[0]].numel() :],
        }
        expected = torch.func.functional_call(model, w, (X,))
        assert_close(f[s], expected, rtol=1e-12, what=f"sample {s}")


# --- uncertainty scores --------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["classification", "binary"])
def test_uncertainty_is_consistent_with_the_predictive(float64, likelihood):
    model, X, y = make_case("cnn", likelihood)
    la = fit(model, X, y, likelihood, "all", "kron")
    out = la.uncertainty(X, n_samples=30, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"probs", "pred", "entropy", "max_prob", "var", "mutual_info"}
    assert_close(out["probs"], la(X, link_approx="probit"), rtol=1e-12, what="probs")
    assert_close(out["var"], la.functional_variance(X)[1].diagonal(dim1=-2, dim2=-1), rtol=1e-12)
    # Mutual information from the GLM samples that la.predictive_samples draws with that seed.
    diag = likelihood == "binary"
    samples = la.predictive_samples(
        X, "glm", 30, generator=torch.Generator().manual_seed(0), diagonal_output=diag
    )
    binary = likelihood == "binary"
    assert_close(out["mutual_info"], mutual_information(samples, binary=binary), rtol=1e-12)
    mc = la.uncertainty(
        X, link_approx="mc", n_samples=30, generator=torch.Generator().manual_seed(0)
    )
    assert_close(mc["probs"], samples.mean(0), rtol=1e-12, what="mc probs")
    assert bool((out["mutual_info"] >= 0).all())
    if likelihood == "classification":
        assert torch.equal(out["pred"], out["probs"].argmax(-1))
        assert bool((out["entropy"] >= out["mutual_info"] - 1e-12).all())
    none = la.uncertainty(X, n_samples=0)
    assert "mutual_info" not in none
    nn_out = la.uncertainty(X, "nn", "mc", 30, generator=torch.Generator().manual_seed(1))
    logits = la.functional_samples(X, "nn", 30, generator=torch.Generator().manual_seed(1))
    assert_close(nn_out["var"], logits.var(0), rtol=1e-12, what="nn logit variance")
