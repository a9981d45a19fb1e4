"""Last-layer predictive variances from the head's features (posterior/feature_variance.py)
against the dense reference diag(J Σ Jᵀ): J by `torch.func.jacrev`, Σ the inverse of the dense
posterior precision, float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from laplace_cli import Laplace
from laplace_cli.laplace.prediction import PredictiveMixin
from laplace_cli.posterior.feature_variance import FeatureFormCache, head_shape
from laplace_cli.subsets.factors import ParamGroup
from tests.reference import dense_precision, jacobians


class _Net(nn.Module):
    def __init__(self, n_out: int, bias: bool = True) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
        self.head = nn.Linear(7, n_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _data(likelihood: str, n_out: int, n: int = 30):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 5, generator=g, dtype=torch.float64)
    if likelihood == "classification":
        y = torch.randint(0, n_out, (n,), generator=g)
    else:
        y = torch.randn(n, n_out, generator=g, dtype=torch.float64)
    return X, [(X[i : i + 10], y[i : i + 10]) for i in range(0, n, 10)]


def _fit(structure: str, likelihood: str = "classification", n_out: int = 4, bias=True, **kw):
    X, loader = _data(likelihood, n_out)
    model = _Net(n_out, bias).double()
    la = Laplace(model, likelihood, "last_layer", structure, **kw).fit(loader)
    return la, model, X


def _dense_variance_diag(la, model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    _, J = jacobians(model, names, X)  # (N, C, P): weight row-major, then bias
    Sigma = torch.linalg.inv(dense_precision(la))
    return torch.einsum("ncp,pq,ncq->nc", J, Sigma, J)


@pytest.mark.parametrize("structure", ["kron", "diag"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("bias", [True, False])
def test_variances_equal_dense_reference(structure, likelihood, bias):
    la, model, X = _fit(structure, likelihood, bias=bias, prior_precision=0.8)
    if likelihood == "regression":
        la.sigma_noise = 0.7  # the curvature scale 1/σ² enters M and v
    assert la.variance_from_features()
    f_mu, var = la.functional_variance_diag(X)
    assert torch.allclose(f_mu, model(X).detach(), rtol=1e-12, atol=1e-12)
    ref = _dense_variance_diag(la, model, X)
    assert torch.allclose(var, ref, rtol=1e-10, atol=1e-13)
    # ... and the generic layer-factor path's full covariance
    _, cov = la.functional_variance_at(X)
    assert torch.allclose(var, cov.diagonal(dim1=-2, dim2=-1), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("structure", ["kron", "diag"])
def test_per_layer_and_per_parameter_priors(structure):
    la, model, X = _fit(structure)
    la.prior_precision = torch.tensor([0.3, 2.0], dtype=torch.float64)  # weight, bias
    ref = _dense_variance_diag(la, model, X)
    assert torch.allclose(la.functional_variance_diag(X)[1], ref, rtol=1e-10, atol=1e-13)
    if structure == "diag":
        g = torch.Generator().manual_seed(5)
        la.prior_precision = torch.rand(la.n_params, generator=g, dtype=torch.float64) + 0.1
        ref = _dense_variance_diag(la, model, X)
        assert torch.allclose(la.functional_variance_diag(X)[1], ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("structure", ["kron", "diag"])
def test_probit_prediction_uses_features_and_matches_reference(monkeypatch, structure):
    la, model, X = _fit(structure, prior_precision=0.5)

    def generic(*a, **k):
        raise AssertionError("the generic layer-factor path ran")

    monkeypatch.setattr(PredictiveMixin, "_variance_rows", generic)
    probs = la(X, pred_type="glm", link_approx="probit")
    var = _dense_variance_diag(la, model, X)
    f = model(X).detach()
    ref = torch.softmax(f / torch.sqrt(1 + torch.pi / 8 * var), dim=-1)
    assert torch.allclose(probs, ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("structure", ["kron", "diag"])
def test_regression_diagonal_outputs_use_features(monkeypatch, structure):
    la, model, X = _fit(structure, "regression", n_out=3, prior_precision=0.5, sigma_noise=0.8)
    ref = _dense_variance_diag(la, model, X)

    def generic(*a, **k):
        raise AssertionError("the full (B, C, C) covariance was built")

    monkeypatch.setattr(PredictiveMixin, "functional_variance_at", generic)
    f_mu, f_var = la(X, pred_type="glm", diagonal_output=True)
    assert f_var.shape == (len(X), 3)
    assert torch.allclose(f_var, ref, rtol=1e-10, atol=1e-13)
    pred = la.regression_predictive(X)
    assert torch.allclose(pred.epistemic_var, ref, rtol=1e-10, atol=1e-13)
    assert torch.allclose(pred.total_var, ref + 0.8**2, rtol=1e-10, atol=1e-13)
    assert torch.allclose(pred.mean, model(X).detach(), rtol=1e-12, atol=1e-12)


def test_full_and_per_output_noise_take_the_generic_path():
    la, _, _ = _fit("full")
    assert not la.variance_from_features()
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)  # H kept per output
    la, _, X = _fit("diag", "regression", n_out=3, sigma_noise=sigma)
    assert la.posterior.split_outputs == 3
    assert not la.variance_from_features()
    f_mu, var = la.functional_variance_diag(X)  # the generic path still answers
    _, cov = la.functional_variance_at(X)
    assert torch.allclose(var, cov.diagonal(dim1=-2, dim2=-1))


def test_head_shape_recognises_only_a_linear_head():
    w = ParamGroup("w", (3, 4), "weight")
    assert head_shape([w]) == (3, 4)
    assert head_shape([w, ParamGroup("b", (3,), "bias")]) == (3, 4)
    assert head_shape([w, ParamGroup("b", (4,), "bias")]) is None
    assert head_shape([ParamGroup("c", (3, 4, 2, 2), "weight")]) is None
    assert head_shape([w, ParamGroup("b", (3,), "bias"), w]) is None
    assert head_shape([ParamGroup("n", (3,), "other")]) is None


@pytest.mark.parametrize("structure", ["kron", "diag"])
def test_form_is_cached_per_prior_scale_and_curvature(structure):
    la, model, X = _fit(structure, prior_precision=1.0)
    post = la.posterior
    get = lambda: post.feature_variance_form(la.prior_precision, la.curvature_scale())  # noqa: E731
    first = get()
    assert get() is first  # same values: reused
    # a new prior value, an in-place change of the prior tensor, a new temperature
    la.prior_precision = 3.0
    assert get() is not first
    assert torch.allclose(la.functional_variance_diag(X)[1], _dense_variance_diag(la, model, X))
    la.prior_precision.mul_(0.5)
    assert torch.allclose(la.functional_variance_diag(X)[1], _dense_variance_diag(la, model, X))
    la.temperature = 2.0
    assert torch.allclose(la.functional_variance_diag(X)[1], _dense_variance_diag(la, model, X))
    # a new curvature (a refit on other data) is seen through the curvature's tensors
    before = la.functional_variance_diag(X)[1]
    g = torch.Generator().manual_seed(9)
    X2 = torch.randn(20, 5, generator=g, dtype=torch.float64)
    la.fit([(X2, torch.randint(0, 4, (20,), generator=g))])
    after = la.functional_variance_diag(X)[1]
    assert not torch.allclose(before, after)
    assert torch.allclose(after, _dense_variance_diag(la, model, X), rtol=1e-10, atol=1e-13)


def test_in_place_change_of_the_diagonal_curvature_is_seen():
    la, model, X = _fit("diag")
    before = la.functional_variance_diag(X)[1]
    la.posterior.h.mul_(4.0)  # in place: same tensor, new version
    after = la.functional_variance_diag(X)[1]
    assert not torch.allclose(before, after)
    assert torch.allclose(after, _dense_variance_diag(la, model, X), rtol=1e-10, atol=1e-13)


def test_prior_that_requires_grad_is_differentiated_not_cached():
    la, model, X = _fit("kron")
    prior = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    form = la.posterior.feature_variance_form(prior, la.curvature_scale())
    var = form.variance_diag(la.subset.features(X)[0])
    (grad,) = torch.autograd.grad(var.sum(), prior)
    # d/dδ Σ diag(J (H + δI)⁻¹ Jᵀ) = −Σ diag(J Σ² Jᵀ), against the dense matrices
    names = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    _, J = jacobians(model, names, X)
    la.prior_precision = 0.9
    Sigma = torch.linalg.inv(dense_precision(la))
    ref = -torch.einsum("ncp,pq,ncq->", J, Sigma @ Sigma, J)
    assert torch.allclose(grad, ref, rtol=1e-8)
    assert la.posterior.feature_variance_form(prior.detach(), la.curvature_scale()) is not form


def test_form_built_in_inference_mode_is_not_reused_under_autograd():
    la, model, X = _fit("kron", enable_backprop=True)
    la.posterior.eigendecomposition()  # outside: the curvature's tensors are ordinary ones
    with torch.inference_mode():
        la(X)  # builds the form from them, as inference tensors
    x = X.clone().requires_grad_(True)
    probs = la(x, pred_type="glm", link_approx="probit")
    (g,) = torch.autograd.grad(probs[:, 0].sum(), x)  # would fail on an inference tensor
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_inference_tensors_in_the_curvature_are_not_cached():
    la, _, X = _fit("kron")
    with torch.inference_mode():  # the eigendecomposition itself made in inference mode
        v1 = la.functional_variance_diag(X)[1]
        v2 = la.functional_variance_diag(X)[1]
    assert torch.equal(v1, v2)


def test_cache_rejects_other_state_objects():
    cache = FeatureFormCache()
    built = []

    def build():
        from laplace_cli.posterior.feature_variance import FeatureVarianceForm

        built.append(1)
        return FeatureVarianceForm(None, torch.ones(2, 3), None)

    t = torch.ones(3)
    one = torch.tensor(1.0)
    cache.get(one, one, [t], build)
    cache.get(one.clone(), one.clone(), [t], build)
    assert len(built) == 1
    cache.get(one, one, [t.clone()], build)  # equal values, another tensor
    cache.get(one, torch.tensor(1.0, dtype=torch.float64), [t.clone()], build)
    assert len(built) == 3


def _generic_routes(m, la) -> None:
    """Switch `la`'s last-layer shortcuts off: the layer-factor path, the (B, C, C) covariance
    and its Cholesky factors wherever draws keep correlations."""
    for name in ("variance_from_features", "output_covariance_is_diagonal", "draws_from_features"):
        m.setattr(la, name, lambda: False)


def _uncertainty_both_ways(monkeypatch, la, X, **kw):
    """la.uncertainty(X, **kw) as it runs, and with the last-layer shortcuts switched off,
    each with a generator seeded alike; returns how often the fast run built the (B, C, C)
    covariance."""
    calls = []
    full_path = PredictiveMixin.functional_variance_at

    def spy(self, x):
        calls.append(1)
        return full_path(self, x)

    monkeypatch.setattr(PredictiveMixin, "functional_variance_at", spy)
    fast = la.uncertainty(X, generator=torch.Generator().manual_seed(4), **kw)
    fast_calls = len(calls)
    with monkeypatch.context() as m:
        _generic_routes(m, la)
        full = la.uncertainty(X, generator=torch.Generator().manual_seed(4), **kw)
    for key, ref in full.items():
        assert torch.allclose(fast[key].double(), ref.double(), rtol=1e-10, atol=1e-12), key
    return fast_calls


@pytest.mark.parametrize("likelihood", ["classification", "binary"])
def test_uncertainty_of_a_diagonal_covariance_skips_the_full_matrix(monkeypatch, likelihood):
    la, model, X = _fit("diag", "classification", prior_precision=0.3)
    if likelihood == "binary":
        y = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) > 0
        la = Laplace(model, "binary", "last_layer", "diag", prior_precision=0.3)
        la.fit([(X[i : i + 10], y[i : i + 10].double()) for i in range(0, 30, 10)])
    assert la.output_covariance_is_diagonal()
    # probit and mutual information from 50 draws: the same numbers without any (C, C) matrix
    assert _uncertainty_both_ways(monkeypatch, la, X, n_samples=50) == 0
    assert _uncertainty_both_ways(monkeypatch, la, X, link_approx="mc", n_samples=50) == 0
    if likelihood == "classification":  # the bridge reads the full matrix
        assert _uncertainty_both_ways(monkeypatch, la, X, link_approx="bridge", n_samples=0) == 1


def test_uncertainty_of_kron_takes_the_diagonal_without_draws(monkeypatch):
    la, _, X = _fit("kron", prior_precision=0.3)
    assert not la.output_covariance_is_diagonal() and la.draws_from_features()
    assert _uncertainty_both_ways(monkeypatch, la, X, n_samples=0) == 0  # probit: diagonal only


@pytest.mark.parametrize("bias", [True, False])
def test_kron_output_draws_have_the_posterior_covariance(bias):
    """The draw map ε ↦ f − f_μ is linear, T_b ε; its columns (ε = unit vectors) give
    T_b T_bᵀ, which must be J Σ Jᵀ of the dense reference, row by row."""
    la, model, X = _fit("kron", bias=bias, prior_precision=0.4)
    form = la.posterior.feature_variance_form(la.prior_precision, la.curvature_scale())
    phi = la.subset.features(X)[0]
    k = form.draws.width
    assert k == (8 if bias else 4)
    eps = torch.eye(k, dtype=torch.float64)[:, None, :].expand(k, len(X), k)
    u = phi @ form.rotation
    T = form.draws.draw(u * u, torch.zeros(len(X), 4, dtype=torch.float64), eps)  # (k, B, C)
    cov = torch.einsum("sbc,sbd->bcd", T, T)
    names = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    _, J = jacobians(model, names, X)
    ref = J @ torch.linalg.inv(dense_precision(la)) @ J.transpose(1, 2)
    assert torch.allclose(cov, ref, rtol=1e-9, atol=1e-12)


def test_kron_draws_in_uncertainty_and_mc_prediction(monkeypatch):
    from laplace_cli.posterior.predictive import RowSeeds

    la, model, X = _fit("kron", prior_precision=0.3)
    calls = []
    monkeypatch.setattr(
        PredictiveMixin, "functional_variance_at", lambda *a: calls.append(1) or None
    )
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    out = la.uncertainty(X, n_samples=4000, generator=g())
    assert not calls  # no (B, C, C) covariance, no Cholesky factors
    # the draws have the dense covariance (Monte Carlo, 4000 draws: within 12 %)
    f_mu, var, f = la.feature_moments(X, 4000, g())
    names = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    _, J = jacobians(model, names, X)
    ref = J @ torch.linalg.inv(dense_precision(la)) @ J.transpose(1, 2)
    d = f - f_mu
    emp = torch.einsum("sbc,sbd->bcd", d, d) / len(d)
    scale = ref.diagonal(dim1=-2, dim2=-1).sqrt()
    assert ((emp - ref) / (scale[:, :, None] * scale[:, None, :])).abs().max() < 0.12
    assert torch.allclose(var, ref.diagonal(dim1=-2, dim2=-1), rtol=1e-10, atol=1e-13)
    # the scores: probit from the exact diagonal, mutual information from those draws
    probs = torch.softmax(f_mu / torch.sqrt(1 + torch.pi / 8 * var), -1)
    assert torch.allclose(out["probs"], probs, rtol=1e-10, atol=1e-13)
    p = torch.softmax(f, -1)
    ent = lambda q: -(q * q.clamp_min(1e-300).log()).sum(-1)  # noqa: E731
    assert torch.allclose(out["mutual_info"], ent(p.mean(0)) - ent(p).mean(0), atol=1e-10)
    # la(x, link_approx="mc") takes the same draws as uncertainty(link_approx="mc")
    mc = la(X, link_approx="mc", n_samples=50, generator=g())
    assert torch.allclose(mc, la.uncertainty(X, "glm", "mc", 50, g())["probs"], atol=1e-14)
    assert not calls
    # per-row streams: a row's draws do not depend on its batch
    _, _, whole = la.feature_moments(X[:10], 5, RowSeeds(3, 0))
    _, _, part = la.feature_moments(X[4:10], 5, RowSeeds(3, 4))
    assert torch.allclose(whole[:, 4:], part, rtol=1e-12, atol=1e-14)


def test_mc_prediction_of_a_diagonal_covariance_draws_the_same(monkeypatch):
    la, _, X = _fit("diag", prior_precision=0.3)
    fast = la(X, link_approx="mc", n_samples=30, generator=torch.Generator().manual_seed(1))
    _generic_routes(monkeypatch, la)
    full = la(X, link_approx="mc", n_samples=30, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(fast, full, rtol=1e-10, atol=1e-12)


def test_functional_samples_come_from_the_features():
    from laplace_cli.posterior.predictive import sample_gaussian_outputs

    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    la, _, X = _fit("kron", prior_precision=0.3)
    draws = la.functional_samples(X, n_samples=6, generator=g())
    assert torch.equal(draws, la.feature_moments(X, 6, g())[2])
    # diag: a diagonal covariance, so ε ⊙ √Var are the Cholesky draws
    la, _, X = _fit("diag", prior_precision=0.3)
    f_mu, cov = la.functional_variance_at(X)
    ref = sample_gaussian_outputs(f_mu, cov, 6, g())
    assert torch.allclose(la.functional_samples(X, n_samples=6, generator=g()), ref, rtol=1e-10)
