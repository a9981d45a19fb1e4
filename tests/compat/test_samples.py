"""laplace-torch's README code samples, module renamed (`laplace` → `laplace_cli`), run as written.

Samples 1–3 of the README (sample 4, the LoRA one, depends on dict batches passed whole to
`forward` and lives with that feature's tests). Each sample's body is verbatim; only the
fixtures it assumes (`load_map_model`, loaders, `x`, `prior_prec`, `obs_noise`) are built here
on a tiny local model and data.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _classification_data(n: int = 64, d: int = 4, c: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y.clamp_max(c - 1)


def load_map_model() -> nn.Module:
    """A small MLP trained for a few steps (the MAP the sample assumes)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = _classification_data()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_sample_1_diag_all_weights_gridsearch_probit():
    x_all, y_all = _classification_data()
    train_loader = DataLoader(TensorDataset(x_all[:48], y_all[:48]), batch_size=16)
    val_loader = DataLoader(TensorDataset(x_all[48:], y_all[48:]), batch_size=16)
    x = x_all[48:]

    from laplace_cli import Laplace

    model = load_map_model()
    la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="diag")
    la.fit(train_loader)
    la.optimize_prior_precision(
        method="gridsearch", pred_type="glm", link_approx="probit", val_loader=val_loader
    )
    pred = la(x, pred_type="glm", link_approx="probit")

    assert pred.shape == (16, 3)
    assert torch.allclose(pred.sum(-1), torch.ones(16, dtype=pred.dtype), atol=1e-5)
    from laplace_cli import DiagLaplace

    assert isinstance(la, DiagLaplace)


def test_sample_2_subnetwork_largest_magnitude():
    model = load_map_model()
    x_all, y_all = _classification_data()
    train_loader = DataLoader(TensorDataset(x_all, y_all), batch_size=16)
    from laplace_cli import Laplace
    from laplace_cli.utils import LargestMagnitudeSubnetMask

    subnetwork_mask = LargestMagnitudeSubnetMask(model, n_params_subnet=128)
    subnetwork_indices = subnetwork_mask.select()
    la = Laplace(
        model,
        "classification",
        subset_of_weights="subnetwork",
        hessian_structure="full",
        subnetwork_indices=subnetwork_indices,
    )
    la.fit(train_loader)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    expected = torch.sort(torch.argsort(theta.abs(), descending=True)[:128]).values
    assert torch.equal(subnetwork_indices, expected)
    from laplace_cli import FullSubnetLaplace

    assert isinstance(la, FullSubnetLaplace) and la.n_params_subnet == 128
    assert la.posterior_precision.shape == (128, 128)


def test_sample_3_regression_marglik_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).eval()
    x = torch.randn(40, 2)
    train_loader = DataLoader(TensorDataset(x, x[:, :1].sin()), batch_size=10)
    log_prior = torch.zeros(1, requires_grad=True)
    log_sigma = torch.zeros(1, requires_grad=True)
    prior_prec, obs_noise = log_prior.exp(), log_sigma.exp()
    from laplace_cli import Laplace

    la = Laplace(model, likelihood="regression")
    la.fit(train_loader)
    ml = la.log_marginal_likelihood(prior_prec, obs_noise)
    ml.backward()

    assert log_prior.grad is not None and torch.isfinite(log_prior.grad).all()
    assert log_sigma.grad is not None and torch.isfinite(log_sigma.grad).all()
