"""Function-space (GP) Laplace against dense references, laplace-torch and the sample model.

References: the weight-space GLM predictive J_* (s Jᵀ Λ J + δ I)⁻¹ J_*ᵀ from dense Jacobians
(torch.func), and laplace-torch's GP marginal likelihood written out densely. All in float64.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.utils.data import DataLoader, TensorDataset

from laplace_cli import Laplace
from laplace_cli.baselaplace import FunctionalLaplace
from laplace_cli.core.errors import BadInputError
from laplace_cli.lllaplace import FunctionalLLLaplace

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
HAS_LAPLACE_TORCH = importlib.util.find_spec("laplace") is not None


def _model(n_in: int, n_out: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(n_in, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, n_out)
    ).double()


def _data(task: str, n: int = 23, n_in: int = 3, n_out: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g, dtype=torch.float64)
    if task == "regression":
        y = torch.randn(n, n_out, generator=g, dtype=torch.float64)
    else:
        y = torch.randint(0, n_out, (n,), generator=g)
    return x, y


def _loader(x, y, batch_size: int = 5) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _dense_jacobian(model: nn.Module, x: torch.Tensor, last_layer: bool) -> torch.Tensor:
    """(N, C, P) in the subset's parameter order (all, or the last Linear's weight and bias)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = list(params)[-2:] if last_layer else list(params)

    def f(sub):
        return functional_call(model, {**params, **sub}, (x,))

    jac = jacrev(f)({k: params[k] for k in names})
    return torch.cat([jac[k].reshape(x.shape[0], -1, params[k].numel()) for k in names], dim=-1)


