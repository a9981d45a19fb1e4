"""Batched root back-propagation in column chunks under a memory budget.

`AllWeights.factor_directions` sends the curvature root's K columns through one batched
backward pass where the graph allows it; with many classes (K = C − 1 = 999) the stacked output
gradients (K, B, ...) outgrow memory, so `max_bytes` splits the columns into passes. The chunks
must sum to the one-pass curvature exactly (kron and diag, with captured LayerNorm Jacobians and
a bare parameter whose dense Jacobians are sliced per chunk), and the chunk size must follow the
budget.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_cli import Laplace
from laplace_cli.subsets import root_pieces


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(5, 8)
        self.norm = nn.LayerNorm(8)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8))  # dense ("other") Jacobians
        self.l2 = nn.Linear(8, 7)

    def forward(self, x):
        return self.l2(torch.tanh(self.norm(self.l1(x))) * self.scale)


def _fit(structure: str, curvature: str = "ggn") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = Net().double()
    x = torch.randn(20, 5, dtype=torch.float64)
    y = torch.randint(0, 7, (20,))
    la = Laplace(
        model,
        "classification",
        subset_of_weights="all",
        hessian_structure=structure,
        curvature=curvature,
    )
    la.fit(DataLoader(TensorDataset(x, y), batch_size=10))
    return la.posterior.raw_state()


@pytest.mark.parametrize("structure", ["kron", "diag"])
@pytest.mark.parametrize("columns", [1, 2, 4])
def test_column_chunks_sum_to_the_one_pass_curvature(monkeypatch, structure, columns) -> None:
    whole = _fit(structure)
    calls = []

    def chunked(n_columns, outs, max_bytes):
        calls.append(n_columns)
        return columns

    monkeypatch.setattr(root_pieces, "columns_per_pass", chunked)
    parts = _fit(structure)
    assert calls and set(calls) == {6}  # K = C − 1 = 6 columns per batch, split as asked
    assert whole.keys() == parts.keys()
    for key in whole:
        torch.testing.assert_close(parts[key], whole[key], rtol=1e-12, atol=1e-14)


def test_columns_follow_the_budget() -> None:
    outs = [torch.zeros(128, 4096), torch.zeros(128, 1000)]  # float32: 2,609,152 bytes a column
    per_column = (128 * 4096 + 128 * 1000) * 4
    assert root_pieces.columns_per_pass(999, outs, None) == 999
    assert root_pieces.columns_per_pass(999, outs, 4 * per_column * 10) == 10
    assert root_pieces.columns_per_pass(999, outs, 4 * per_column * 10 - 1) == 9
    assert root_pieces.columns_per_pass(999, outs, 1) == 1  # never fewer than one column
    assert root_pieces.columns_per_pass(5, outs, 2**40) == 5  # never more than K
