"""Edge cases of the weight-space flavours that laplace-torch's own tests exercise, side by side
with laplace-torch 0.3 where it runs (float64, rtol 1e-4) and against dense references:

- `log_prob` / `square_norm` before `fit`: the prior's density (H = 0), as laplace-torch;
- `la(x, joint=True, diagonal_output=True)`: the joint covariance (`joint` wins), as there;
- a model whose layers see more rows than the batch has examples (a reward model flattening
  (B, 2, d) pairs): diag and full from dense Jacobians, kron refused with the alternative;
- error types laplace-torch's callers catch: a missing `subnetwork_indices` is a `TypeError`
  (and a `ValueError`), an unknown `last_layer_name` a `KeyError` (and a `ValueError`).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_cli import Laplace
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.flavours import DiagLaplace, FullLaplace, KronLaplace

from .behaviour_helpers import close, data, loader, mlp, needs_laplace_torch

FLAVOURS = {"diag": DiagLaplace, "kron": KronLaplace, "full": FullLaplace}


def _dense_prior_log_prob(theta, mean, prior_precision):
    delta = theta - mean
    p = len(theta)
    return (
        -p / 2 * math.log(2 * math.pi)
        + p / 2 * math.log(prior_precision)
        - prior_precision * (delta @ delta) / 2
    )


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_log_prob_before_fit_is_the_prior(structure):
    la = FLAVOURS[structure](mlp(), "classification", prior_precision=0.7, prior_mean=0.2)
    P = sum(p.numel() for p in la.model.parameters())
    theta = torch.randn(P, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want = _dense_prior_log_prob(theta, torch.full_like(theta, 0.2), 0.7)
    close(la.log_prob(theta), want, rtol=1e-10)
    close(la.log_prob(theta, normalized=False), -0.7 * ((theta - 0.2) ** 2).sum() / 2)
    # after fit: the Gaussian N(θ*, Λ⁻¹) with the dense precision
    X, y = data()
    la.fit(loader(X, y))
    prec = la.posterior_precision
    prec = prec.to_matrix() if hasattr(prec, "to_matrix") else prec
    prec = torch.diag(prec) if prec.ndim == 1 else prec  # DiagLaplace: laplace-torch's vector
    ref = torch.distributions.MultivariateNormal(la.mean, precision_matrix=prec)
    close(la.log_prob(theta), ref.log_prob(theta))


@needs_laplace_torch
@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_log_prob_matches_laplace_torch(structure):
    import laplace
    from laplace.curvature import CurvlinopsGGN

    model = mlp()
    theta = torch.randn(
        sum(p.numel() for p in model.parameters()),
        generator=torch.Generator().manual_seed(4),
        dtype=torch.float64,
    )
    ours = Laplace(model, "classification", "all", structure, prior_precision=0.7)
    theirs = laplace.Laplace(
        model, "classification", "all", structure, prior_precision=0.7, backend=CurvlinopsGGN
    )
    close(ours.log_prob(theta), theirs.log_prob(theta))
    X, y = data()
    ours.fit(loader(X, y))
    theirs.fit(loader(X, y))
    close(ours.log_prob(theta), theirs.log_prob(theta))


@needs_laplace_torch
@pytest.mark.parametrize("structure", ["diag", "full"])
def test_joint_ignores_diagonal_output_as_laplace_torch(structure):
    import laplace
    from laplace.curvature import CurvlinopsGGN

    X, y = data("regression")
    model = mlp()
    ours = Laplace(model, "regression", "all", structure, sigma_noise=0.3)
    theirs = laplace.Laplace(
        model, "regression", "all", structure, sigma_noise=0.3, backend=CurvlinopsGGN
    )
    ours.fit(loader(X, y))
    theirs.fit(loader(X, y))
    for diagonal_output in (True, False):
        mu, cov = ours(X[:4], joint=True, diagonal_output=diagonal_output)
        t_mu, t_cov = theirs(X[:4], pred_type="glm", joint=True, diagonal_output=diagonal_output)
        assert cov.shape == (12, 12)
        close(mu, t_mu)
        close(cov, t_cov)
    _, var = ours(X[:4], joint=False, diagonal_output=True)
    assert var.shape == (4, 3)


class PairModel(nn.Module):
    """A reward model: (B, 2, d) pairs are flattened to (2B, d) rows, the two rewards are the
    logits; single inputs (B, d) give one reward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            return self.net(x.reshape(-1, x.shape[-1])).reshape(x.shape[0], 2)
        return self.net(x)


def _pairs():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(10, 2, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (10,), generator=g)
    return X, y


def _dense_ggn(model, X, y):
    """Σₙ Jₙᵀ (diag p − p pᵀ) Jₙ with Jₙ from torch.autograd (one example at a time)."""
    params = [p for p in model.parameters()]
    H = 0
    for x, _ in zip(X, y):
        f = model(x[None])[0]
        J = torch.stack(
            [
                torch.cat(
                    [g.reshape(-1) for g in torch.autograd.grad(f[c], params, retain_graph=True)]
                )
                for c in range(len(f))
            ]
        )
        p = torch.softmax(f.detach(), -1)
        H = H + J.T @ (torch.diag(p) - torch.outer(p, p)) @ J
    return H


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_rows_not_examples_use_dense_jacobians(structure):
    X, y = _pairs()
    model = PairModel()
    la = Laplace(model, "reward_modeling", "all", structure, prior_precision=1.0)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=3))
    H = _dense_ggn(model, X, y)
    close(la.H, torch.diagonal(H) if structure == "diag" else H)
    mu, var = la(X[:, 0])  # single inputs: one reward each
    assert mu.shape == var.shape[:2] == (10, 1)


def test_rows_not_examples_refused_for_kron():
    X, y = _pairs()
    la = Laplace(PairModel(), "reward_modeling", "all", "kron")
    with pytest.raises(BadInputError, match="not one row per example.*'diag' or 'full'"):
        la.fit(DataLoader(TensorDataset(X, y), batch_size=3))


@needs_laplace_torch
def test_rows_not_examples_match_laplace_torch_diag():
    import laplace
    from laplace.curvature import CurvlinopsGGN

    X, y = _pairs()
    model = PairModel()
    ours = Laplace(model, "reward_modeling", "all", "diag", prior_precision=1.0)
    theirs = laplace.Laplace(
        model, "reward_modeling", "all", "diag", prior_precision=1.0, backend=CurvlinopsGGN
    )
    ours.fit(DataLoader(TensorDataset(X, y), batch_size=3))
    theirs.fit(DataLoader(TensorDataset(X, y), batch_size=3))
    close(ours.H, theirs.H)
    close(ours(X[:4, 0])[1], theirs(X[:4, 0], pred_type="glm")[1])


def test_missing_subnetwork_indices_is_type_and_value_error():
    model = mlp()
    for call in (
        lambda: Laplace(model, "classification", "subnetwork", "full"),
        lambda: Laplace(model, "classification", "subnetwork", "diag", subnetwork_indices=None),
    ):
        with pytest.raises(TypeError, match="needs subnetwork_indices"):
            call()
        with pytest.raises(ValueError, match="needs subnetwork_indices"):
            call()


def test_unknown_last_layer_name_is_key_and_value_error():
    model = mlp()
    for error in (KeyError, ValueError):
        with pytest.raises(error, match="no module named '123'"):
            Laplace(model, "classification", "last_layer", "diag", last_layer_name="123")
