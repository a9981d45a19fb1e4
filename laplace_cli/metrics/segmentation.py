"""Pixel-level (per-position) metrics of dense predictions (B, C, *S): segmentation, per token.

Each unmasked position is one row of the classification metrics (`metrics.classification`):
accuracy, NLL, ECE, MCE, Brier and adaptive ECE are the means over all unmasked positions of
all inputs (pixel ECE bins every pixel's confidence). Mean IoU is the mean over classes of
|pred = c ∧ y = c| / |pred = c ∨ y = c|, counted over the whole split, for the classes that occur
in the labels or the predictions (as sklearn's `jaccard_score(average="macro")` on the pixels
with `labels=` the classes present).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.classification import classification_metrics


def dense_rows(probs: Any, labels: Any, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """Probabilities (B, C, *S) and labels (B, *S) as rows (R, C), (R,) over unmasked positions."""
    p = torch.as_tensor(probs)
    y = torch.as_tensor(labels)
    if p.ndim < 3 or y.shape != (p.shape[0], *p.shape[2:]):
        raise BadInputError(
            f"dense metrics need probabilities (batch, classes, *positions) and labels "
            f"(batch, *positions), got {tuple(p.shape)} and {tuple(y.shape)}"
        )
    rows = p.reshape(p.shape[0], p.shape[1], -1).transpose(1, 2).reshape(-1, p.shape[1])
    y = y.reshape(-1).long()
    keep = y != ignore_index
    if not bool(keep.any()):
        raise BadInputError(
            f"every position is masked (labels all equal ignore_index {ignore_index})"
        )
    return rows[keep], y[keep]


def mean_iou(pred: Tensor, labels: Tensor, n_classes: int) -> float:
    """Mean intersection over union of predicted classes `pred` (R,) and `labels` (R,)."""
    idx = labels * n_classes + pred
    confusion = torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    inter = confusion.diagonal().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


def segmentation_metrics(
    probs: Any, labels: Any, ignore_index: int = -100, n_bins: int = 15
) -> dict[str, float]:
    """Pixel metrics of dense class probabilities (B, C, *S) against labels (B, *S).

    Returns `{"acc", "nll", "ece", "mce", "brier", "aece", "miou", "n_positions"}`; positions
    whose label is `ignore_index` are left out of every metric.
    """
    p, y = dense_rows(probs, labels, ignore_index)
    out = classification_metrics(p, y, n_bins=n_bins)
    out["miou"] = mean_iou(p.argmax(1), y, p.shape[1])
    out["n_positions"] = int(y.numel())
    return out
