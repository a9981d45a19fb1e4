"""Diagonal SWAG variances (Maddox et al. 2019), for `LargestVarianceSWAGSubnetMask`.

The procedure of laplace-torch's `laplace.utils.swag.fit_diagonal_swag_var`: SGD with a large
learning rate on a copy of the model, one snapshot of the parameters every `snapshot_freq`
epochs, Var = E[θ²] − E[θ]² clamped at `min_var`.
"""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["fit_diagonal_swag_var"]


def _param_vector(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def fit_diagonal_swag_var(
    model: nn.Module,
    train_loader: Iterable[Any],
    criterion: nn.Module,
    n_snapshots_total: int = 40,
    snapshot_freq: int = 1,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 3e-4,
    min_var: float = 1e-30,
) -> Tensor:
    """Marginal variance of each trainable parameter under diagonal SWAG, (P,).

    The model is not changed (a copy is trained). Batches are `(inputs, targets)` pairs.
    """
    copy = deepcopy(model)
    copy.train()
    device = next(copy.parameters()).device
    mean = torch.zeros_like(_param_vector(copy))
    sq_mean = torch.zeros_like(mean)
    n_snapshots = 0
    optimizer = torch.optim.SGD(
        [p for p in copy.parameters() if p.requires_grad],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    for epoch in range(snapshot_freq * n_snapshots_total):
        for inputs, targets in train_loader:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            criterion(copy(inputs), targets).backward()
            optimizer.step()
        if epoch % snapshot_freq == 0:
            old, new = n_snapshots / (n_snapshots + 1), 1 / (n_snapshots + 1)
            theta = _param_vector(copy)
            mean = mean * old + theta * new
            sq_mean = sq_mean * old + theta**2 * new
            n_snapshots += 1
    return torch.clamp(sq_mean - mean**2, min_var)
