"""Back-propagating the curvature's output root (`AllWeights.factor_directions`).

diag / kron fits over all weights send the K columns of W (B, C, K) — the softmax GGN's rank
C − 1 root, the MC Fisher's samples, the empirical Fisher's gradient — backwards as cotangents,
instead of the C unit vectors followed by a contraction with W. The curvature must be the same
as the per-class route's (which the dense-oracle tests pin down), on every kind of factor: Linear
and Conv2d layers, captured BatchNorm / LayerNorm Jacobians, a bare parameter with vmapped dense
Jacobians, and graphs that back-propagate one cotangent at a time (conv + BN + max-pool).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from laplace_cli import Laplace
from laplace_cli.core import likelihoods as lik
from laplace_cli.core.enums import Likelihood
from laplace_cli.laplace.approximation import Laplace as LaplaceClass
from laplace_cli.subsets.base import AllWeights


class _Scaled(nn.Module):
    """A bare parameter outside any layer: dense (vmapped) Jacobians, projected afterwards."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return x * self.scale


class _ConvNet(nn.Module):
    def __init__(self, n_out: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3)
        self.b1 = nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 4, 2, padding=1)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 4 * 4 * 4))  # dense Jacobians
        self.fc = nn.Linear(4 * 4 * 4, n_out)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        return self.fc(F.relu(self.c2(x)).flatten(1) * self.gain)


def _mlp(n_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(5, 7), nn.LayerNorm(7), nn.Tanh(), _Scaled(7), nn.Linear(7, n_out)
    )


def _conv(n_out: int) -> nn.Module:
    model = _ConvNet(n_out)
    with torch.no_grad():  # running statistics as after training
        model.b1.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        model.b1.running_var.copy_(torch.tensor([0.5, 1.5, 2.0]))
        model.b1.weight.copy_(torch.tensor([1.2, 0.8, 1.1]))
    return model


def _data(kind: str, likelihood: str, n_out: int):
    g = torch.Generator().manual_seed(3)
    shape = (24, 5) if kind == "mlp" else (24, 1, 9, 9)
    X = torch.randn(shape, generator=g, dtype=torch.float64)
    if likelihood == "classification":
        y = torch.randint(0, n_out, (24,), generator=g)
    elif likelihood == "binary":
        y = torch.randint(0, 2, (24, n_out), generator=g).double()
    else:
        y = torch.randn(24, n_out, generator=g, dtype=torch.float64)
    return [(X[i : i + 8], y[i : i + 8]) for i in range(0, 24, 8)]


def _fit(monkeypatch, route: bool, kind, likelihood, structure, curvature, n_out):
    torch.manual_seed(0)
    model = (_mlp if kind == "mlp" else _conv)(n_out).double()
    roots: list[int] = []
    real = AllWeights.factor_directions

    def spy(self, x, root, *rest):
        roots.append(1)
        return real(self, x, root, *rest)

    with monkeypatch.context() as m:
        m.setattr(AllWeights, "factor_directions", spy)
        if not route:
            m.setattr(LaplaceClass, "_backpropagates_root", lambda self: False)
        la = Laplace(
            model, likelihood, "all", structure, curvature=curvature, n_mc_samples=3, seed=5
        ).fit(_data(kind, likelihood, n_out))
    assert bool(roots) == route
    return la


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("structure", ["diag", "kron"])
@pytest.mark.parametrize(
    "likelihood,curvature",
    [
        ("classification", "ggn"),
        ("classification", "ef"),
        ("classification", "mc_fisher"),
        ("regression", "ggn"),
        ("binary", "ggn"),
    ],
)
def test_root_route_equals_per_class_route(monkeypatch, kind, structure, likelihood, curvature):
    n_out = 2 if likelihood == "binary" else 4
    ref = _fit(monkeypatch, False, kind, likelihood, structure, curvature, n_out)
    la = _fit(monkeypatch, True, kind, likelihood, structure, curvature, n_out)
    assert la.n_data == ref.n_data == 24
    assert torch.allclose(la.loss, ref.loss, rtol=1e-12)
    for key, t in ref.posterior.raw_state().items():
        got = la.posterior.raw_state()[key]
        assert torch.allclose(got, t, rtol=1e-9, atol=1e-12), key
    X = _data(kind, likelihood, n_out)[0][0]
    assert torch.allclose(la.log_marginal_likelihood(), ref.log_marginal_likelihood(), rtol=1e-9)
    got, want = la(X), ref(X)
    for a, b in zip(got, want) if isinstance(want, tuple) else [(got, want)]:
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def test_two_class_ggn_backpropagates_one_column(monkeypatch):
    """The softmax GGN's root has C − 1 columns: one backward pass for two classes."""
    torch.manual_seed(0)
    model = _mlp(2).double()
    seen: list[int] = []
    real = AllWeights.factor_directions

    def spy(self, x, root, *rest):
        f, directions = real(self, x, root, *rest)
        pieces = list(directions)
        seen.append(sum(p[0].G.shape[1] for p in pieces))
        return f, iter(pieces)

    monkeypatch.setattr(AllWeights, "factor_directions", spy)
    Laplace(model, "classification", "all", "kron").fit(_data("mlp", "classification", 2))
    assert seen == [1, 1, 1]


@pytest.mark.parametrize("n_out", [2, 3, 10])
def test_min_rank_root_reproduces_the_softmax_hessian(n_out):
    g = torch.Generator().manual_seed(0)
    f = 4 * torch.randn(50, n_out, generator=g, dtype=torch.float64)
    f[0] = 0.0
    f[1, -1] = 60.0  # p ≈ e_C: the reflection's w = u + e_C stays away from zero
    f[2, 0] = 60.0
    L = lik.hessian_root_min(Likelihood.CLASSIFICATION, f)
    assert L.shape == (50, n_out, n_out - 1)
    H = lik.hessian(Likelihood.CLASSIFICATION, f)
    assert torch.allclose(L @ L.mT, H, atol=1e-14)


@pytest.mark.parametrize("kind,pieces", [("mlp", 1), ("conv", 3)])
def test_unbatchable_graphs_stream_one_column_per_pass(monkeypatch, kind, pieces):
    """conv + BatchNorm + max-pool graphs have no batched backward: one piece per root column
    (no stacked (K, B, ...) buffer); other graphs back-propagate all columns in one piece."""
    torch.manual_seed(0)
    model = (_mlp if kind == "mlp" else _conv)(4).double()
    seen: list[list[int]] = []
    real = AllWeights.factor_directions

    def spy(self, x, root, *rest):
        f, directions = real(self, x, root, *rest)
        got = list(directions)
        seen.append([p[-1].G.shape[1] for p in got])
        return f, iter(got)

    monkeypatch.setattr(AllWeights, "factor_directions", spy)
    Laplace(model, "classification", "all", "kron").fit(_data(kind, "classification", 4))
    assert seen == [[3] if pieces == 1 else [1, 1, 1]] * 3
