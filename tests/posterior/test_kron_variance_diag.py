"""The K-FAC functional variance's diagonal without the (C, C) products.

A probit prediction needs only diag J Σ Jᵀ: `KronPosterior.functional_variance_diag` must equal
the diagonal of `functional_variance` for every block kind (Linear weight and bias, conv weight
with T > 1, dense "other" parameters, last-layer shared G, the identity G of the output layer),
and the probit predictions must be those of the full variance.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_cli import Laplace
from laplace_cli.posterior import kron_products


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)  # captured Jacobians: "diag" blocks
        self.head = nn.Linear(48, 5)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x.reshape(-1, 1, 4, 4)))).flatten(1))


def _fitted(name: str, subset: str) -> tuple[Laplace, torch.Tensor]:
    torch.manual_seed(0)
    model = (
        ConvNet() if name == "conv" else nn.Sequential(nn.Linear(16, 9), nn.Tanh(), nn.Linear(9, 5))
    )
    model = model.double().eval()
    x = torch.randn(30, 16, dtype=torch.float64)
    y = torch.randint(0, 5, (30,))
    la = Laplace(model, "classification", subset_of_weights=subset, hessian_structure="kron")
    la.fit(DataLoader(TensorDataset(x, y), batch_size=10))
    la.prior_precision = 0.8
    return la, torch.randn(7, 16, dtype=torch.float64)


@pytest.mark.parametrize(
    ("name", "subset"), [("mlp", "all"), ("conv", "all"), ("mlp", "last_layer")]
)
def test_diagonal_equals_the_full_variance_diagonal(name, subset) -> None:
    la, x = _fitted(name, subset)
    f_mu, f_var = la.functional_variance_at(x)
    d_mu, d_var = la.functional_variance_diag(x)
    torch.testing.assert_close(d_mu, f_mu, rtol=0, atol=0)
    torch.testing.assert_close(
        d_var, torch.diagonal(f_var, dim1=-2, dim2=-1), rtol=1e-12, atol=1e-14
    )
    # probit through the diagonal = probit of the full covariance's diagonal
    probs = la(x, pred_type="glm", link_approx="probit")
    kappa = 1 / torch.sqrt(1 + torch.pi / 8 * torch.diagonal(f_var, dim1=-2, dim2=-1))
    torch.testing.assert_close(probs, torch.softmax(kappa * f_mu, -1), rtol=1e-12, atol=1e-14)


def test_probit_takes_the_diagonal_route(monkeypatch) -> None:
    la, x = _fitted("mlp", "all")
    calls = []
    real = kron_products.kron_functional_variance_diag

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr("laplace_cli.posterior.kron.kron_functional_variance_diag", counting)
    monkeypatch.setattr(
        "laplace_cli.posterior.kron.kron_functional_variance",
        lambda *a: pytest.fail("probit formed the (C, C) variance"),
    )
    la(x, pred_type="glm", link_approx="probit")
    assert calls  # every K-FAC block through the diagonal


@pytest.mark.parametrize("shared", [True, False])
def test_identity_output_jacobians_need_no_rotation(shared) -> None:
    qb, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    eye = torch.eye(4, dtype=torch.float64)
    G = eye.expand(3, 4, 4) if shared else eye[None]
    got = kron_products._rotated_outputs(G, qb)
    assert got.shape == (1, 4, 4) and got[0].data_ptr() == qb.data_ptr()  # QB itself
    other = torch.randn(4, 4, dtype=torch.float64)
    G = other.expand(3, 4, 4) if shared else other[None]
    torch.testing.assert_close(kron_products._rotated_outputs(G, qb), (other @ qb)[None])
