"""Dense outputs (B, C, *S): `Laplace(output_positions=...)` against dense references.

Every reference is built here from per-position Jacobians of the flattened output
(`torch.func.jacrev`) and the likelihood's Hessian written out per position, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F

from laplace_cli import Laplace
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.dense_outputs import position_variance

DT = torch.float64
N, H, W, C = 5, 3, 4, 2
S = H * W


def make_model(n_out: int = C) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, n_out, 1)).to(DT)


def make_data(likelihood: str = "classification", n_out: int = C) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(N, 1, H, W, generator=g, dtype=DT)
    if likelihood == "classification":
        Y = torch.randint(0, n_out, (N, H, W), generator=g)
        Y[0, 0, :] = -100  # a masked row of pixels
        Y[2, 1, 2] = -100
    elif likelihood == "binary":
        Y = torch.randint(0, 2, (N, n_out, H, W), generator=g).to(DT)
    else:
        Y = torch.randn(N, n_out, H, W, generator=g, dtype=DT)
    return X, Y


def per_position_jacobians(model: nn.Module, X: torch.Tensor, names: list[str]) -> torch.Tensor:
    """J (N, |S|, C, P) of the named parameters, from jacrev over the flattened output."""
    params = dict(model.named_parameters())
    theta = torch.cat([params[n].detach().reshape(-1) for n in names])
    sizes = [params[n].numel() for n in names]

    def f(th: torch.Tensor) -> torch.Tensor:
        pieces = dict(zip(names, th.split(sizes)))
        p = {n: pieces[n].reshape(params[n].shape) if n in pieces else v for n, v in params.items()}
        return functional_call(model, p, (X,)).flatten()

    J = jacrev(f)(theta)  # (N·C·|S|, P)
    n_out = J.shape[0] // (X.shape[0] * S)
    return J.reshape(X.shape[0], n_out, S, -1).transpose(1, 2)


def hessian_rows(likelihood: str, logits: torch.Tensor) -> torch.Tensor:
    """Λ per position (…, C, C) for logits (…, C)."""
    if likelihood == "classification":
        p = logits.softmax(-1)
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    if likelihood == "binary":
        p = logits.sigmoid()
        return torch.diag_embed(p * (1 - p))
    return torch.eye(logits.shape[-1], dtype=DT).expand(*logits.shape, logits.shape[-1])


def weights(Y: torch.Tensor, likelihood: str, mode: str) -> torch.Tensor:
    """w (N, |S|): 1 or 1/|S_n| per unmasked position, 0 where masked."""
    if likelihood != "classification":
        valid = torch.ones(Y.shape[0], S, dtype=torch.bool)
    else:
        valid = Y.reshape(Y.shape[0], -1) != -100
    w = valid.to(DT)
    return w / valid.sum(1, keepdim=True).to(DT) if mode == "mean" else w


def reference(model, X, Y, likelihood, mode, names):
    """(H_ref (P, P), summed weighted loss, J (N, |S|, C, P), logits rows (N, |S|, C))."""
    J = per_position_jacobians(model, X, names)
    with torch.no_grad():
        logits = model(X).reshape(X.shape[0], -1, S).transpose(1, 2)
    lam = hessian_rows(likelihood, logits)
    w = weights(Y, likelihood, mode)
    Href = torch.einsum("ns,nscp,nscd,nsdq->pq", w, J, lam, J)
    if likelihood == "classification":
        y = Y.reshape(X.shape[0], -1)
        ll = -torch.log_softmax(logits, -1).gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    elif likelihood == "binary":
        t = Y.reshape(X.shape[0], -1, S).transpose(1, 2)
        ll = F.binary_cross_entropy_with_logits(logits, t, reduction="none").sum(-1)
    else:
        t = Y.reshape(X.shape[0], -1, S).transpose(1, 2)
        ll = 0.5 * ((logits - t) ** 2).sum(-1)
    return Href, (w * ll).sum(), J, logits


ALL = ["0.weight", "0.bias", "2.weight", "2.bias"]
HEAD = ["2.weight", "2.bias"]


def fitted(likelihood, subset, structure, mode, X=None, Y=None, **kw):
    model = make_model()
    if X is None:
        X, Y = make_data(likelihood)
    la = Laplace(model, likelihood, subset, structure, output_positions=mode, **kw)
    la.fit([(X[:2], Y[:2]), (X[2:], Y[2:])])
    return model, la, X, Y


@pytest.mark.parametrize("likelihood", ["classification", "binary", "regression"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("mode", ["independent", "mean"])
def test_full_and_diag_ggn_are_per_position_sums(likelihood, subset, mode):
    if likelihood == "regression" and mode == "mean":
        pytest.skip("refused for regression (test_refusals)")
    names = ALL if subset == "all" else HEAD
    model, la, X, Y = fitted(likelihood, subset, "full", mode)
    Href, loss, _, _ = reference(model, X, Y, likelihood, mode, names)
    torch.testing.assert_close(la.posterior.curvature_dense(), Href, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(la.loss, loss, rtol=1e-10, atol=0)
    assert la.n_data == N
    _, la_d, _, _ = fitted(likelihood, subset, "diag", mode)
    torch.testing.assert_close(la_d.posterior.h, Href.diagonal(), rtol=1e-8, atol=1e-12)


def output_gradients_wrt_layer(model, X, layer, lam_sqrt_w):
    """g (N, |S|·K, T, d_out): Λ^½-weighted ∂f/∂z of the layer output z, by jacrev over ε."""
    mod = dict(model.named_modules())[layer]
    outs = []
    for n in range(X.shape[0]):
        xn = X[n : n + 1]
        with torch.no_grad():
            eps0 = torch.zeros_like(mod(xn if layer == "0" else torch.tanh(model[0](xn))))

        def f(eps, xn=xn):
            h = mod.register_forward_hook(lambda m, a, o: o + eps)
            try:
                return model(xn).reshape(-1)
            finally:
                h.remove()

        Jz = jacrev(f)(eps0).reshape(C, S, eps0.shape[1], -1)  # (C, |S|, d_out, T)
        g = torch.einsum("csot,sck->skto", Jz, lam_sqrt_w[n])  # Σ_c ∂f_cs/∂z · L_sck
        outs.append(g.reshape(-1, g.shape[2], g.shape[3]))
    return torch.stack(outs)


@pytest.mark.parametrize("mode", ["independent", "mean"])
def test_kron_factors_sum_every_positions_output_gradient(mode):
    likelihood = "classification"
    model, la, X, Y = fitted(likelihood, "all", "kron", mode)
    with torch.no_grad():
        logits = model(X).reshape(N, C, S).transpose(1, 2)
    p = logits.softmax(-1)
    L = torch.diag_embed(p.sqrt()) - p.unsqueeze(-1) * p.sqrt().unsqueeze(-2)  # L Lᵀ = Λ
    L = L * weights(Y, likelihood, mode).sqrt()[..., None, None]
    for i, (layer, conv) in enumerate([("0", model[0]), ("2", model[2])]):
        g = output_gradients_wrt_layer(model, X, layer, L)  # (N, |S|·C, T, d_out)
        B_ref = torch.einsum("nkto,nktq->oq", g, g)
        a = F.unfold(
            X if layer == "0" else torch.tanh(model[0](X)).detach(),
            conv.kernel_size,
            padding=conv.padding,
        ).transpose(1, 2)  # (N, T, d_in)
        A_ref = torch.einsum("nti,ntj->ij", a, a) / (N * a.shape[1])
        torch.testing.assert_close(la.posterior.B[2 * i], B_ref, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(la.posterior.B[2 * i + 1], B_ref, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(
            la.posterior.A_sum[2 * i] / la.posterior.n_data, A_ref, rtol=1e-8, atol=1e-12
        )


def test_masked_positions_contribute_nothing():
    """Masking a position (ignore_index) equals dropping it: a fit where the masked pixels
    are masked gives the same loss and GGN as one where they are masked *and* altered."""
    X, Y = make_data()
    Y2 = Y.clone()
    Y2[0] = -100  # input 0 wholly masked
    X2 = X.clone()
    # Dropping: input 0 contributes no position, so it may be any image at all (diag, full, B).
    X3, Y3 = X2[1:], Y2[1:]
    for structure in ("full", "kron"):
        _, la_a, _, _ = fitted("classification", "all", structure, "independent", X2, Y2)
        model = make_model()
        la_b = Laplace(model, "classification", "all", structure, output_positions="independent")
        la_b.fit([(X3[:1], Y3[:1]), (X3[1:], Y3[1:])])
        torch.testing.assert_close(la_a.loss, la_b.loss, rtol=1e-12, atol=0)
        if structure == "full":
            torch.testing.assert_close(
                la_a.posterior.curvature_dense(),
                la_b.posterior.curvature_dense(),
                rtol=1e-10,
                atol=1e-13,
            )
        else:  # K-FAC's B sums over positions; A averages every input's activations
            for Ba, Bb in zip(la_a.posterior.B, la_b.posterior.B):
                torch.testing.assert_close(Ba, Bb, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
def test_predictive_per_position_is_dense_j_sigma_jt(subset, structure):
    names = ALL if subset == "all" else HEAD
    model, la, X, Y = fitted(
        "classification", subset, structure, "independent", prior_precision=0.7
    )
    # The structure's own precision Λ, inverted densely.
    Sigma = torch.linalg.inv(la.posterior.dense_precision(la.prior_precision, la.curvature_scale()))
    J = per_position_jacobians(model, X[:3], names)  # (3, |S|, C, P)
    var_ref = torch.einsum("nscp,pq,nsdq->nscd", J, Sigma, J)
    f_mu, f_var = position_variance(la, X[:3])
    assert f_mu.shape == (3, C, H, W) and f_var.shape == (3, C, C, H, W)
    torch.testing.assert_close(f_mu, model(X[:3]).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        f_var.reshape(3, C, C, S).permute(0, 3, 1, 2), var_ref, rtol=1e-8, atol=1e-12
    )
    mu_rows = f_mu.reshape(3, C, S).transpose(1, 2)
    kappa = 1 / torch.sqrt(1 + math.pi / 8 * var_ref.diagonal(dim1=-2, dim2=-1))
    probs_ref = torch.softmax(mu_rows * kappa, -1).transpose(1, 2).reshape(3, C, H, W)
    torch.testing.assert_close(la(X[:3]), probs_ref, rtol=1e-10, atol=1e-12)


def test_mc_and_nn_predictives_per_position():
    model, la, X, Y = fitted("classification", "all", "full", "independent")
    gen = torch.Generator().manual_seed(0)
    p_mc = la(X[:2], link_approx="mc", n_samples=4000, generator=gen)
    f_mu, f_var = position_variance(la, X[:2])
    # Reference MC: one Gaussian per position, drawn here.
    mu = f_mu.reshape(2, C, S).transpose(1, 2)
    cov = f_var.reshape(2, C, C, S).permute(0, 3, 1, 2)
    draws = torch.distributions.MultivariateNormal(mu, cov + 1e-12 * torch.eye(C, dtype=DT))
    ref = draws.sample((20000,)).softmax(-1).mean(0).transpose(1, 2).reshape(2, C, H, W)
    assert p_mc.shape == (2, C, H, W)
    assert float((p_mc - ref).abs().max()) < 0.02
    p_nn = la(X[:2], pred_type="nn", link_approx="mc", n_samples=50, generator=gen)
    assert p_nn.shape == (2, C, H, W)
    torch.testing.assert_close(p_nn.sum(1), torch.ones(2, H, W, dtype=DT))
    samples = la.predictive_samples(X[:2], pred_type="glm", n_samples=7, generator=gen)
    assert samples.shape == (7, 2, C, H, W)  # softmax over the classes of each position
    torch.testing.assert_close(samples.sum(2), torch.ones(7, 2, H, W, dtype=DT))


@pytest.mark.parametrize("mode", ["independent", "mean"])
def test_log_marginal_likelihood_matches_dense_formula(mode):
    model, la, X, Y = fitted("classification", "all", "full", mode, prior_precision=0.5)
    Href, loss, _, _ = reference(model, X, Y, "classification", mode, ALL)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    P = theta.numel()
    delta = 0.5
    ref = -loss - 0.5 * (
        torch.logdet(Href + delta * torch.eye(P, dtype=DT))
        - P * math.log(delta)
        + delta * theta @ theta
    )
    torch.testing.assert_close(la.log_marginal_likelihood(), ref, rtol=1e-10, atol=1e-10)
    # Tuning by marginal likelihood runs on the same quantities and improves it.
    before = float(la.log_marginal_likelihood())
    la.optimize_prior_precision(method="marglik", n_steps=30)
    assert float(la.log_marginal_likelihood()) >= before - 1e-9


def test_regression_targets_without_channel_axis():
    """A one-output regression model takes targets (B, *S) as (B, 1, *S)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 1, 1)).to(DT)
    X, Y = make_data("regression", n_out=1)
    la = Laplace(model, "regression", "all", "full", output_positions="independent")
    la.fit([(X, Y[:, 0])])
    Href, loss, _, _ = reference(model, X, Y, "regression", "independent", ALL)
    torch.testing.assert_close(la.posterior.curvature_dense(), Href, rtol=1e-8, atol=1e-12)
    mean, var = la(X[:2])
    assert mean.shape == (2, 1, H, W) and var.shape == (2, 1, 1, H, W)
    # n_outputs counts every position, so the Gaussian normaliser is N·|S|·log(σ√2π).
    assert la.n_outputs == S


