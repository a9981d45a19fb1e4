"""curvature "hessian": the exact Hessian of the training loss (laplace_cli/fisher/hessian.py).

* Against a dense reference: `torch.autograd.functional.hessian` of the summed loss over ALL
  the data with respect to the flat subset parameters (float64, tiny MLP, fitted over two
  batches), for classification and regression (σ and T scaled as the GGN), full and diag,
  all weights, last layer and subnetwork: the posterior precision s·H + δ and the log
  marginal likelihood.
* Side by side with laplace-torch 0.3 (`FullLaplace` / `FullLLLaplace` with its
  `CurvlinopsHessian` / `AsdlHessian`): H, log marginal likelihood, GLM predictive, rtol 1e-4.
* An indefinite Hessian: every use of a non positive definite Λ raises NumericalError; kron /
  lowrank and too many parameters are refused at fit naming 'ggn'; a fitted posterior saves
  and loads (curvature "hessian" in the metadata).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import laplace_cli
from laplace_cli import curvature as ours_curv
from laplace_cli.core.errors import BadInputError, NumericalError
from laplace_cli.fisher import hessian as hessian_module

RTOL = 1e-4


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3))


def make_data(likelihood: str, n: int = 17) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 3, generator=g)
    if likelihood == "classification":
        return X, torch.randint(0, 3, (n,), generator=g)
    return X, torch.randn(n, 3, generator=g)


def batches(X: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(X[:6], y[:6]), (X[6:], y[6:])]


def dense_hessian(model: nn.Module, X: torch.Tensor, y: torch.Tensor, likelihood: str):
    """Hessian of the summed unit-noise loss over all the data, w.r.t. ALL parameters (P, P)."""
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    theta = torch.cat([p.reshape(-1) for p in params.values()])

    def loss(t: torch.Tensor) -> torch.Tensor:
        out, i = {}, 0
        for n, p in params.items():
            out[n] = t[i : i + p.numel()].reshape(p.shape)
            i += p.numel()
        f = functional_call(model, out, (X,))
        if likelihood == "classification":
            return F.cross_entropy(f, y, reduction="sum")
        return 0.5 * ((f - y) ** 2).sum()

    return torch.autograd.functional.hessian(loss, theta), loss(theta).detach()


def subset_indices(model: nn.Module, subset: str) -> torch.Tensor | None:
    n_all = sum(p.numel() for p in model.parameters())
    if subset == "last_layer":  # the last Linear's weight and bias are the last 18 entries
        return torch.arange(n_all - 18, n_all)
    if subset == "subnetwork":
        return torch.tensor([0, 4, 7, 15, 21, 26, 30, 33, 35, 37])
    return None


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("structure", ["full", "diag"])
@pytest.mark.parametrize("subset", ["all", "last_layer", "subnetwork"])
def test_matches_dense_reference(likelihood: str, structure: str, subset: str) -> None:
    model = make_model()
    X, y = make_data(likelihood)
    H_all, loss = dense_hessian(model, X, y, likelihood)
    idx = subset_indices(model, subset)
    H = H_all if idx is None else H_all[idx][:, idx]
    sigma, temperature = (0.8, 1.3) if likelihood == "regression" else (1.0, 1.3)
    s = 1.0 / (sigma**2 * temperature) if likelihood == "regression" else 1.0 / temperature
    # a prior that makes s·H + δ positive definite (H of an untrained net is indefinite)
    lam_min = float(torch.linalg.eigvalsh(s * H).min())
    delta = (
        max(1.0, -lam_min + 1.0)
        if structure == "full"
        else 1.0 + float((-s * H.diagonal()).clamp_min(0).max())
    )
    la = laplace_cli.Laplace(
        model,
        likelihood,
        subset,
        structure,
        curvature="hessian",
        prior_precision=delta,
        sigma_noise=sigma,
        temperature=temperature,
        subnetwork_indices=idx if subset == "subnetwork" else None,
    )
    la.fit(batches(X, y))
    P = H.shape[0]
    assert la.n_params == P
    ref_prec = s * H + delta * torch.eye(P)
    got = la.posterior_precision
    if structure == "diag":
        torch.testing.assert_close(got, ref_prec.diagonal(), rtol=1e-10, atol=1e-10)
        ref_prec = torch.diag(ref_prec.diagonal())
    else:
        torch.testing.assert_close(got, ref_prec, rtol=1e-10, atol=1e-10)
    # log marginal likelihood, written out densely (prior term over the subset's values)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    theta = theta if idx is None else theta[idx]
    n_out = 3
    log_lik = -s * loss
    if likelihood == "regression":
        log_lik = log_lik - X.shape[0] * n_out * math.log(sigma * math.sqrt(2 * math.pi))
    ref_lml = log_lik - 0.5 * (
        torch.logdet(ref_prec) - P * math.log(delta) + delta * (theta * theta).sum()
    )
    torch.testing.assert_close(la.log_marginal_likelihood(), ref_lml, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("backend", ["CurvlinopsHessian", "AsdlHessian"])
def test_side_by_side_with_laplace_torch(likelihood: str, subset: str, backend: str) -> None:
    lt = pytest.importorskip("laplace")
    lt_curv = pytest.importorskip("laplace.curvature")
    if backend == "AsdlHessian":
        pytest.importorskip("asdl")
        if subset == "last_layer":
            pytest.skip("laplace-torch 0.3's AsdlHessian fails on the last layer (autograd error)")
    model = make_model()
    X, y = make_data(likelihood)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=6)
    cls = "FullLaplace" if subset == "all" else "FullLLLaplace"
    kwargs = {"prior_precision": 40.0, "temperature": 1.3}
    if likelihood == "regression":
        kwargs["sigma_noise"] = 0.8
    theirs = getattr(lt, cls)(model, likelihood, backend=getattr(lt_curv, backend), **kwargs)
    theirs.fit(loader)
    mine = getattr(laplace_cli, cls)(
        model, likelihood, backend=getattr(ours_curv, backend), **kwargs
    )
    mine.fit(batches(X, y))
    torch.testing.assert_close(mine.H, theirs.H, rtol=RTOL, atol=1e-8)
    # the comparison is meaningful only where Λ is positive definite
    assert float(torch.linalg.eigvalsh(theirs.posterior_precision).min()) > 0
    torch.testing.assert_close(
        mine.log_marginal_likelihood(), theirs.log_marginal_likelihood().detach(), rtol=RTOL, atol=0
    )
    a, b = mine(X, pred_type="glm"), theirs(X, pred_type="glm")
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        torch.testing.assert_close(u, v.detach(), rtol=RTOL, atol=1e-10)


def test_backend_instance_full_matches_laplace_torch() -> None:
    lt_curv = pytest.importorskip("laplace.curvature")
    model = make_model()
    for likelihood in ("classification", "regression"):
        X, y = make_data(likelihood)
        loss, H = ours_curv.CurvlinopsHessian(model, likelihood).full(X, y)
        loss_t, H_t = lt_curv.CurvlinopsHessian(model, likelihood).full(X, y)
        torch.testing.assert_close(H, H_t, rtol=RTOL, atol=1e-10)
        torch.testing.assert_close(loss, loss_t, rtol=RTOL, atol=0)
        # diag: offered here (laplace-torch's Hessian backends have none), the exact diagonal
        _, h = ours_curv.CurvlinopsHessian(model, likelihood).diag(X, y)
        torch.testing.assert_close(h, H_t.diagonal(), rtol=RTOL, atol=1e-10)


def test_indefinite_hessian_raises_numerical_error() -> None:
    model = make_model()
    X, y = make_data("classification")
    H, _ = dense_hessian(model, X, y, "classification")
    assert float(torch.linalg.eigvalsh(H).min()) < -0.1  # an untrained net: indefinite
    for structure in ("full", "diag"):
        la = laplace_cli.Laplace(
            model, "classification", "all", structure, curvature="hessian", prior_precision=1e-3
        )
        la.fit(batches(X, y))
        with pytest.raises(NumericalError, match="ggn"):
            la.log_marginal_likelihood()
        with pytest.raises(NumericalError, match="ggn"):
            la.sample(3)
        with pytest.raises(NumericalError, match="ggn"):
            la(X, pred_type="glm")


def test_gridsearch_skips_non_positive_definite_priors() -> None:
    """Grid points whose Λ is not positive definite are not candidates (NaN, skipped)."""
    model = make_model()
    X, y = make_data("classification")
    H, _ = dense_hessian(model, X, y, "classification")
    la = laplace_cli.Laplace(model, "classification", "all", "full", curvature="hessian")
    la.fit(batches(X, y))
    la.optimize_prior_precision(
        method="gridsearch",
        pred_type="glm",
        link_approx="probit",
        val_loader=batches(X, y),
        log_prior_prec_min=-2,
        log_prior_prec_max=3,
        grid_size=30,
    )
    delta = float(la.prior_precision.reshape(-1)[0])
    assert float(torch.linalg.eigvalsh(H + delta * torch.eye(H.shape[0])).min()) > 0


@pytest.mark.parametrize("structure", ["kron", "lowrank"])
def test_kron_and_lowrank_refused_at_fit(structure: str) -> None:
    model = make_model()
    X, y = make_data("classification")
    # created (laplace-torch's KronLaplace(backend=CurvlinopsHessian) is), refused in fit
    la = laplace_cli.Laplace(model, "classification", "all", structure, curvature="hessian")
    with pytest.raises(BadInputError, match="'ggn'"):
        la.fit(batches(X, y))
    with pytest.raises(NotImplementedError):
        ours_curv.CurvlinopsHessian(model, "classification").kron(X, y)


def test_too_many_parameters_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hessian_module, "MAX_HESSIAN_PARAMS", 10)
    model = make_model()
    X, y = make_data("classification")
    la = laplace_cli.Laplace(model, "classification", "all", "diag", curvature="hessian")
    with pytest.raises(BadInputError, match="curvature 'ggn'"):
        la.fit(batches(X, y))


def test_loop_fallback_matches_vectorised() -> None:
    """The plain-autograd fallback (models vmap cannot run) gives the same H and diagonal."""
    model = make_model()
    X, y = make_data("regression")
    params = dict(model.named_parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])
    subset = laplace_cli.Laplace(model, "regression", "all", "full", curvature="hessian").subset
    fn = subset.output_fn(X)

    def loss(t):
        return 0.5 * ((fn(t) - y) ** 2).sum()

    H_vec = hessian_module._hessian_vectorised(loss, theta, False, 7)
    H_loop = hessian_module._hessian_loop(loss, theta, False)
    torch.testing.assert_close(H_vec, H_loop, rtol=1e-12, atol=1e-12)
    d_loop = hessian_module._hessian_loop(loss, theta, True)
    torch.testing.assert_close(d_loop, H_vec.diagonal(), rtol=1e-12, atol=1e-12)


def test_save_and_load_round_trip(tmp_path) -> None:
    from laplace_cli.io.posterior_file import read_posterior, write_posterior
    from laplace_cli.laplace.rebuild import laplace_from_state
    from laplace_cli.laplace.serialization import laplace_state

    model = make_model()
    X, y = make_data("classification")
    la = laplace_cli.Laplace(
        model, "classification", "all", "full", curvature="hessian", prior_precision=20.0
    )
    la.fit(batches(X, y))
    model_ref = {"path": "model.pt", "form": "state_dict", "factory": "m:f", "kwargs": {}}
    tensors, meta = laplace_state(la, model_ref=model_ref, fingerprint="0" * 64)
    write_posterior(tmp_path / "post.st", tensors, meta)
    pf = read_posterior(tmp_path / "post.st")
    assert pf.metadata["curvature"] == "hessian"
    la2 = laplace_from_state(model, pf.tensors, pf.metadata)
    torch.testing.assert_close(la2.posterior.H, la.posterior.H, rtol=0, atol=0)
    assert not la2.posterior.psd_curvature
    torch.testing.assert_close(la2.log_marginal_likelihood(), la.log_marginal_likelihood())


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_last_layer_hessian_equals_the_ggn(likelihood: str) -> None:
    """f is linear in the last layer's weights, so there H = Jᵀ ∂²ℓ/∂f² J, the GGN, exactly."""
    model = make_model()
    X, y = make_data(likelihood)
    Hs = []
    for curvature in ("hessian", "ggn"):
        la = laplace_cli.Laplace(model, likelihood, "last_layer", "full", curvature=curvature)
        la.fit(batches(X, y))
        Hs.append(la.posterior.H)
    torch.testing.assert_close(Hs[0], Hs[1], rtol=1e-10, atol=1e-12)


def test_half_precision_model_refused() -> None:
    model = make_model().to(torch.bfloat16)
    X, y = make_data("classification")
    la = laplace_cli.Laplace(model, "classification", "last_layer", "full", curvature="hessian")
    with pytest.raises(BadInputError, match="'ggn'"):
        la.fit(batches(X.to(torch.bfloat16), y))


def test_binary_matches_dense_reference() -> None:
    model = make_model()
    X, _ = make_data("classification")
    y = (torch.randn(X.shape[0], 3, generator=torch.Generator().manual_seed(5)) > 0).double()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    theta = torch.cat([p.reshape(-1) for p in params.values()])

    def loss(t: torch.Tensor) -> torch.Tensor:
        out, i = {}, 0
        for n, p in params.items():
            out[n] = t[i : i + p.numel()].reshape(p.shape)
            i += p.numel()
        f = functional_call(model, out, (X,))
        return F.binary_cross_entropy_with_logits(f, y, reduction="sum")

    H = torch.autograd.functional.hessian(loss, theta)
    la = laplace_cli.Laplace(model, "binary", "all", "full", curvature="hessian")
    la.fit(batches(X, y))
    torch.testing.assert_close(la.posterior.H, H, rtol=1e-10, atol=1e-12)
