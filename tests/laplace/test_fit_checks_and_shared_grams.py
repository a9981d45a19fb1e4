"""Per-batch finiteness check of the curvature sums, and the shared weight/bias output factor.

`check_fit_finite` runs after every batch, so it is one cheap sum of sums; these tests pin its
answers: NaN / ±Inf anywhere is found and named, finite entries whose sum overflows are not an
error. The K-FAC fit computes each layer's output factor Σ g gᵀ once for its weight and bias
(they share G): counted on an MLP, whose weight and bias blocks then hold the same B.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_cli import Laplace
from laplace_cli.core.errors import NumericalError
from laplace_cli.laplace.fit_checks import check_fit_finite
from laplace_cli.posterior import kron_products


def _state(bad: float | None) -> dict[str, torch.Tensor]:
    state = {"a (A)": torch.ones(4, 4), "a (B)": torch.ones(3, 3), "b (diag)": torch.ones(5)}
    if bad is not None:
        state["a (B)"][1, 2] = bad
    return state


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_entry_is_named(bad: float) -> None:
    with pytest.raises(NumericalError, match=r"batch 7: the curvature of a \(B\) is not finite"):
        check_fit_finite(torch.tensor(1.0), _state(bad), [], 7)


def test_finite_state_and_overflowing_sum_pass() -> None:
    check_fit_finite(torch.tensor(1.0), _state(None), [], 0)
    huge = {"x": torch.full((4,), 3e38), "y": torch.full((2,), 3e38)}  # sums overflow float32
    assert not torch.isfinite(huge["x"].sum())
    check_fit_finite(torch.tensor(1.0), huge, [], 0)


def test_non_finite_loss() -> None:
    with pytest.raises(NumericalError, match="batch 2: the training loss is not finite"):
        check_fit_finite(torch.tensor(float("nan")), _state(None), [], 2)


def test_weight_and_bias_share_one_output_factor_product(monkeypatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    data = DataLoader(
        TensorDataset(torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))),
        batch_size=4,
    )
    calls = []
    real = kron_products.output_gram

    def counting(G, W, reduce):
        calls.append(G.shape)
        return real(G, W, reduce)

    monkeypatch.setattr("laplace_cli.posterior.kron.output_gram", counting)
    la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron")
    la.fit(data)
    # the hidden layer once per batch (weight and bias share it); the output layer's factor
    # comes in closed form, no product (tests/subsets/test_output_layer_gram.py)
    assert [s[-1] for s in calls] == [7] * 3
    # the bias block's B is the weight block's (same sums), equal to the dense Σ g gᵀ
    B = la.posterior.B
    torch.testing.assert_close(B[0], B[1], rtol=0, atol=0)
    torch.testing.assert_close(B[2], B[3], rtol=0, atol=0)
    assert torch.linalg.eigvalsh(B[0]).min() > -1e-12 and B[0].abs().sum() > 0
