"""Engine I against brute-force dense references (float64, tiny models, fixed seeds)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import jacrev

from laplace_cli import Laplace
from tests import reference as ref
from tests.conftest import tiny_cnn, tiny_data, tiny_mlp

LIKELIHOODS = ["classification", "regression", "binary"]


def loader(X, y, bs=5):
    return [(X[i : i + bs], y[i : i + bs]) for i in range(0, len(X), bs)]


def names_of(la: Laplace) -> list[str]:
    return la.subset.names


def assert_close(actual, expected, rtol=1e-5, what=""):
    """Relative to the scale of `expected`; prints the worst entries on failure."""
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual - expected).abs()
    if not bool((err <= rtol * scale).all()):
        idx = torch.topk(err.reshape(-1), min(3, err.numel())).indices
        raise AssertionError(
            f"{what}: max abs error {err.max():.3e} (scale {scale:.3e}); worst at {idx.tolist()}: "
            f"got {actual.reshape(-1)[idx].tolist()}, expected {expected.reshape(-1)[idx].tolist()}"
        )


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("curvature", ["ggn", "ef"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_full_and_diag_match_dense(float64, likelihood, curvature, subset):
    model = tiny_mlp()
    X, y = tiny_data(likelihood)
    full = Laplace(model, likelihood, subset, "full", curvature=curvature).fit(loader(X, y))
    diag = Laplace(model, likelihood, subset, "diag", curvature=curvature).fit(loader(X, y))
    names = names_of(full)
    dense = (ref.ggn if curvature == "ggn" else ref.empirical_fisher)(
        model, names, X, y, likelihood
    )
    assert_close(full.posterior.curvature_dense(), dense, what="full")
    assert_close(diag.posterior.h, dense.diagonal(), what="diag")
    assert_close(full.loss, ref.total_loss(model, X, y, likelihood), what="loss")


@pytest.mark.parametrize("curvature", ["ggn", "ef"])
def test_cnn_full_and_diag_match_dense(float64, curvature):
    model = tiny_cnn()
    X, y = tiny_data("classification", n=6, n_out=3, image=True)
    full = Laplace(model, "classification", "all", "full", curvature=curvature).fit(loader(X, y))
    diag = Laplace(model, "classification", "all", "diag", curvature=curvature).fit(loader(X, y))
    dense = (ref.ggn if curvature == "ggn" else ref.empirical_fisher)(
        model, names_of(full), X, y, "classification"
    )
    assert_close(full.posterior.curvature_dense(), dense, what="full")
    assert_close(diag.posterior.h, dense.diagonal(), what="diag")


def block_slices(la: Laplace) -> list[slice]:
    out, start = [], 0
    for g in la.subset.groups:
        out.append(slice(start, start + g.numel))
        start += g.numel
    return out


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("curvature", ["ggn", "ef"])
def test_kron_exact_for_one_data_point(float64, likelihood, curvature):
    model = tiny_mlp()
    X, y = tiny_data(likelihood, n=1)
    la = Laplace(model, likelihood, "all", "kron", curvature=curvature).fit(loader(X, y))
    dense = (ref.ggn if curvature == "ggn" else ref.empirical_fisher)(
        model, names_of(la), X, y, likelihood
    )
    kron = la.posterior.curvature_dense()
    for s in block_slices(la):
        assert_close(kron[s, s], dense[s, s], what=f"block {s}")


def independent_kron_factors(model, X, y, likelihood, layer_index, conv=False):
    """A = Σ_{n,t} a aᵀ / (N·T), B = Σ_{n,t} J_tᵀ H J_t from a split Sequential (no hooks)."""
    prefix, layer, suffix = model[:layer_index], model[layer_index], model[layer_index + 1 :]
    n = len(X)
    A, B = 0, 0
    for x, yi in zip(X, y):
        a = prefix(x.unsqueeze(0)).detach()
        z = layer(a).detach()
        f = suffix(z).reshape(-1)
        H = ref.loss_hessians(likelihood, f.unsqueeze(0).detach(), yi.unsqueeze(0))[0]
        Jz = jacrev(lambda zz: suffix(zz).reshape(-1))(z).reshape(f.numel(), *z.shape[1:])
        if conv:
            kh, kw = layer.kernel_size
            pad = layer.padding[0]
            ap = nn.functional.pad(a, (pad, pad, pad, pad))[0]
            cols = []
            for i in range(z.shape[2]):
                for j in range(z.shape[3]):
                    si, sj = i * layer.stride[0], j * layer.stride[1]
                    cols.append(ap[:, si : si + kh, sj : sj + kw].reshape(-1))
            patches = torch.stack(cols)  # (T, d_in)
            Jt = Jz.reshape(f.numel(), z.shape[1], -1).permute(2, 0, 1)  # (T, C, d_out)
        else:
            patches = a.reshape(1, -1)
            Jt = Jz.reshape(1, f.numel(), -1)
        T = patches.shape[0]
        A = A + patches.T @ patches / T
        B = B + torch.einsum("tco,cd,tdp->op", Jt, H, Jt)
    return B, A / n


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_kron_matches_independent_kronecker_mlp(float64, likelihood):
    model = tiny_mlp()
    X, y = tiny_data(likelihood)
    la = Laplace(model, likelihood, "all", "kron").fit(loader(X, y))
    kron = la.posterior.curvature_dense()
    sl = block_slices(la)
    for (wi, bi), layer_index in (((0, 1), 0), ((2, 3), 2)):
        B, A = independent_kron_factors(model, X, y, likelihood, layer_index)
        assert_close(
            kron[sl[wi], sl[wi]],
            torch.kron(B.contiguous(), A.contiguous()),
            what=f"weight {layer_index}",
        )
        assert_close(kron[sl[bi], sl[bi]], B, what=f"bias {layer_index}")


def test_kron_matches_independent_kronecker_cnn(float64):
    model = tiny_cnn()
    X, y = tiny_data("classification", n=5, n_out=3, image=True)
    la = Laplace(model, "classification", "all", "kron").fit(loader(X, y, bs=2))
    kron = la.posterior.curvature_dense()
    sl = block_slices(la)
    for (wi, bi), layer_index in (((0, 1), 0), ((2, 3), 2)):
        B, A = independent_kron_factors(model, X, y, "classification", layer_index, conv=True)
        assert_close(
            kron[sl[wi], sl[wi]],
            torch.kron(B.contiguous(), A.contiguous()),
            what=f"conv weight {layer_index}",
        )
        assert_close(kron[sl[bi], sl[bi]], B, what=f"conv bias {layer_index}")


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_batch_split_invariance(float64, structure, subset):
    model = tiny_mlp()
    X, y = tiny_data("classification", n=13)
    states = []
    for bs in (1, 4, 13):
        la = Laplace(model, "classification", subset, structure).fit(loader(X, y, bs))
        states.append((la.posterior.curvature_dense(), la.loss, la.n_data))
    for H, loss, n in states[1:]:
        assert_close(H, states[0][0], what="curvature")
        assert_close(loss, states[0][1], what="loss")
        assert n == states[0][2] == 13


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("prior_shape", ["scalar", "layerwise", "diag"])
def test_log_marglik_matches_dense_formula(float64, likelihood, structure, prior_shape):
    if structure == "kron" and prior_shape == "diag":
        pytest.skip(
            "kron takes scalar or layer-wise priors (tested in test_kron_refuses_diag_prior)"
        )
    model = tiny_mlp()
    X, y = tiny_data(likelihood)
    sigma = 0.7 if likelihood == "regression" else 1.0
    la = Laplace(model, likelihood, "all", structure, sigma_noise=sigma, temperature=1.3).fit(
        loader(X, y)
    )
    g = torch.Generator().manual_seed(3)
    n_prior = {"scalar": 1, "layerwise": len(la.subset.groups), "diag": la.n_params}[prior_shape]
    prior = torch.rand(n_prior, generator=g) + 0.5
    la.prior_precision = prior
    from laplace_cli.posterior import expand_prior

    prior_vec = expand_prior(prior, la.subset.groups)
    H = la.posterior.curvature_dense()
    expected = ref.dense_log_marglik(
        la.loss, H, la.mean, prior_vec, likelihood, la.n_data, 4, torch.tensor(sigma), 1.3
    )
    assert_close(la.log_marginal_likelihood(), expected, rtol=1e-8, what="log marglik")


def test_kron_refuses_diag_prior(float64):
    model = tiny_mlp()
    la = Laplace(model, "classification", "all", "kron")
    with pytest.raises(ValueError, match="scalar prior precision or one per parameter tensor"):
        la.prior_precision = torch.ones(la.n_params)


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_log_marglik_gradients_match_finite_differences(float64, structure):
    model = tiny_mlp()
    X, y = tiny_data("regression")
    la = Laplace(model, "regression", "all", structure).fit(loader(X, y))
    n_groups = len(la.subset.groups)

    def lml(log_prior, log_sigma):
        return la.log_marginal_likelihood(log_prior.exp(), log_sigma.exp())

    log_prior = torch.linspace(-0.5, 0.5, n_groups).requires_grad_(True)
    log_sigma = torch.tensor([-0.2], requires_grad=True)
    value = lml(log_prior, log_sigma)
    g_prior, g_sigma = torch.autograd.grad(value, (log_prior, log_sigma))
    eps = 1e-6
    for i in range(n_groups):
        e = torch.zeros(n_groups)
        e[i] = eps
        fd = (
            lml(log_prior.detach() + e, log_sigma.detach())
            - lml(log_prior.detach() - e, log_sigma.detach())
        ) / (2 * eps)
        assert math.isclose(float(g_prior[i]), float(fd), rel_tol=1e-5, abs_tol=1e-7)
    fd = (
        lml(log_prior.detach(), log_sigma.detach() + eps)
        - lml(log_prior.detach(), log_sigma.detach() - eps)
    ) / (2 * eps)
    assert math.isclose(float(g_sigma[0]), float(fd), rel_tol=1e-5, abs_tol=1e-7)


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("prior_shape", ["scalar", "layerwise"])
def test_samples_have_posterior_mean_and_covariance(float64, structure, prior_shape):
    model = tiny_mlp(n_in=2, hidden=3, n_out=2)
    X, y = tiny_data("classification", n_in=2, n_out=2)
    la = Laplace(model, "classification", "all", structure, prior_precision=2.0).fit(loader(X, y))
    if prior_shape == "layerwise":
        la.prior_precision = torch.linspace(1.0, 3.0, len(la.subset.groups))
    n = 200_000
    samples = la.sample(n, generator=torch.Generator().manual_seed(0))
    cov = la.posterior_covariance
    emp_mean = samples.mean(0)
    centred = samples - emp_mean
    emp_cov = centred.T @ centred / (n - 1)
    sd = cov.diagonal().sqrt()
    # Mean within 5 standard errors; covariance (as correlation-scaled error) within 0.03.
    assert ((emp_mean - la.mean).abs() <= 5 * sd / math.sqrt(n)).all()
    scaled = (emp_cov - cov) / torch.outer(sd, sd)
    assert scaled.abs().max() < 0.03, float(scaled.abs().max())


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_last_layer_equals_block_of_all_weights(float64, structure, likelihood):
    model = tiny_mlp()
    X, y = tiny_data(likelihood)
    la_all = Laplace(model, likelihood, "all", structure).fit(loader(X, y))
    la_ll = Laplace(model, likelihood, "last_layer", structure).fit(loader(X, y))
    P = la_all.n_params
    k = la_ll.n_params
    assert la_ll.subset.names == la_all.subset.names[-2:]
    assert_close(
        la_ll.posterior.curvature_dense(), la_all.posterior.curvature_dense()[P - k :, P - k :]
    )
    assert_close(la_ll.mean, la_all.mean[P - k :])


def test_model_is_not_mutated(float64):
    model = tiny_mlp()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = set(vars(model))
    X, y = tiny_data("classification")
    for structure in ("diag", "kron", "full"):
        la = Laplace(model, "classification", "all", structure).fit(loader(X, y))
        la(X)
    assert model.training
    assert set(vars(model)) == attrs
    assert all(not m._forward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_dict_batches(float64):
    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_mlp()

        def forward(self, input_ids, mask=None):
            return self.net(input_ids)

    model = DictModel()
    X, y = tiny_data("classification")
    plain = Laplace(model.net, "classification", "all", "kron").fit(loader(X, y))
    batches = [{"input_ids": X[i : i + 5], "labels": y[i : i + 5]} for i in range(0, len(X), 5)]
    la = Laplace(model, "classification", "all", "kron").fit(batches)
    assert_close(la.posterior.curvature_dense(), plain.posterior.curvature_dense())


def test_float32_runs_and_agrees(float64):
    model = tiny_mlp()
    X, y = tiny_data("classification")
    la64 = Laplace(model, "classification", "all", "kron").fit(loader(X, y))
    m32 = tiny_mlp().float()
    la32 = Laplace(m32, "classification", "all", "kron").fit(loader(X.float(), y))
    assert la32.log_marginal_likelihood().dtype == torch.float32
    assert math.isclose(
        float(la32.log_marginal_likelihood()), float(la64.log_marginal_likelihood()), rel_tol=1e-4
    )