def _output_hessian(task: str, f: torch.Tensor) -> torch.Tensor:
    if task == "regression":
        return torch.eye(f.shape[1], dtype=f.dtype).expand(f.shape[0], -1, -1)
    p = f.softmax(-1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def _weight_space_glm(model, task, x, x_star, delta, sigma, last_layer, diag_lambda=False):
    J = _dense_jacobian(model, x, last_layer)
    lam = _output_hessian(task, model(x).detach())
    if diag_lambda:
        lam = torch.diag_embed(torch.diagonal(lam, dim1=-2, dim2=-1))
    s = 1.0 / sigma**2
    H = torch.einsum("ncp,ncd,ndq->pq", J, lam, J)
    cov = torch.linalg.inv(s * H + delta * torch.eye(H.shape[0], dtype=H.dtype))
    Js = _dense_jacobian(model, x_star, last_layer)
    return model(x_star).detach(), torch.einsum("bcp,pq,bdq->bcd", Js, cov, Js)


CASES = [
    ("regression", False, "diag"),
    ("regression", True, "diag"),
    ("classification", False, "full"),
    ("classification", True, "full"),
]


@pytest.mark.parametrize(("task", "last_layer", "output_hessian"), CASES)
def test_gp_with_all_points_equals_weight_space_glm(task, last_layer, output_hessian):
    model = _model(3, 3)
    x, y = _data(task)
    x_star = _data(task, n=7, seed=5)[0]
    delta, sigma = 0.7, (0.6 if task == "regression" else 1.0)
    cls = FunctionalLLLaplace if last_layer else FunctionalLaplace
    la = cls(
        model,
        task,
        n_subset=len(x),
        prior_precision=delta,
        sigma_noise=sigma,
        output_hessian=output_hessian,
    )
    la.fit(_loader(x, y))
    mu_ref, var_ref = _weight_space_glm(model, task, x, x_star, delta, sigma, last_layer)
    mu, var = la.functional_variance_at(x_star)
    torch.testing.assert_close(mu, mu_ref, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(var, var_ref, rtol=1e-6, atol=1e-10)
    if task == "classification":
        # laplace-torch's default keeps diag(Λ): the weight-space GLM of the diagonal-Λ GGN
        la_d = cls(model, task, n_subset=len(x), prior_precision=delta)
        la_d.fit(_loader(x, y))
        _, var_d_ref = _weight_space_glm(
            model, task, x, x_star, delta, 1.0, last_layer, diag_lambda=True
        )
        torch.testing.assert_close(
            la_d.functional_variance_at(x_star)[1], var_d_ref, rtol=1e-6, atol=1e-10
        )
        assert not torch.allclose(var_d_ref, var_ref, rtol=1e-3)  # the two modes really differ
        probs = la(x_star, link_approx="probit")
        ref = torch.softmax(
            mu_ref / torch.sqrt(1 + math.pi / 8 * torch.diagonal(var_ref, dim1=1, dim2=2)), -1
        )
        torch.testing.assert_close(probs, ref, rtol=1e-6, atol=1e-10)
    else:
        f_mu, f_var = la(x_star)
        torch.testing.assert_close(f_var, var_ref, rtol=1e-6, atol=1e-10)
        # joint covariance: its diagonal blocks are the marginal ones
        mu_j, cov_j = la(x_star, joint=True)
        blocks = cov_j.reshape(7, 3, 7, 3)[torch.arange(7), :, torch.arange(7), :]
        torch.testing.assert_close(blocks, var_ref, rtol=1e-6, atol=1e-10)
        Js = _dense_jacobian(model, x_star, last_layer)
        J = _dense_jacobian(model, x, last_layer)
        H = torch.einsum("ncp,ncq->pq", J, J) / sigma**2
        cov = torch.linalg.inv(H + delta * torch.eye(H.shape[0], dtype=H.dtype))
        ref_joint = torch.einsum("acp,pq,bdq->acbd", Js, cov, Js).reshape(21, 21)
        torch.testing.assert_close(cov_j, ref_joint, rtol=1e-6, atol=1e-10)


def _dense_marglik(model, task, x, y, idx, n_data, delta, sigma, last_layer, independent):
    """laplace-torch's GP log marginal likelihood on context rows `idx`, written out densely."""
    xm, ym = x[idx], y[idx]
    J = _dense_jacobian(model, xm, last_layer)
    f = model(xm).detach()
    m, c = f.shape
    v = (m / n_data) / delta
    if independent:
        Ks = [J[:, k] @ J[:, k].T for k in range(c)]
    else:
        Ks = [J.reshape(m * c, -1) @ J.reshape(m * c, -1).T]
    params = [p for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in (params[-2:] if last_layer else params)])
    jt = J @ theta
    if task == "regression":
        loss = 0.5 * ((f - ym) ** 2).sum()
        loglik = -loss / sigma**2 - n_data * c * torch.log(sigma * math.sqrt(2 * math.pi))
        mu = ym - f + jt
        noise = sigma**2
        lam_diag = torch.ones(m, c, dtype=f.dtype)
    else:
        loss = nn.functional.cross_entropy(f, ym, reduction="sum")
        loglik = -loss
        mu = jt
        noise = torch.tensor(1e-5, dtype=f.dtype)
        p = f.softmax(-1)
        lam_diag = p - p * p
    log_det = 0.0
    scatter = 0.0
    for k, K in enumerate(Ks):
        n = K.shape[0]
        mu_k = mu[:, k] if independent else mu.reshape(-1)
        if task == "regression":
            log_det = log_det + torch.logdet(v * K + noise * torch.eye(n, dtype=K.dtype))
        else:
            w = (lam_diag[:, k] if independent else lam_diag.reshape(-1)).sqrt()
            log_det = log_det + torch.logdet(
                w[:, None] * v * K * w[None, :] + torch.eye(n, dtype=K.dtype)
            )
        scatter = scatter + mu_k @ torch.linalg.solve(
            v * K + noise * torch.eye(n, dtype=K.dtype), mu_k
        )
    return loglik - 0.5 * (log_det + scatter)


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("last_layer", [False, True])
@pytest.mark.parametrize("independent", [False, True])
def test_marglik_and_gradient_equal_dense_formula(task, last_layer, independent):
    model = _model(3, 3)
    x, y = _data(task)
    n_subset, seed = 11, 3
    cls = FunctionalLLLaplace if last_layer else FunctionalLaplace
    la = cls(model, task, n_subset, independent_outputs=independent, seed=seed)
    la.fit(_loader(x, y))
    idx = np.sort(np.random.default_rng(seed).choice(list(range(len(x))), n_subset, replace=False))
    sigma0 = torch.tensor(0.8 if task == "regression" else 1.0, dtype=torch.float64)

    log_delta = torch.tensor(math.log(0.5), dtype=torch.float64, requires_grad=True)
    log_sigma = sigma0.log().clone().requires_grad_(True)
    kw = {"sigma_noise": log_sigma.exp()} if task == "regression" else {}
    ours = la.log_marginal_likelihood(prior_precision=log_delta.exp(), **kw)
    ref = _dense_marglik(
        model, task, x, y, idx, len(x), log_delta.exp(), log_sigma.exp(), last_layer, independent
    )
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-8)
    wrt = [log_delta, log_sigma] if task == "regression" else [log_delta]
    g_ours = torch.autograd.grad(ours, wrt)
    g_ref = torch.autograd.grad(ref, wrt)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    # finite differences in log δ
    h = 1e-5

    def at(ld: float) -> float:
        return float(
            la.log_marginal_likelihood(
                prior_precision=torch.tensor(math.exp(ld), dtype=torch.float64),
                **({"sigma_noise": sigma0} if task == "regression" else {}),
            )
        )

    fd = (at(math.log(0.5) + h) - at(math.log(0.5) - h)) / (2 * h)
    assert fd == pytest.approx(float(g_ours[0]), rel=1e-5, abs=1e-7)


