"""Eval-mode BatchNorm outputs recomputed as one affine map during the factor capture.

`capture_forward` replaces an eval-mode BatchNorm's output by x·s + t (s = γ/√(σ²+ε),
t = β − μ·s), whose backward is one multiply instead of `native_batch_norm_backward`. The maths
must not change: the captured outputs equal the module's, gradients through them equal native
autograd's, modules that do not normalise by running statistics keep their own output, and a
diag GGN fit of a conv + BatchNorm + max-pool net equals the brute-force Σ diag(Jᵀ Λ J) from
dense `torch.func` Jacobians of the untouched model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from laplace_cli import Laplace
from laplace_cli.subsets.layer_capture import capture_forward


def _randomise(bn: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g, dtype=torch.float64))
        bn.running_var.copy_(0.3 + torch.rand(bn.num_features, generator=g, dtype=torch.float64))
        if bn.affine:
            bn.weight.copy_(torch.randn(bn.num_features, generator=g, dtype=torch.float64))
            bn.bias.copy_(torch.randn(bn.num_features, generator=g, dtype=torch.float64))


class Net(nn.Module):
    def __init__(self, bn: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape
        self.lin = nn.Linear(6, 3 * int(torch.tensor(shape[1:]).prod()) if shape[1:] else 3)
        self.bn = bn
        self.head = nn.Linear(self.lin.out_features, 4)

    def forward(self, x):
        z = self.lin(x).reshape(x.shape[0], *self.shape)
        return self.head(torch.tanh(self.bn(z)).reshape(x.shape[0], -1))


CASES = [
    (nn.BatchNorm1d(3), (3,)),
    (nn.BatchNorm1d(3), (3, 5)),
    (nn.BatchNorm2d(3), (3, 2, 2)),
    (nn.BatchNorm3d(3), (3, 2, 1, 2)),
]


@pytest.mark.parametrize(("bn", "shape"), CASES, ids=["bn1d", "bn1d_seq", "bn2d", "bn3d"])
def test_captured_outputs_and_gradients_equal_the_modules(bn: nn.Module, shape) -> None:
    torch.manual_seed(0)
    model = Net(bn, shape).double().eval()
    _randomise(model.bn, 1)
    x = torch.randn(7, 6, dtype=torch.float64)
    cap = capture_forward(model, x, {"lin": model.lin, "head": model.head}, {"bn": model.bn})
    torch.testing.assert_close(cap.f, model(x), rtol=1e-13, atol=1e-13)
    # the captured BN output is the recomputed one (it feeds the head), equal to the module's
    torch.testing.assert_close(cap.outputs["bn"], model.bn(model.lin(x).reshape(7, *shape)))
    u = torch.randn_like(cap.f)
    ours = torch.autograd.grad(cap.f, cap.outputs["lin"], u)[0]
    z = model.lin(x)
    native = torch.autograd.grad(
        model.head(torch.tanh(model.bn(z.reshape(7, *shape))).reshape(7, -1)), z, u
    )[0]
    torch.testing.assert_close(ours, native, rtol=1e-12, atol=1e-12)
    assert cap.f.grad_fn is not None


@pytest.mark.parametrize(
    "bn",
    [nn.BatchNorm1d(3, affine=False), nn.BatchNorm1d(3, track_running_stats=False)],
    ids=["no_affine", "batch_statistics"],
)
def test_modules_without_running_statistics_keep_their_own_output(bn: nn.Module) -> None:
    model = Net(bn, (3,)).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    cap = capture_forward(model, x, {"lin": model.lin}, {"bn": model.bn})
    assert "Native" in type(cap.outputs["bn"].grad_fn).__name__
    torch.testing.assert_close(cap.f, model(x))


def test_eval_batch_norm_output_is_the_affine_map() -> None:
    model = Net(nn.BatchNorm1d(3), (3,)).double().eval()
    _randomise(model.bn, 2)
    cap = capture_forward(model, torch.randn(5, 6, dtype=torch.float64), {}, {"bn": model.bn})
    # one multiply-add node: the backward the capture exists for
    assert type(cap.outputs["bn"].grad_fn).__name__.startswith("Addcmul")


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3)
        self.b1 = nn.BatchNorm2d(3)
        self.l1 = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x):
        return self.l1(F.max_pool2d(F.relu(self.b1(self.c1(x))), 2).flatten(1))


def test_diag_ggn_fit_equals_dense_jacobians_of_the_native_model() -> None:
    torch.manual_seed(3)
    model = ConvBN().double().eval()
    _randomise(model.b1, 4)
    x = torch.randn(10, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (10,))
    la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="diag")
    la.fit(DataLoader(TensorDataset(x, y), batch_size=4))

    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = torch.func.vmap(jacrev(f), in_dims=(None, 0))(params, x)
    J = torch.cat([jac[k].reshape(10, 4, -1) for k in params], dim=2)  # (N, C, P)
    p = torch.softmax(model(x), -1)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    dense = torch.einsum("ncp,ncd,ndp->p", J, lam, J)
    torch.testing.assert_close(la.H, dense, rtol=1e-10, atol=1e-12)
