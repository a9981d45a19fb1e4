"""Per-sample Jacobians of models that `torch.func.vmap` / forward-mode AD cannot run.

transformers' attention-mask code branches on `padding_mask.all()` (data-dependent control
flow, which vmap refuses) and its CPU attention kernel has no forward-mode derivative. The
library then falls back to plain reverse mode; here, on small models with the same kinds of
obstacle, every structure and subset must still give the exact GGN of a dense float64
reference built per example with `torch.autograd.functional.jacobian`.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from laplace_cli import Laplace
from laplace_cli.subsets import base as subsets
from laplace_cli.subsets.per_sample import _NO_VMAP
from tests import reference as ref
from tests.laplace.test_reference import assert_close, loader

pytestmark = pytest.mark.usefixtures("one_thread")

N_IN, HIDDEN, N_OUT = 3, 4, 3


class _TanhNoJvp(torch.autograd.Function):
    """tanh with a backward only: no forward-mode derivative and no vmap rule."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class Awkward(nn.Module):
    """Linear layers (factored Jacobians), a LayerNorm and a bare tensor (dense Jacobians).

    obstacle "branch": `if mask.all():` on the inputs (vmap: data-dependent control flow);
    "no_jvp": an autograd.Function with neither jvp nor a vmap rule; None: vmap-able twin.
    """

    def __init__(self, obstacle: str | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.obstacle = obstacle
        self.fc1 = nn.Linear(N_IN, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN)
        self.scale = nn.Parameter(1 + 0.3 * torch.randn(HIDDEN))
        self.fc2 = nn.Linear(HIDDEN, N_OUT)
        with torch.no_grad():  # non-trivial LayerNorm parameters
            self.norm.weight.add_(0.2 * torch.randn(HIDDEN))
            self.norm.bias.add_(0.2 * torch.randn(HIDDEN))

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h = _TanhNoJvp.apply(h) if self.obstacle == "no_jvp" else torch.tanh(h)
        mask = x.abs() < 1e6
        if self.obstacle == "branch":
            if mask.all():  # always true on the data: same function as the twin
                h = h * self.scale
            else:
                h = h * self.scale * mask[..., :1]
        else:
            h = h * self.scale
        return self.fc2(self.norm(h))


def dense_ggn(model: nn.Module, X: Tensor, y: Tensor, likelihood: str) -> Tensor:
    """Σ_n J_nᵀ H_n J_n, J_n by `torch.autograd.functional.jacobian` of one example."""
    like = {n: p.detach().clone() for n, p in model.named_parameters()}
    theta = ref.flat(like)
    Js, fs = [], []
    for x in X:

        def f(th: Tensor, x: Tensor = x) -> Tensor:
            return functional_call(model, ref.unflat(th, like), (x.unsqueeze(0),)).reshape(-1)

        fs.append(f(theta).detach())
        Js.append(torch.autograd.functional.jacobian(f, theta))
    J = torch.stack(Js)
    H = ref.loss_hessians(likelihood, torch.stack(fs), y)
    return torch.einsum("ncp,ncd,ndq->pq", J, H, J)


def data(likelihood: str) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(10, N_IN, generator=g)
    if likelihood == "classification":
        return X, torch.randint(0, N_OUT, (10,), generator=g)
    return X, torch.randn(10, N_OUT, generator=g)


OBSTACLES = ["branch", "no_jvp"]
LIKELIHOODS = ["classification", "regression"]


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("obstacle", OBSTACLES)
@pytest.mark.parametrize("structure", ["diag", "full", "lowrank"])
def test_all_weights_equal_dense_reference(float64, obstacle, structure, likelihood):
    model = Awkward(obstacle)
    X, y = data(likelihood)
    dense = dense_ggn(model, X, y, likelihood)
    P = dense.shape[0]
    extra = {"rank": P} if structure == "lowrank" else {}
    la = Laplace(model, likelihood, "all", structure, prior_precision=0.5, **extra)
    la.fit(loader(X, y, bs=4))
    expected = 0.5 * torch.eye(P) + dense
    if structure == "diag":
        assert_close(la.posterior.h, dense.diagonal(), rtol=1e-8, what="diag GGN")
        expected = torch.diag(expected.diagonal())
    else:
        assert_close(la.posterior.curvature_dense(), dense, rtol=1e-8, what=f"{structure} GGN")
    assert_close(ref.dense_precision(la), expected, rtol=1e-8, what="posterior precision")
    # The predictive's dense Jacobians take the same path: J Σ Jᵀ against the reference.
    _, var = la.functional_variance(X[:3])
    like = {n: p.detach().clone() for n, p in model.named_parameters()}
    J = torch.stack(
        [
            torch.autograd.functional.jacobian(
                lambda th, x=x: functional_call(model, ref.unflat(th, like), (x[None],))[0],
                ref.flat(like),
            )
            for x in X[:3]
        ]
    )
    cov = torch.linalg.inv(expected)
    assert_close(var, J @ cov @ J.transpose(1, 2), rtol=1e-8, what="functional variance")
    # The reverse-mode path did run (lowrank's fit vmaps over tangents only, which the branch
    # on the inputs allows; its predictive's per-sample Jacobians do not).
    assert model in _NO_VMAP


@pytest.mark.parametrize("obstacle", OBSTACLES)
def test_kron_equals_the_vmappable_twin(float64, obstacle):
    """K-FAC is not the dense GGN; the fallback must give what the vmap path gives, and its
    dense-Jacobian groups (LayerNorm, the bare tensor: diagonal blocks) the reference."""
    X, y = data("classification")
    twin = Laplace(Awkward(None), "classification", "all", "kron").fit(loader(X, y, bs=4))
    model = Awkward(obstacle)
    la = Laplace(model, "classification", "all", "kron").fit(loader(X, y, bs=4))
    assert model in _NO_VMAP
    state, expected = la.posterior.state(), twin.posterior.state()
    assert state.keys() == expected.keys()
    for key in state:
        assert_close(state[key], expected[key], rtol=1e-8, what=key)
    dense = dense_ggn(model, X, y, "classification")
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    start = 0
    for name, size in sizes.items():
        if name.startswith(("norm.", "scale")):
            block = dense.diagonal()[start : start + size]
            assert_close(state[f"kron.{name}.diag"], block, rtol=1e-8, what=name)
        start += size


@pytest.mark.parametrize("obstacle", OBSTACLES)
@pytest.mark.parametrize("structure", ["diag", "full"])
def test_subnetwork_equals_dense_sub_block(float64, obstacle, structure):
    model = Awkward(obstacle)
    X, y = data("classification")
    dense = dense_ggn(model, X, y, "classification")
    # Entries of both Linear weights, the LayerNorm and the bare tensor.
    idx = torch.tensor([0, 5, 13, 16, 17, 20, 22, 25, 27, 30, 33, 40])
    la = Laplace(model, "classification", "subnetwork", structure, subnetwork_indices=idx).fit(
        loader(X, y, bs=4)
    )
    assert model in _NO_VMAP
    block = dense[idx][:, idx]
    if structure == "diag":
        assert_close(la.posterior.h, block.diagonal(), rtol=1e-8, what="diag sub-block")
    else:
        assert_close(la.posterior.curvature_dense(), block, rtol=1e-8, what="full sub-block")


class Tokens(nn.Module):
    """Embeddings as in a transformer: token ids with a padding row, position embeddings shared
    by the batch (output (1, T, D)), a LayerNorm, a branch on the padding mask; `tied`: the
    head also reads the token embedding matrix outside the Embedding module."""

    def __init__(self, tied: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tied = tied
        self.tok = nn.Embedding(7, 4, padding_idx=0)
        self.pos = nn.Embedding(5, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, N_OUT)

    def forward(self, ids: Tensor) -> Tensor:
        mask = ids != 0
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]).unsqueeze(0))
        h = torch.tanh(self.norm(h))
        if mask.all():  # vmap: data-dependent control flow
            pooled = h.mean(1)
        else:
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        out = self.head(pooled)
        if self.tied:
            out = out + pooled @ self.tok.weight[1 : 1 + N_OUT].T
        return out


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("structure", ["diag", "full"])
def test_embeddings_and_layer_norms_equal_dense_reference(float64, monkeypatch, structure, tied):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 7, (10, 5), generator=g)
    ids[::3, 3:] = 0  # padded rows
    y = torch.randint(0, N_OUT, (10,), generator=g)
    model = Tokens(tied)
    dense = dense_ggn(model, ids, y, "classification")
    looped: set[str] = set()
    dense_jacobians = subsets.dense_jacobians

    def spy(model, params, names, x):
        looped.update(names)
        return dense_jacobians(model, params, names, x)

    monkeypatch.setattr(subsets, "dense_jacobians", spy)
    la = Laplace(model, "classification", "all", structure).fit(loader(ids, y, bs=4))
    if structure == "diag":
        assert_close(la.posterior.h, dense.diagonal(), rtol=1e-8, what="diag GGN")
    else:
        assert_close(la.posterior.curvature_dense(), dense, rtol=1e-8, what="full GGN")
    # The token embedding and LayerNorm come from hook captures unless tied (caught by the
    # gradient check); the batch-shared position embedding always takes the generic path.
    assert looped == ({"pos.weight", "tok.weight"} if tied else {"pos.weight"})
