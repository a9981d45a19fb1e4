"""Last-layer K-FAC on sequence features reduced by `feature_reduction`.

The head sees (B, T, H) token features and the model predicts from one reduced feature per
example; the K-FAC input factor must be that of the features the prediction uses,
(1/N) Σ φ φᵀ ⊗ Σ Λ, checked against the brute-force matrix. (laplace-torch 0.3 sums all B·T token
features into this factor instead; docs/migrating.md.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_cli import Laplace


class SequenceClassifier(nn.Module):
    def __init__(self, reduction: str) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.head = nn.Linear(6, 3, bias=False)
        self.reduction = reduction

    def forward(self, x):
        logits = self.head(self.body(x))  # (B, T, 3), every token scored
        return logits[:, -1] if self.reduction == "pick_last" else logits.mean(1)


@pytest.mark.parametrize("reduction", ["pick_last", "average"])
def test_kron_input_factor_is_that_of_the_reduced_features(reduction) -> None:
    torch.manual_seed(0)
    model = SequenceClassifier(reduction).double()
    x = torch.randn(20, 5, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    la = Laplace(
        model,
        "classification",
        subset_of_weights="last_layer",
        hessian_structure="kron",
        feature_reduction=reduction,
        prior_precision=0.7,
    )
    la.fit(DataLoader(TensorDataset(x, y), batch_size=8))
    with torch.no_grad():
        h = model.body(x)
        f = model(x)
    phi = h[:, -1] if reduction == "pick_last" else h.mean(1)
    p = torch.softmax(f, -1)
    lam = torch.diag(p.sum(0)) - p.T @ p
    expected = torch.kron(lam, phi.T @ phi) / len(x) + 0.7 * torch.eye(18, dtype=torch.float64)
    torch.testing.assert_close(la.posterior_precision.to_matrix(), expected, rtol=1e-12, atol=1e-12)