def test_kernel_chunks_and_context_strategies_agree():
    """A tiny memory budget (one row per kernel chunk) gives the same system and predictive."""
    model = _model(3, 3)
    x, y = _data("classification")
    x_star = _data("classification", n=4, seed=9)[0]
    a = FunctionalLaplace(model, "classification", 15, context="first")
    a.fit(_loader(x, y))
    b = FunctionalLaplace(model, "classification", 15, context="first", max_memory=1)
    b.fit(_loader(x, y, batch_size=4))
    assert b._chunk == 1
    torch.testing.assert_close(a.system.K, b.system.K, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a(x_star), b(x_star), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.log_marginal_likelihood(), b.log_marginal_likelihood())
    # "first" really is the first 15 rows: equal to a fit on those rows alone with N scaled
    c = FunctionalLaplace(model, "classification", 15, context="first")
    c.fit(_loader(x[:15], y[:15]))
    torch.testing.assert_close(c.system.K, a.system.K)


def test_laplace_factory_and_errors():
    model = _model(3, 2)
    la = Laplace(model, "regression", subset_of_weights="all", hessian_structure="gp", n_subset=5)
    assert type(la) is FunctionalLaplace and la.n_subset == 5
    la = Laplace(model, "regression", "last_layer", "gp", n_subset=5)
    assert type(la) is FunctionalLLLaplace
    with pytest.raises(BadInputError, match="all' or 'last_layer"):
        Laplace(model, "regression", "subnetwork", "gp")
    with pytest.raises(BadInputError, match="isotropic"):
        FunctionalLaplace(model, "regression", 5, prior_precision=torch.ones(3))
    x, y = _data("regression", n_out=2)
    with pytest.raises(BadInputError, match="1..23"):
        FunctionalLaplace(model, "regression", 24).fit(_loader(x, y))
    with pytest.raises(RuntimeError, match="fit"):
        FunctionalLaplace(model, "regression", 5)(x)


def test_gridsearch_uses_cached_kernels_and_picks_the_best_value():
    model = _model(3, 3)
    x, y = _data("classification")
    xv, yv = _data("classification", n=9, seed=4)
    la = FunctionalLaplace(model, "classification", 10)
    la.fit(_loader(x, y))
    la.optimize_prior_precision(method="gridsearch", val_loader=_loader(xv, yv), grid_size=9)
    chosen = float(la.prior_precision)
    # brute force: the uncached predictive per grid value
    best = None
    for delta in torch.logspace(-4, 4, 9):
        la.prior_precision = delta
        nll = float(-torch.log(la(xv)[torch.arange(9), yv]).sum())
        if best is None or nll < best[0]:
            best = (nll, float(delta))
    assert chosen == pytest.approx(best[1], rel=1e-12)


def _swapped_output_variance(la: FunctionalLaplace, x_star: torch.Tensor) -> torch.Tensor:
    """laplace-torch 0.3's variance for a joint (non-independent) kernel with C > 1 outputs.

    Its `_build_K_star_M` reshapes K_*M (B, M, C_test, C_context) to (B, M·C, C), pairing each
    context point with the *test* output index, so its correction term is not the GLM's (ours
    equals the dense weight-space GLM, test above). Reproduced here to show that this is the
    whole difference.
    """
    f, k_star, k_cross = la._test_kernels(x_star)
    v = la.gp_kernel_prior_variance
    n = la.system.K.shape[0]
    noise = la.sigma_noise**2 if la.likelihood == "regression" else None
    if noise is None:  # classification: K + diag(1/λ) with laplace-torch's diagonal λ
        lam = la.system.S.reshape(-1) ** 2
        shift = torch.diag(1.0 / lam)
    else:
        shift = noise * torch.eye(n, dtype=torch.float64)
    L = torch.linalg.cholesky(v * la.system.K + shift)
    b, c = f.shape
    K = (v * k_cross).permute(0, 2, 1, 3).reshape(b, n, c)
    W = torch.linalg.solve(L, K)
    return f, v * k_star - torch.einsum("bcm,bcn->bmn", W, W)


