"""K-FAC with a weight-sharing dimension (expand / reduce) and with non-Linear modules (norms,
embeddings, bare tensors), against independent brute-force references (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from laplace_cli import Laplace
from tests import reference as ref
from tests.conftest import tiny_data
from tests.laplace.test_reference import assert_close, block_slices, loader


class SeqNet(nn.Module):
    """(B, T, 3) → Linear → tanh → Linear → mean over T → (B, 2): both layers share over T."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x))).mean(1)


def seq_data(n=6, T=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, T, 3, generator=g), torch.randint(0, 2, (n,), generator=g)


def independent_seq_factors(model, X, y, layer, approx):
    """K-FAC factors of one layer of SeqNet from per-position inputs and output Jacobians."""
    A, B = 0, 0
    for x, yi in zip(X, y):
        a1 = x  # (T, 3)
        z1 = model.fc1(a1)
        a2 = torch.tanh(z1)
        f = model(x.unsqueeze(0))[0].detach()
        H = ref.loss_hessians("classification", f.unsqueeze(0), yi.unsqueeze(0))[0]
        if layer == "fc1":
            a = a1.detach()
            G = jacrev(lambda z: model.fc2(torch.tanh(z)).mean(0))(z1.detach())  # (C, T, 4)
        else:
            a = a2.detach()
            G = jacrev(lambda z: z.mean(0))(model.fc2(a2).detach())  # (C, T, 2)
        T = a.shape[0]
        if approx == "expand":
            A = A + a.T @ a / T
            B = B + torch.einsum("cto,cd,dtp->op", G, H, G)
        else:
            abar = a.mean(0)
            Gs = G.sum(1)  # (C, d_out)
            A = A + torch.outer(abar, abar)
            B = B + Gs.T @ H @ Gs
    return B, A / len(X)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_kron_sequence_factors_match_independent(float64, approx):
    model = SeqNet()
    X, y = seq_data()
    la = Laplace(model, "classification", "all", "kron", kron_approx=approx).fit(loader(X, y, 4))
    kron = la.posterior.curvature_dense()
    sl = block_slices(la)
    for (wi, bi), layer in (((0, 1), "fc1"), ((2, 3), "fc2")):
        B, A = independent_seq_factors(model, X, y, layer, approx)
        assert_close(
            kron[sl[wi], sl[wi]],
            torch.kron(B.contiguous(), A.contiguous()),
            what=f"{approx} {layer} weight",
        )
        assert_close(kron[sl[bi], sl[bi]], B, what=f"{approx} {layer} bias")


def test_reduce_is_exact_for_shared_output_gradients(float64):
    """With one input and G_t the same for every t (fc2 under mean pooling) reduce is exact."""
    model = SeqNet()
    X, y = seq_data(n=1)
    la = Laplace(model, "classification", "all", "kron", kron_approx="reduce").fit([(X, y)])
    dense = ref.ggn(model, [n for n, _ in model.named_parameters()], X, y, "classification")
    kron = la.posterior.curvature_dense()
    sl = block_slices(la)
    for i in (2, 3):
        assert_close(kron[sl[i], sl[i]], dense[sl[i], sl[i]], what=f"fc2 block {i}")


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_sequence_diag_and_full_are_exact(float64, structure):
    model = SeqNet()
    X, y = seq_data()
    la = Laplace(model, "classification", "all", structure).fit(loader(X, y, 4))
    dense = ref.ggn(model, [n for n, _ in model.named_parameters()], X, y, "classification")
    expected = dense if structure == "full" else torch.diag(dense.diagonal())
    assert_close(la.posterior.curvature_dense(), expected)


