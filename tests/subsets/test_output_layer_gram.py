"""The output layer's K-FAC output factor in closed form.

Under the GGN root L (L Lᵀ = ∂²ℓ/∂f²), the layer whose output is f itself has output gradients
L's columns, so its factor Σ_b Σ_k l_bk l_bkᵀ is Σ_b ∂²ℓ/∂f_b² (`likelihoods.hessian_sum`):
B·C² flops instead of the B·C³ product over the C − 1 root columns. It must give the same
posterior as the product, in one pass and in column chunks, and must not be used where the
last layer's output is not f.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_cli import Laplace
from laplace_cli.core import likelihoods as lik
from laplace_cli.core.enums import Likelihood
from laplace_cli.posterior import kron as kron_module
from laplace_cli.subsets import base, root_pieces
from laplace_cli.subsets.factors import LayerFactor, RootClosedForms
from laplace_cli.subsets.precision import cast_factors

N_OUT = 7


def _mlp(scale_output: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, N_OUT)]
    model = nn.Sequential(*layers)

    class Scaled(nn.Module):  # f = 2·(last layer's output): the closed form must not apply
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x):
            return 2.0 * self.inner(x)

    return (Scaled() if scale_output else model).double()


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(
        0, N_OUT, (n,), generator=g
    )


@pytest.mark.parametrize("likelihood", list(Likelihood))
def test_hessian_sum_is_the_sum_of_the_per_sample_hessians(likelihood) -> None:
    f = torch.randn(11, 4, dtype=torch.float64)
    expected = lik.hessian(likelihood, f).sum(0)
    torch.testing.assert_close(lik.hessian_sum(likelihood, f), expected, rtol=1e-13, atol=1e-14)
    root = lik.hessian_root_min(likelihood, f)
    torch.testing.assert_close(
        torch.einsum("bck,bdk->cd", root, root), expected, rtol=1e-12, atol=1e-13
    )


def _fit(model: nn.Module, likelihood: str = "classification") -> Laplace:
    x, y = _data()
    if likelihood == "regression":
        y = torch.randn(len(x), N_OUT, dtype=torch.float64)
    la = Laplace(model, likelihood, subset_of_weights="all", hessian_structure="kron")
    la.fit(DataLoader(TensorDataset(x, y), batch_size=8))
    return la


def _count_output_grams(monkeypatch) -> list[int]:
    """d_out of every output factor the K-FAC sum computes as a product."""
    seen: list[int] = []
    real = kron_module.output_gram

    def counting(G, W, reduce):
        seen.append(G.shape[-1])
        return real(G, W, reduce)

    monkeypatch.setattr(kron_module, "output_gram", counting)
    return seen


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_output_factor_is_the_summed_output_hessian(monkeypatch, likelihood) -> None:
    seen = _count_output_grams(monkeypatch)
    la = _fit(_mlp(), likelihood)
    assert seen and N_OUT not in seen  # the hidden layer's factor only: 9 × 9 per batch
    x, _ = _data()
    with torch.no_grad():
        f = la.model(x)
    B_out = la.posterior.B[2]  # groups: 0.weight, 0.bias, 2.weight, 2.bias
    torch.testing.assert_close(
        B_out, lik.hessian(Likelihood(likelihood), f).sum(0), rtol=1e-12, atol=1e-13
    )
    torch.testing.assert_close(la.posterior.B[3], B_out)


class _ConvNet(nn.Module):  # conv + BatchNorm: one column per backward pass
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 4 * 4, N_OUT)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x.reshape(-1, 1, 4, 4)))).flatten(1))


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    normed = nn.Sequential(nn.Linear(5, 9), nn.LayerNorm(9), nn.Linear(9, N_OUT))
    conv = _ConvNet()
    conv.bn.running_mean.uniform_(-0.5, 0.5)
    conv.bn.running_var.uniform_(0.5, 2.0)
    return {"mlp": _mlp(), "layer_norm": normed.double(), "conv_bn": conv.double().eval()}


@pytest.mark.parametrize("name", ["mlp", "layer_norm", "conv_bn"])
@pytest.mark.parametrize("columns", [None, 2])
def test_closed_forms_equal_the_products(monkeypatch, name, columns) -> None:
    """The output factor Σ Λ and the cotangents started at the output layer's input give the
    curvature of back-propagating the root through that layer (captured LayerNorm / BatchNorm
    Jacobians and column chunks included)."""
    x = torch.randn(24, 16 if name == "conv_bn" else 5, dtype=torch.float64)
    y = torch.randint(0, N_OUT, (24,))

    def fit() -> dict[str, torch.Tensor]:
        la = Laplace(
            _models()[name], "classification", subset_of_weights="all", hessian_structure="kron"
        )
        la.fit(DataLoader(TensorDataset(x, y), batch_size=8))
        return la.posterior.raw_state()

    if columns is not None:
        monkeypatch.setattr(root_pieces, "columns_per_pass", lambda n, outs, mb: columns)
    through = []
    real_through = lik.hessian_root_min_through
    monkeypatch.setattr(
        lik, "hessian_root_min_through", lambda *a: through.append(1) or real_through(*a)
    )
    closed = fit()
    assert len(through) == 3  # once per batch: the cotangents started at the input
    real = base.AllWeights.factor_directions

    def products(self, x, root, max_bytes=None, closed=None):
        return real(self, x, root, max_bytes, None)

    monkeypatch.setattr(base.AllWeights, "factor_directions", products)
    seen = _count_output_grams(monkeypatch)
    product = fit()
    assert N_OUT in seen  # this time the output factor was a product
    assert closed.keys() == product.keys()
    for key in closed:
        torch.testing.assert_close(closed[key], product[key], rtol=1e-11, atol=1e-13)


def test_not_used_when_the_output_is_not_the_last_layer_output(monkeypatch) -> None:
    seen = _count_output_grams(monkeypatch)
    la = _fit(_mlp(scale_output=True))
    assert N_OUT in seen
    x, _ = _data()
    with torch.no_grad():
        f = la.model(x)
    # f = 2·z: the last layer's factor is Σ (2 l)(2 l)ᵀ = 4 Σ Λ(f)
    expected = 4 * lik.hessian(Likelihood.CLASSIFICATION, f).sum(0)
    torch.testing.assert_close(la.posterior.B[2], expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("columns", [1, 4])
def test_chunks_carry_the_gram_once(monkeypatch, columns) -> None:
    model = _mlp()
    x, _ = _data(8)
    subset = base.AllWeights(model)
    root = lambda f: lik.hessian_root_min(Likelihood.CLASSIFICATION, f)  # noqa: E731
    gram = lambda f: lik.hessian_sum(Likelihood.CLASSIFICATION, f)  # noqa: E731
    closed = RootClosedForms(
        gram, lambda f, M: lik.hessian_root_min_through(Likelihood.CLASSIFICATION, f, M)
    )
    monkeypatch.setattr(root_pieces, "columns_per_pass", lambda n, outs, mb: columns)
    f, pieces = subset.factor_directions(x, root, None, closed)
    pieces = list(pieces)
    assert len(pieces) == -(-(N_OUT - 1) // columns)
    out = [p[2] for p in pieces]  # the output layer's weight factor in each piece
    torch.testing.assert_close(out[0].gram, gram(f))
    for fac in out[1:]:
        assert fac.gram is not None and not fac.gram.any()
    assert all(p[0].gram is None for p in pieces)  # hidden layer: no closed form
    total = sum(fac.G.flatten(0, 2).T @ fac.G.flatten(0, 2) for fac in out)
    torch.testing.assert_close(total, gram(f), rtol=1e-12, atol=1e-13)


def test_cast_keeps_weight_and_bias_sharing_one_factor() -> None:
    G, gram = torch.randn(3, 2, 1, 4), torch.randn(4, 4)
    facs = [LayerFactor(torch.randn(3, 1, 5), G, gram), LayerFactor(None, G, gram)]
    out = cast_factors(facs, torch.float64)
    assert out[0].G is out[1].G and out[0].gram is out[1].gram
    assert out[0].G.dtype == out[0].gram.dtype == out[0].a.dtype == torch.float64


def test_softmax_root_is_laid_out_as_the_cotangents() -> None:
    # (B, C, K) as a view of (K, B, C) memory: the batched backward stacks its cotangents in
    # that order, so chunks of columns go in without a transposing copy
    f = torch.randn(5, 6, dtype=torch.float64)
    root = lik.hessian_root_min(Likelihood.CLASSIFICATION, f)
    assert root.shape == (5, 6, 5) and root.permute(2, 0, 1).is_contiguous()
    for chunk in root.split(2, dim=2):
        assert chunk.permute(2, 0, 1).is_contiguous()


@pytest.mark.parametrize("likelihood", list(Likelihood))
@pytest.mark.parametrize("n_out", [1, 2, 6])
def test_root_through_a_linear_map(likelihood, n_out) -> None:
    if likelihood == Likelihood.CLASSIFICATION and n_out == 1:
        pytest.skip("softmax over one output has no curvature")
    f = torch.randn(5, n_out, dtype=torch.float64)
    M = torch.randn(n_out, 3, dtype=torch.float64)
    expected = torch.einsum("bck,cd->kbd", lik.hessian_root_min(likelihood, f), M)
    got = lik.hessian_root_min_through(likelihood, f, M)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