@pytest.mark.skipif(not HAS_LAPLACE_TORCH, reason="laplace-torch not installed")
@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("last_layer", [False, True])
@pytest.mark.parametrize("independent", [False, True])
def test_side_by_side_with_laplace_torch(task, last_layer, independent):
    import laplace as lt

    n_out = 3
    model = _model(3, n_out)
    x, y = _data(task, n_out=n_out)
    x_star = _data(task, n=6, seed=7, n_out=n_out)[0]
    kwargs = dict(n_subset=13, independent_outputs=independent, seed=2, prior_precision=0.9)
    if task == "regression":
        kwargs["sigma_noise"] = 0.7
    theirs_cls = lt.FunctionalLLLaplace if last_layer else lt.FunctionalLaplace
    ours_cls = FunctionalLLLaplace if last_layer else FunctionalLaplace
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = theirs_cls(model, task, **kwargs)
        theirs.fit(_loader(x, y))
        ours = ours_cls(model, task, **kwargs)
        ours.fit(_loader(x, y))
        if independent:
            mu_o, var_o = ours.functional_variance_at(x_star)
        else:  # laplace-torch's output-index mix-up (see _swapped_output_variance)
            mu_o, var_o = _swapped_output_variance(ours, x_star)
        if task == "regression":
            mu_t, var_t = theirs(x_star)
            torch.testing.assert_close(mu_o, mu_t, rtol=1e-6, atol=1e-10)
            torch.testing.assert_close(var_o, var_t, rtol=1e-6, atol=1e-10)
            if independent:
                torch.testing.assert_close(ours(x_star)[1], var_t, rtol=1e-6, atol=1e-10)
        else:
            probs = torch.softmax(
                mu_o / torch.sqrt(1 + math.pi / 8 * torch.diagonal(var_o, dim1=1, dim2=2)), -1
            )
            torch.testing.assert_close(
                probs, theirs(x_star, link_approx="probit"), rtol=1e-6, atol=1e-10
            )
            if independent:
                for link in ("probit", "bridge"):
                    torch.testing.assert_close(
                        ours(x_star, link_approx=link),
                        theirs(x_star, link_approx=link),
                        rtol=1e-6,
                        atol=1e-10,
                    )
        torch.testing.assert_close(
            ours.log_marginal_likelihood(), theirs.log_marginal_likelihood(), rtol=1e-6, atol=1e-8
        )
        # marglik tuning: the same Adam trajectory
        theirs.optimize_prior_precision(method="marglik", n_steps=5)
        ours.optimize_prior_precision(method="marglik", n_steps=5)
        torch.testing.assert_close(
            ours.prior_precision.reshape(-1), theirs.prior_precision.reshape(-1), rtol=1e-6, atol=0
        )


