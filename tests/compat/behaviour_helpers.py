"""Tiny float64 models and data shared by the behaviour checks against laplace-torch 0.3."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

HAS_LAPLACE_TORCH = (
    importlib.util.find_spec("laplace") is not None
    and importlib.util.find_spec("curvlinops") is not None
)
needs_laplace_torch = pytest.mark.skipif(
    not HAS_LAPLACE_TORCH, reason="laplace-torch 0.3 (and curvlinops) not installed"
)
RTOL = 1e-4


def mlp(d_in: int = 3, d_out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 5), nn.Tanh(), nn.Linear(5, d_out)).double()


def data(likelihood: str = "classification", n: int = 24, d_in: int = 3, d_out: int = 3):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    if likelihood == "regression":
        y = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    else:
        y = torch.randint(0, d_out, (n,), generator=g)
    return X, y


def loader(X, y, batch_size: int = 8) -> DataLoader:
    return DataLoader(TensorDataset(X, y), batch_size=batch_size)


def close(a, b, rtol: float = RTOL, atol: float = 1e-10) -> None:
    # kron's posterior_precision is laplace-torch's KronDecomposed: compare its dense matrix
    a, b = (x.to_matrix() if hasattr(x, "to_matrix") else x for x in (a, b))
    a = torch.as_tensor(a).detach()
    b = torch.as_tensor(b, dtype=a.dtype).detach()
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
