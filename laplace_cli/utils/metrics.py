"""laplace-torch's `laplace.utils.metrics.RunningNLLMetric`, without the torchmetrics dependency.

The object has torchmetrics' `update` / `compute` / `reset` methods, which is all
`optimize_prior_precision(loss=...)` and `validate` use; it is not a `torchmetrics.Metric`
(no distributed reduction).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["RunningNLLMetric"]


class RunningNLLMetric:
    """Mean negative log-likelihood of class probabilities over every `update`, skipping
    targets equal to `ignore_index`."""

    def __init__(self, ignore_index: int = -100) -> None:
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.nll_sum = torch.tensor(0.0)
        self.n_valid_labels = torch.tensor(0.0)

    def update(self, probs: Tensor, targets: Tensor) -> None:
        """`probs` (..., n_classes), `targets` integer (...)."""
        probs = probs.reshape(-1, probs.shape[-1])
        targets = targets.reshape(-1)
        nll = F.nll_loss(probs.log(), targets, ignore_index=self.ignore_index, reduction="sum")
        self.nll_sum = self.nll_sum.to(nll) + nll.detach()
        self.n_valid_labels = self.n_valid_labels.to(nll) + (targets != self.ignore_index).sum()

    def compute(self) -> Tensor:
        return self.nll_sum / self.n_valid_labels

    def __call__(self, probs: Tensor, targets: Tensor) -> Tensor:
        self.update(probs, targets)
        return self.compute()