@pytest.mark.skipif(not HAS_LAPLACE_TORCH, reason="laplace-torch not installed")
@pytest.mark.parametrize("last_layer", [False, True])
def test_single_output_joint_kernel_matches_laplace_torch_directly(last_layer):
    """With one output the joint kernel has no output index to mix up: direct equality."""
    import laplace as lt

    model = _model(3, 1)
    x, y = _data("regression", n_out=1)
    x_star = _data("regression", n=6, seed=7, n_out=1)[0]
    kwargs = dict(n_subset=13, seed=2, prior_precision=0.9, sigma_noise=0.6)
    theirs_cls = lt.FunctionalLLLaplace if last_layer else lt.FunctionalLaplace
    ours_cls = FunctionalLLLaplace if last_layer else FunctionalLaplace
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = theirs_cls(model, "regression", **kwargs)
        theirs.fit(_loader(x, y))
        ours = ours_cls(model, "regression", **kwargs)
        ours.fit(_loader(x, y))
        for a, b in zip(ours(x_star), theirs(x_star), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)
        for a, b in zip(ours(x_star, joint=True), theirs(x_star, joint=True), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(
            ours.log_marginal_likelihood(), theirs.log_marginal_likelihood(), rtol=1e-6, atol=1e-8
        )


def test_diabetes_sample_model_gp_equals_full_ggn_glm():
    state_file = SAMPLES / "diabetes_mlp" / "model.pt"
    if not state_file.exists():
        pytest.skip("sample model missing")
    model = nn.Sequential(
        nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    model.load_state_dict(torch.load(state_file, weights_only=True))
    model = model.double().eval()
    with np.load(SAMPLES / "diabetes_mlp" / "train.npz") as f:
        x, y = torch.from_numpy(f["x"]).double(), torch.from_numpy(f["y"]).double()
    with np.load(SAMPLES / "diabetes_mlp" / "test.npz") as f:
        x_star = torch.from_numpy(f["x"]).double()[:40]
    delta, sigma = 2.0, 0.8
    la = FunctionalLaplace(model, "regression", len(x), prior_precision=delta, sigma_noise=sigma)
    la.fit(_loader(x, y, batch_size=64))
    mu_ref, var_ref = _weight_space_glm(
        model, "regression", x, x_star, delta, sigma, last_layer=False
    )
    mu, var = la(x_star)
    torch.testing.assert_close(mu, mu_ref, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(var, var_ref, rtol=1e-6, atol=1e-12)


def test_conv_model_uses_dense_kernel_path_and_equals_weight_space_glm():
    """Conv2d factors share weights over positions: the kernel is built from dense Jacobians."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)
    ).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 1, 5, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (9,), generator=g)
    x_star = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64)
    la = FunctionalLaplace(model, "classification", 9, prior_precision=1.3, output_hessian="full")
    la.fit(_loader(x, y, batch_size=4))
    _, var_ref = _weight_space_glm(model, "classification", x, x_star, 1.3, 1.0, last_layer=False)
    torch.testing.assert_close(la.functional_variance_at(x_star)[1], var_ref, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("independent", [False, True])
def test_state_dict_round_trip_samples_and_laplace_torch_helpers(independent):
    task = "regression"
    model = _model(3, 3)
    x, y = _data(task)
    x_star = _data(task, n=4, seed=8)[0]
    la = FunctionalLaplace(
        model, task, 12, sigma_noise=0.5, independent_outputs=independent, seed=4
    )
    loader = _loader(x, y)
    la.fit(loader)
    la.prior_precision = 0.3
    state = la.state_dict()
    assert torch.equal(state["context_inputs"], la.context_inputs)  # the file carries inputs
    other = FunctionalLaplace(model, task, 12, independent_outputs=independent)
    other.load_state_dict(state)
    for a, b in zip(other(x_star), la(x_star), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(other.log_marginal_likelihood(), la.log_marginal_likelihood())
    with pytest.raises(BadInputError, match="MAP"):
        FunctionalLaplace(_model(3, 3, seed=1), task, 12).load_state_dict(state)
    # functional_covariance / functional_variance from dense Jacobians equal the factored path
    Js, f = la._jacobians(x_star)
    mu, cov = la(x_star, joint=True)
    torch.testing.assert_close(la.functional_covariance(Js), cov, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(la.functional_variance(Js), la(x_star)[1], rtol=1e-10, atol=1e-12)
    # the SoD loader yields the context rows
    rows = torch.cat([xb for xb, _ in la._get_SoD_data_loader(loader)])
    assert torch.equal(
        rows[rows[:, 0].argsort()], la.context_inputs[la.context_inputs[:, 0].argsort()]
    )
    # laplace-torch's kernel helpers agree with the dense product, prior-scaled (M/N)/δ as its
    v = (12 / 23) / 0.3
    assert la.prior_factor_sod == 12 / 23
    J2, _ = la._jacobians(x[:5])
    if independent:
        torch.testing.assert_close(
            la._kernel_batch(Js, x[:5]), v * torch.einsum("acp,bcp->abc", Js, J2)
        )
    else:
        torch.testing.assert_close(
            la._kernel_batch(Js, x[:5]), v * Js.reshape(12, -1) @ J2.reshape(15, -1).T
        )
    # ... and the per-point, joint and cross-batch kernels, against explicit loops over points
    pair = (lambda a, b: (a * b).sum(-1)) if independent else (lambda a, b: a @ b.T)
    per_point = torch.stack([v * pair(Js[i], Js[i]) for i in range(4)])
    joint = torch.stack([torch.stack([v * pair(Js[i], Js[j]) for j in range(4)]) for i in range(4)])
    cross = torch.stack([torch.stack([v * pair(Js[i], J2[j]) for j in range(5)]) for i in range(4)])
    torch.testing.assert_close(la._kernel_star(Js), per_point)
    torch.testing.assert_close(la._kernel_star(Js, joint=True), joint)
    torch.testing.assert_close(la._kernel_batch_star(Js, x[:5]), cross)
    # samples: their mean and covariance approach the moments
    gen = torch.Generator().manual_seed(0)
    draws = la.functional_samples(x_star, n_samples=20000, generator=gen)
    torch.testing.assert_close(draws.mean(0), la(x_star)[0], atol=0.02, rtol=0)
    emp = torch.einsum("sbc,sbd->bcd", draws - draws.mean(0), draws - draws.mean(0)) / 20000
    torch.testing.assert_close(emp, la(x_star)[1], atol=0.01, rtol=0)
    assert la.predictive(x_star, "gp", "probit", 10)[0].shape == (4, 3)


@pytest.mark.parametrize("last_layer", [False, True])
def test_full_output_hessian_log_det_is_the_weight_space_log_det_ratio(last_layer):
    """With M = N: log|I + s S vK Sᵀ| = log|s H + δ I| − P log δ (Sylvester), H the full GGN."""
    from laplace_cli.posterior import gp

    model = _model(3, 3)
    x, y = _data("classification")
    delta = 0.8
    cls = FunctionalLLLaplace if last_layer else FunctionalLaplace
    la = cls(model, "classification", len(x), prior_precision=delta, output_hessian="full")
    la.fit(_loader(x, y))
    J = _dense_jacobian(model, x, last_layer)
    lam = _output_hessian("classification", model(x).detach())
    H = torch.einsum("ncp,ncd,ndq->pq", J, lam, J)
    P = H.shape[0]
    ref = torch.logdet(H + delta * torch.eye(P, dtype=H.dtype)) - P * math.log(delta)
    v = la.gp_kernel_prior_variance
    one = torch.tensor(1.0, dtype=torch.float64)
    ours = gp.log_det_term(la.system, v, one, regression=False, sigma2=one)
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("independent", [False, True])
def test_laplace_torch_kernel_state_equals_dense_reference(independent):
    """K_MM, L, Sigma_inv (laplace-torch's names) against dense formulas; the batch-wise
    `_init_K_MM` / `_store_K_batch` assembly reproduces the fitted kernel."""
    model = _model(3, 2)
    x, y = _data("regression", n_out=2)
    sigma, delta = 0.7, 0.4
    la = FunctionalLaplace(
        model,
        "regression",
        9,
        sigma_noise=sigma,
        prior_precision=delta,
        independent_outputs=independent,
        seed=2,
    )
    la.fit(_loader(x, y, batch_size=4))
    J, _ = la._jacobians(la.context_inputs)  # (M, C, P)
    m, c = J.shape[:2]
    v = (9 / 23) / delta
    if independent:
        K_ref = [v * J[:, o] @ J[:, o].T for o in range(c)]
    else:
        K_ref = [v * J.reshape(m * c, -1) @ J.reshape(m * c, -1).T]
    K_MM = la.K_MM if independent else [la.K_MM]
    L = la.L if independent else [la.L]
    S_inv = la.Sigma_inv if independent else [la.Sigma_inv]
    for K, Kr, Lo, Si in zip(K_MM, K_ref, L, S_inv, strict=True):
        torch.testing.assert_close(K, Kr, rtol=1e-10, atol=1e-12)
        eye = torch.eye(K.shape[0], dtype=K.dtype)
        torch.testing.assert_close(Lo, eye / sigma**2)
        torch.testing.assert_close(Si, torch.linalg.inv(Kr + sigma**2 * eye), rtol=1e-8, atol=1e-10)
    # batch-wise assembly from laplace-torch's helpers gives the same kernel
    fitted = [k.clone() for k in K_MM]
    la.batch_size = 4
    la._init_K_MM()
    xs = la.context_inputs
    for i in range(0, m, 4):
        Ji, _ = la._jacobians(xs[i : i + 4])
        for j in range(i, m, 4):
            la._store_K_batch(la._kernel_batch(Ji, xs[j : j + 4]), i // 4, j // 4)
    built = la.K_MM if independent else [la.K_MM]
    for a, b in zip(built, fitted, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_classification_targets_are_checked_before_fitting():
    """(N, C) float targets used to be flattened into N·C labels; out-of-range labels crashed."""
    model = _model(3, 3)
    x, _ = _data("classification")
    with pytest.raises(BadInputError, match="class indices"):
        FunctionalLaplace(model, "classification", 5).fit(_loader(x, torch.randn(23, 3)))
    with pytest.raises(BadInputError, match=r"labels must lie in \[0, 3\)"):
        FunctionalLaplace(model, "classification", 23).fit(_loader(x, torch.full((23,), 3)))
