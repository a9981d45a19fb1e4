"""BatchNorm parameters on conv nets: per-sample Jacobians from hooks, against dense references.

BatchNorm weight/bias Jacobians come from the forward-hook captures (x̂ and the output
gradients of the C backward passes), not from per-sample `torch.func` Jacobians through vmap.
Checked in float64 against `tests.reference` (a per-sample jacrev loop): the dense Jacobian,
the GGN diagonal (diag) and the BatchNorm blocks of K-FAC (their exact diagonal).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import laplace_cli.subsets.base as subsets_base
import laplace_cli.subsets.captured_jacobians as captured_jacobians
from laplace_cli import Laplace
from laplace_cli.subsets.base import AllWeights, dense_from_factors
from laplace_cli.subsets.layer_capture import conv_patches
from tests import reference as ref
from tests.laplace.test_reference import assert_close, block_slices


class ConvBN(nn.Module):
    """conv+BN2d+ReLU+pool, strided conv without bias+BN2d, a skip, Linear+BN1d, Linear."""

    def __init__(self, track: bool = True) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.b1 = nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(4, track_running_stats=track)
        self.short = nn.Conv2d(3, 4, 1, stride=2)
        self.l1 = nn.Linear(4 * 3 * 3, 5)
        self.b3 = nn.BatchNorm1d(5)
        self.l2 = nn.Linear(5, 3)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)  # (B, 3, 5, 5)
        h = F.relu(self.b2(self.c2(h)) + self.short(h))  # (B, 4, 3, 3)
        return self.l2(F.relu(self.b3(self.l1(h.flatten(1)))))


def make_model(track: bool = True) -> ConvBN:
    torch.manual_seed(0)
    model = ConvBN(track)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                if m.running_mean is not None:
                    m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


def data(n: int = 7):
    g = torch.Generator().manual_seed(2)
    return torch.randn(n, 2, 10, 10, generator=g), torch.randint(0, 3, (n,), generator=g)


BN_PARAMS = {"b1.weight", "b1.bias", "b2.weight", "b2.bias", "b3.weight", "b3.bias"}


@pytest.fixture
def no_vmap_jacobians(monkeypatch):
    """Fail if any parameter falls back to the per-sample vmap Jacobians."""

    def refuse(model, params, names, x, loop=True):
        raise AssertionError(f"dense vmap Jacobians for {names}")

    monkeypatch.setattr(subsets_base, "dense_jacobians", refuse)


def test_batchnorm_jacobians_come_from_hooks_and_match_dense(float64, no_vmap_jacobians):
    model = make_model()
    X, _ = data()
    subset = AllWeights(model)
    assert BN_PARAMS <= set(subset.captured.params)
    f, factors = subset.factors(X)
    f_ref, J_ref = ref.jacobians(model, subset.names, X)
    assert_close(f, f_ref, rtol=1e-10, what="outputs")
    assert_close(dense_from_factors(factors), J_ref, rtol=1e-10, what="Jacobian")


def test_ggn_diagonal_and_kron_batchnorm_blocks_match_dense(float64, no_vmap_jacobians):
    model = make_model()
    X, y = data()
    batches = [(X[:4], y[:4]), (X[4:], y[4:])]
    dense = ref.ggn(model, [n for n, _ in model.named_parameters()], X, y, "classification")
    diag = Laplace(model, "classification", "all", "diag").fit(batches)
    assert_close(diag.posterior.h, dense.diagonal(), what="diag GGN")
    kron = Laplace(model, "classification", "all", "kron").fit(batches)
    curv = kron.posterior.curvature_dense()
    checked = set()
    for g, s in zip(kron.subset.groups, block_slices(kron)):
        if g.name in BN_PARAMS:
            assert g.kind == "other"
            assert_close(curv[s, s], torch.diag(dense[s, s].diagonal()), what=g.name)
            checked.add(g.name)
    assert checked == BN_PARAMS


def test_batchnorm_on_batch_statistics_is_not_captured(float64):
    """Without running statistics BatchNorm mixes the examples even in eval mode: no hook path
    (the generic per-sample Jacobians treat each example as a batch of its own, as before)."""
    model = make_model(track=False)
    subset = AllWeights(model)
    assert "b2.weight" not in subset.captured.params and "b1.weight" in subset.captured.params


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "mode"),
    [
        ((3, 3), 1, 0, 1, "zeros"),
        ((1, 1), 2, 0, 1, "zeros"),
        ((3, 3), 2, 1, 1, "zeros"),
        ((2, 3), (2, 1), (1, 2), 2, "zeros"),
        ((3, 3), 1, "same", 2, "zeros"),
        ((2, 3), 1, "same", 1, "reflect"),
        ((3, 3), (2, 1), 1, 1, "reflect"),
        ((3, 3), 2, (1, 2), 2, "circular"),
    ],
)
def test_conv_patches_reproduce_the_convolution(float64, kernel, stride, padding, dilation, mode):
    """Patches · W + b is the Conv2d output, for every padding / stride / dilation."""
    conv = nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation)
    conv.padding_mode = mode
    x = torch.randn(2, 3, 9, 10)
    try:
        out = conv(x)
    except RuntimeError:
        pytest.skip("padding larger than the input for this mode")
    p = conv_patches(conv, x)
    got = torch.einsum("bti,oi->bot", p, conv.weight.reshape(4, -1)) + conv.bias[:, None]
    assert_close(got.reshape(out.shape), out, rtol=1e-12, what="conv via patches")
    expected = F.unfold(
        F.pad(
            x, conv._reversed_padding_repeated_twice, mode="constant" if mode == "zeros" else mode
        ),
        kernel,
        dilation=dilation,
        stride=stride,
    ).transpose(1, 2)
    assert torch.equal(p, expected)


def test_gradient_check_runs_once_per_batch_signature(float64, monkeypatch):
    """The check of the captured Jacobians is a property of the model's code: one check for the
    full batches, one for the shorter last batch, and the fit still equals the dense GGN."""
    model = make_model()
    X, y = data(10)
    calls = []
    real = captured_jacobians.agrees_with_gradient

    def spy(f, params, jacobians, W=None):
        calls.append(f.shape[0])
        return real(f, params, jacobians, W)

    monkeypatch.setattr(captured_jacobians, "agrees_with_gradient", spy)
    batches = [(X[:4], y[:4]), (X[4:8], y[4:8]), (X[8:], y[8:])]
    diag = Laplace(model, "classification", "all", "diag").fit(batches)
    assert calls == [4, 2]
    dense = ref.ggn(model, [n for n, _ in model.named_parameters()], X, y, "classification")
    assert_close(diag.posterior.h, dense.diagonal(), what="diag GGN")
    # a later fit on the same Laplace checks a new signature only
    diag.fit([(X[:3], y[:3])], override=False)
    assert calls == [4, 2, 3]