def test_refusals():
    model = make_model()
    with pytest.raises(BadInputError, match="independent"):
        Laplace(model, "regression", "all", "diag", output_positions="mean")
    with pytest.raises(BadInputError, match="expected 'independent' or 'mean'"):
        Laplace(model, "classification", "all", "diag", output_positions="sum")
    X, Y = make_data()
    la = Laplace(model, "classification", "all", "diag", output_positions="independent")
    with pytest.raises(BadInputError, match="ignore_index"):
        la.fit([(X, Y.clamp_min(0) + 1)])
    flat = nn.Sequential(nn.Flatten(), nn.Linear(S, C)).to(DT)
    with pytest.raises(BadInputError, match="leave output_positions unset"):
        Laplace(flat, "classification", "all", "diag", output_positions="mean").fit(
            [(X, Y[:, 0, :2])]
        )
    with pytest.raises(BadInputError, match="1×1 convolution"):
        Laplace(flat, "classification", "last_layer", "diag", output_positions="mean")
    la.fit([(X, Y)])
    with pytest.raises(BadInputError, match="joint"):
        la(X[:1], joint=True)
    # (B, C, *S) without the option is still refused, naming it.
    with pytest.raises(BadInputError, match="output_positions"):
        Laplace(model, "classification", "all", "diag").fit([(X, Y)])


