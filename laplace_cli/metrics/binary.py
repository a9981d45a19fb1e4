"""Calibration of binary and multi-label (independent sigmoid) outputs: ECE per label and
temperature scaling, as pure functions.

Each label k is a two-class problem: the probabilities (1 − p_k, p_k) with label y_k ∈ {0, 1}.
The per-label ECE is the top-label ECE of that two-class problem (confidence max(p, 1 − p),
correct when (p > 0.5) == y, as `laplace_cli.metrics.classification.ece`), and `ece` is the mean
over labels. A sigmoid of logit z is the softmax of the two logits (0, z), so temperature
scaling of sigmoid outputs is `laplace_cli.metrics.temperature.fit_temperature` on those pairs:
one temperature shared by all labels (the pairs of every label pooled) or one per label.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.checks import check_binary_labels, check_probs
from laplace_cli.metrics.classification import ece
from laplace_cli.metrics.temperature import fit_temperature

__all__ = [
    "apply_binary_temperature",
    "binary_ece",
    "fit_binary_temperature",
    "two_class",
]


def two_class(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """All labels' outputs pooled as two-class rows: ((N·K, 2) probs, (N·K,) labels)."""
    p = check_probs(probs, simplex=False)
    p = p.unsqueeze(1) if p.ndim == 1 else p
    y = check_binary_labels(torch.as_tensor(targets).reshape(p.shape), p.shape).to(p.device)
    flat = p.reshape(-1)
    return torch.stack([1.0 - flat, flat], 1), y.reshape(-1).long()


def binary_ece(probs: Tensor, targets: Tensor, n_bins: int = 15) -> tuple[float, list[float]]:
    """(mean over labels, per-label list) of the two-class top-label ECE of each label."""
    p = check_probs(probs, simplex=False)
    p = p.unsqueeze(1) if p.ndim == 1 else p
    y = check_binary_labels(torch.as_tensor(targets).reshape(p.shape), p.shape)
    per_label = []
    for k in range(p.shape[1]):
        pk, yk = two_class(p[:, k], y[:, k])
        per_label.append(ece(pk, yk, n_bins))
    return sum(per_label) / len(per_label), per_label


def _pairs(logits: Tensor) -> Tensor:
    z = logits.reshape(-1).to(torch.float64)
    return torch.stack([torch.zeros_like(z), z], 1)


def fit_binary_temperature(logits: Tensor, targets: Tensor, per_label: bool = False) -> Tensor:
    """Temperatures minimising the binary cross-entropy of sigmoid(logits / T).

    Args:
        logits: (N, K) (or (N,)) validation logits of the MAP model.
        targets: 0/1 targets of the same shape.
        per_label: one temperature per label (K,) instead of one shared (1,).
    """
    z = torch.as_tensor(logits)
    z = z.unsqueeze(1) if z.ndim == 1 else z
    y = torch.as_tensor(targets).reshape(z.shape)
    if z.ndim != 2 or z.shape[0] == 0:
        raise BadInputError(f"logits: expected shape (N, K) with N >= 1, got {tuple(z.shape)}")
    if not per_label:
        return torch.tensor([fit_temperature(_pairs(z), y.reshape(-1).long())], dtype=torch.float64)
    return torch.tensor(
        [fit_temperature(_pairs(z[:, k]), y[:, k].long()) for k in range(z.shape[1])],
        dtype=torch.float64,
    )


def apply_binary_temperature(logits: Tensor, temperature: Tensor) -> Tensor:
    """sigmoid(logits / T), T shared (1,) or per label (K,)."""
    z = torch.as_tensor(logits).to(torch.float64)
    t = torch.as_tensor(temperature, dtype=torch.float64)
    if z.ndim == 1:
        return torch.sigmoid(z / t.reshape(()) if t.numel() == 1 else z / t)
    return torch.sigmoid(z / t.reshape(1, -1))
