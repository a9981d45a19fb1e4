"""Shared fixtures: float64 for numerical tests (via a fixture, not at import), seeds, tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype, restoring the previous default afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`).
    Its matrices are small, and two threads on a busy 2-core machine spin-wait on each other
    (the diabetes full curvature's 1,441² eigh took ~3 s with one thread and ~20 s with two
    under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_mlp(n_in: int = 3, hidden: int = 5, n_out: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


def tiny_cnn(n_out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(2, 2, 2, stride=2),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, n_out),
    )


def tiny_data(
    likelihood: str, n: int = 12, n_in: int = 3, n_out: int = 4, seed: int = 1, image: bool = False
):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1, 4, 4) if image else (n, n_in)
    X = torch.randn(*shape, generator=g)
    if likelihood == "classification":
        y = torch.randint(0, n_out, (n,), generator=g)
    elif likelihood == "binary":
        y = torch.randint(0, 2, (n, n_out), generator=g).to(torch.get_default_dtype())
    else:
        y = torch.randn(n, n_out, generator=g)
    return X, y
