"""A stride-1 Conv2d's K-FAC input factor from correlations (`subsets.conv_input_gram`) against
the Gram of its im2col patches, and a K-FAC fit that takes the route against one that does not."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import laplace_cli.subsets.conv_input_gram as cig
from laplace_cli import Laplace
from laplace_cli.subsets.conv_input_gram import conv_input_gram, input_gram_route
from laplace_cli.subsets.layer_capture import conv_patches
from tests.laplace.test_reference import assert_close


def patch_gram(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Σ_{b,t} a aᵀ of `F.unfold`'s patches (the definition)."""
    pad = conv._reversed_padding_repeated_twice
    xp = F.pad(x, pad)
    a = F.unfold(xp, conv.kernel_size, dilation=conv.dilation)  # (B, d_in, T)
    return torch.einsum("bit,bjt->ij", a, a)


@pytest.mark.parametrize(
    ("kernel", "padding", "dilation", "size"),
    [
        (3, 1, 1, (9, 8)),
        (3, 0, 1, (9, 8)),
        ((3, 5), (2, 1), 1, (7, 11)),
        (3, 2, 2, (10, 9)),
        (4, "same", 1, (8, 8)),  # even kernel: unequal padding before and after
        ((2, 3), "same", (2, 1), (9, 7)),
        (5, 1, 1, (9, 10)),  # padding narrower than 'same'
        (3, 3, 1, (6, 6)),  # padding wider than 'same'
        (3, "valid", 1, (5, 7)),
        (1, 0, 1, (5, 5)),
    ],
)
def test_equals_the_patch_gram(float64, kernel, padding, dilation, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel, padding=padding, dilation=dilation)
    x = torch.randn(5, 3, *size)
    expected = patch_gram(conv, x)
    # the definition and the module's patches agree (the ordering the factor uses)
    a = conv_patches(conv, x)
    assert_close(torch.einsum("bti,btj->ij", a, a), expected, rtol=1e-12, what="patches")
    got = conv_input_gram(conv, x)
    assert_close(got, expected, rtol=1e-12, what="correlation gram")
    assert torch.equal(got, got.T)


def test_route_only_where_it_applies_and_pays():
    x = torch.randn(2, 8, 24, 24)
    assert input_gram_route(nn.Conv2d(8, 4, 3, padding=1), x) is not None
    refused = [
        nn.Conv2d(8, 4, 3, padding=1, stride=2),
        nn.Conv2d(8, 4, 3, padding=1, groups=2),
        nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(8, 4, 1),
        nn.Linear(24, 3),
    ]
    assert all(input_gram_route(m, x) is None for m in refused)
    assert input_gram_route(nn.Conv2d(8, 4, 3, padding=1), x[:, :, :20, :20]) is None  # small
    assert input_gram_route(nn.Conv2d(4, 4, 3, padding=1), x[:, :4]) is None  # few channels
    route = input_gram_route(nn.Conv2d(8, 4, 3, padding=1), x)
    assert route is not None and route(torch.float64).dtype == torch.float64


def modules_passed_to(monkeypatch, owner, name: str) -> list[nn.Module]:
    """The modules `owner.<name>(module, x)` is called with, in order (a spy)."""
    calls: list[nn.Module] = []
    real = getattr(owner, name)

    def spy(module, x):
        calls.append(module)
        return real(module, x)

    monkeypatch.setattr(owner, name, spy)
    return calls


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c0 = nn.Conv2d(1, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 4, 3, padding=1, stride=2)
        self.head = nn.Linear(4 * 12 * 12, 3)

    def forward(self, x):
        h = torch.tanh(self.c0(x))
        h = torch.tanh(self.c1(h))
        return self.head(torch.tanh(self.c2(h)).flatten(1))


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_kron_fit_with_the_route_equals_the_fit_without(float64, monkeypatch, likelihood):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(10, 1, 24, 24, generator=g)
    y = (
        torch.randint(0, 3, (10,), generator=g)
        if likelihood == "classification"
        else (torch.randn(10, 3, generator=g))
    )
    batches = [(X[:4], y[:4]), (X[4:], y[4:])]
    model = Net().double().eval()
    calls = modules_passed_to(monkeypatch, cig, "conv_input_gram")
    with_route = Laplace(model, likelihood, "all", "kron").fit(batches)
    assert calls == [model.c1, model.c1]  # c0: one channel; c2: stride 2; once per batch
    monkeypatch.setattr(cig, "MIN_POSITIONS", 10**9)
    without = Laplace(model, likelihood, "all", "kron").fit(batches)
    assert len(calls) == 2
    for a, b in zip(with_route.posterior.A_sum, without.posterior.A_sum):
        if a is not None:
            assert_close(a, b, rtol=1e-12, what="input factor")
    assert_close(
        with_route.log_marginal_likelihood(), without.log_marginal_likelihood(), rtol=1e-12
    )


def test_half_precision_factor_is_computed_in_the_posterior_dtype():
    """A bfloat16 model's input factor is summed in float32, as its patches' Gram would be."""
    model = Net().to(torch.bfloat16).eval()
    X = torch.randn(4, 1, 24, 24).to(torch.bfloat16)
    y = torch.randint(0, 3, (4,))
    la = Laplace(model, "classification", "all", "kron").fit([(X, y)])
    A = la.posterior.A_sum[[g.name for g in la.subset.groups].index("c1.weight")]
    assert A.dtype == torch.float32
    h = torch.tanh(model.c0(X)).float()
    expected = patch_gram(model.c1, h) / (24 * 24)
    assert_close(A, expected, rtol=1e-5, what="bfloat16 model's input factor")


def test_routed_layers_build_their_patches_only_when_used(float64, monkeypatch):
    """A K-FAC fit never builds a routed conv's patches; a diag fit (which needs them) builds
    them once per batch, shared by the root's columns, and equals the fit without the route."""
    import laplace_cli.subsets.base as subsets_base

    g = torch.Generator().manual_seed(3)
    X = torch.randn(6, 1, 24, 24, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    batches = [(X[:3], y[:3]), (X[3:], y[3:])]
    model = Net().double().eval()
    built = modules_passed_to(monkeypatch, subsets_base, "layer_input")
    Laplace(model, "classification", "all", "kron").fit(batches)
    assert model.c1 not in built and built.count(model.c2) == 2
    built.clear()
    diag = Laplace(model, "classification", "all", "diag").fit(batches)
    assert built.count(model.c1) == 2  # once per batch, not once per root column
    monkeypatch.setattr(cig, "MIN_POSITIONS", 10**9)
    plain = Laplace(model, "classification", "all", "diag").fit(batches)
    assert_close(diag.posterior.h, plain.posterior.h, rtol=1e-12, what="diag GGN")