class MixedNet(nn.Module):
    """Token embedding + float features → LayerNorm → BatchNorm1d → GroupNorm → Linear, × a bare
    temperature tensor. Takes keyword inputs (a dict batch)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(6, 4)
        self.fc1 = nn.Linear(3, 4)
        self.ln = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc2 = nn.Linear(4, 3)
        self.temp = nn.Parameter(torch.tensor([1.3]))
        with torch.no_grad():
            for m in (self.ln, self.bn, self.gn):
                m.weight.copy_(1 + 0.3 * torch.randn(4))
                m.bias.copy_(0.3 * torch.randn(4))
            self.bn.running_mean.copy_(0.2 * torch.randn(4))
            self.bn.running_var.copy_(1 + 0.5 * torch.rand(4))

    def forward(self, input_ids, features):
        h = self.fc1(features) + self.emb(input_ids)
        h = self.gn(self.bn(self.ln(h)))
        return self.fc2(torch.tanh(h)) * self.temp


def mixed_batches(n=10, bs=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 6, (n,), generator=g)
    feats = torch.randn(n, 3, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    batches = [
        {"input_ids": ids[i : i + bs], "features": feats[i : i + bs], "labels": y[i : i + bs]}
        for i in range(0, n, bs)
    ]
    return batches, ids, feats, y


def dense_ggn_dict(model, ids, feats, y):
    """Brute-force GGN (P, P) for keyword inputs: per-sample jacrev on the flat parameters."""
    model.eval()
    like = {n: p.detach().clone() for n, p in model.named_parameters()}
    theta = ref.flat(like)
    total = 0
    for i in range(len(y)):
        kw = {"input_ids": ids[i : i + 1], "features": feats[i : i + 1]}

        def f(th, kw=kw):
            return functional_call(model, ref.unflat(th, like), (), kw).reshape(-1)

        J = jacrev(f)(theta).detach()
        H = ref.loss_hessians("classification", f(theta).detach().unsqueeze(0), y[i : i + 1])[0]
        total = total + J.T @ H @ J
    return total


def test_mixed_modules_full_and_diag_match_dense(float64):
    model = MixedNet()
    model.train()  # Laplace must evaluate BatchNorm on its running statistics
    batches, ids, feats, y = mixed_batches()
    dense = dense_ggn_dict(model, ids, feats, y)
    model.train()
    full = Laplace(model, "classification", "all", "full").fit(batches)
    diag = Laplace(model, "classification", "all", "diag").fit(batches)
    assert model.training and model.bn.training
    assert_close(full.posterior.curvature_dense(), dense, what="full")
    assert_close(diag.posterior.h, dense.diagonal(), what="diag")


@pytest.mark.parametrize("n", [1, 10])
def test_mixed_modules_kron_blocks_match_dense(float64, n):
    """Every block lands on its parameters: Linear blocks are exact for one input (K-FAC is
    exact for N = 1, T = 1), other modules get the exact diagonal of their dense block."""
    model = MixedNet()
    batches, ids, feats, y = mixed_batches(n=n)
    dense = dense_ggn_dict(model, ids, feats, y)
    la = Laplace(model, "classification", "all", "kron").fit(batches)
    kinds = {g.name: g.kind for g in la.subset.groups}
    assert [g.name for g in la.subset.groups] == [nm for nm, _ in model.named_parameters()]
    assert {nm for nm, k in kinds.items() if k == "other"} == {
        "temp",
        "emb.weight",
        "ln.weight",
        "ln.bias",
        "bn.weight",
        "bn.bias",
        "gn.weight",
        "gn.bias",
    }
    kron = la.posterior.curvature_dense()
    for g, s in zip(la.subset.groups, block_slices(la)):
        block, expected = kron[s, s], dense[s, s]
        if g.kind == "other":
            assert_close(block, torch.diag(expected.diagonal()), what=g.name)
        elif n == 1:
            assert_close(block, expected, what=g.name)
    # Nothing outside the blocks.
    mask = torch.block_diag(
        *[torch.ones(s.stop - s.start, s.stop - s.start) for s in block_slices(la)]
    )
    assert float(kron[mask == 0].abs().max()) == 0.0
    # The log marginal likelihood and predictive run on this model too.
    assert torch.isfinite(la.log_marginal_likelihood())
    x = {k: v for k, v in batches[0].items() if k != "labels"}
    probs = la(x)
    assert probs.shape == (len(batches[0]["labels"]), 3)
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[0]))


def test_expand_and_reduce_agree_without_weight_sharing(float64):
    """T = 1: both variants are the same K-FAC."""
    from tests.conftest import tiny_mlp

    model = tiny_mlp()
    X, y = tiny_data("classification")
    a = Laplace(model, "classification", "all", "kron", kron_approx="expand").fit(loader(X, y))
    b = Laplace(model, "classification", "all", "kron", kron_approx="reduce").fit(loader(X, y))
    assert_close(a.posterior.curvature_dense(), b.posterior.curvature_dense(), rtol=1e-12)


class AttnNet(nn.Module):
    """(B, T, 3) → Linear → self-attention (+ residual) → LayerNorm → Linear → mean over T."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(3, 4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.proj(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.norm(h + a)).mean(1)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_attention_weights_are_kept_as_diagonal_blocks(float64, approx):
    """nn.MultiheadAttention uses out_proj functionally: its parameters become exact diagonal
    blocks instead of failing or being dropped; hooked Linear layers stay Kronecker blocks."""
    model = AttnNet()
    X, y = seq_data(n=5, T=4)
    names = [n for n, _ in model.named_parameters()]
    dense = ref.ggn(model, names, X, y, "classification")
    la = Laplace(model, "classification", "all", "kron", kron_approx=approx).fit(loader(X, y, 2))
    kinds = {g.name: g.kind for g in la.subset.groups}
    assert kinds["attn.out_proj.weight"] == kinds["attn.in_proj_weight"] == "other"
    assert kinds["proj.weight"] == kinds["head.weight"] == "weight"
    kron = la.posterior.curvature_dense()
    for g, s in zip(la.subset.groups, block_slices(la)):
        if g.kind == "other":
            assert_close(kron[s, s], torch.diag(dense[s, s].diagonal()), what=g.name)
    full = Laplace(model, "classification", "all", "full").fit(loader(X, y, 2))
    assert_close(full.posterior.curvature_dense(), dense, what="full")