@pytest.mark.filterwarnings("ignore:grid search optimum")
def test_gridsearch_scores_unmasked_positions_as_rows():
    """Grid search on dense outputs: the loss at each prior is the mean NLL over the
    unmasked positions of `la(x)`, computed here from the predictions themselves."""
    model, la, X, Y = fitted("classification", "all", "diag", "mean")
    grid = [0.1, 1.0, 10.0]
    result = la.optimize_prior_precision(
        method="gridsearch", val_loader=[(X, Y)], grid=grid, refine=0
    )
    y = Y.reshape(N, -1)
    keep = y != -100
    for prior, (_, value) in zip(grid, result["curve"]):
        la.prior_precision = prior
        probs = la(X).reshape(N, C, -1).transpose(1, 2)[keep]  # (rows, C)
        nll = -probs.gather(1, y[keep].unsqueeze(1)).log().mean()
        assert value == pytest.approx(float(nll), rel=1e-10)
    map_probs = model(X).detach().reshape(N, C, -1).transpose(1, 2)[keep].softmax(-1)
    assert result["map_loss"] == pytest.approx(
        float(-map_probs.gather(1, y[keep].unsqueeze(1)).log().mean()), rel=1e-10
    )


def test_empirical_fisher_and_subnetwork_per_position():
    """EF: Σ_{n,s} w g gᵀ with g = J_sᵀ (p_s − onehot(y_s)); a subnetwork: the dense GGN's
    sub-block."""
    model, la, X, Y = fitted("classification", "all", "full", "mean", curvature="ef")
    J = per_position_jacobians(model, X, ALL)
    with torch.no_grad():
        logits = model(X).reshape(N, C, S).transpose(1, 2)
    y = Y.reshape(N, -1)
    r = logits.softmax(-1) - F.one_hot(y.clamp_min(0), C).to(DT)
    g = torch.einsum("nscp,nsc->nsp", J, r)
    w = weights(Y, "classification", "mean")
    torch.testing.assert_close(
        la.posterior.curvature_dense(),
        torch.einsum("ns,nsp,nsq->pq", w, g, g),
        rtol=1e-8,
        atol=1e-12,
    )
    idx = torch.tensor([0, 5, 29, 31, 36])
    model, la, X, Y = fitted(
        "classification", "subnetwork", "full", "independent", subnetwork_indices=idx
    )
    Href, _, _, _ = reference(model, X, Y, "classification", "independent", ALL)
    torch.testing.assert_close(
        la.posterior.curvature_dense(), Href[idx][:, idx], rtol=1e-8, atol=1e-12
    )


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_posterior_file_round_trip(tmp_path, subset):
    from laplace_cli.io.posterior_file import read_posterior, write_posterior
    from laplace_cli.laplace.rebuild import laplace_from_state
    from laplace_cli.laplace.serialization import laplace_state

    X, Y = make_data()
    Y[Y == -100] = -1
    model, la, X, Y = fitted("classification", subset, "kron", "mean", X, Y, ignore_index=-1)
    tensors, meta = laplace_state(la, model_ref={"path": "m.pt"}, fingerprint="0" * 64)
    write_posterior(tmp_path / "p.st", tensors, meta)
    pf = read_posterior(tmp_path / "p.st")
    assert pf.metadata["output_positions"] == "mean" and pf.metadata["ignore_index"] == -1
    assert pf.metadata["output_shape"] == [C, H, W]
    la2 = laplace_from_state(model, pf.tensors, pf.metadata)
    assert la2.output_positions == "mean" and la2.ignore_index == -1
    torch.testing.assert_close(la2(X[:2]), la(X[:2]), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(la2.log_marginal_likelihood(), la.log_marginal_likelihood())


@pytest.mark.parametrize("mode", ["independent", "mean"])
def test_last_layer_kron_is_closed_form(mode):
    """A 1×1-conv head: B = Σ_{n,s} w_ns Λ_ns, A = mean over inputs and positions of φ φᵀ."""
    model, la, X, Y = fitted("classification", "last_layer", "kron", mode)
    with torch.no_grad():
        phi = torch.tanh(model[0](X)).reshape(N, 3, S).transpose(1, 2)  # (N, |S|, D)
        logits = model(X).reshape(N, C, S).transpose(1, 2)
    w = weights(Y, "classification", mode)
    B_ref = torch.einsum("ns,nscd->cd", w, hessian_rows("classification", logits))
    A_ref = torch.einsum("nsi,nsj->ij", phi, phi) / (N * S)
    torch.testing.assert_close(la.posterior.B[0], B_ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(la.posterior.B[1], B_ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(
        la.posterior.A_sum[0] / la.posterior.n_data, A_ref, rtol=1e-10, atol=1e-13
    )
