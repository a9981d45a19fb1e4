"""Pure diagnostics of a posterior's outputs, for `laplace doctor` (`pipeline.doctor`).

Each function takes tensors / numbers and returns the measured quantity; the thresholds, the
data and the model live in the pipeline. Every quantity is documented in docs/doctor.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from laplace_cli.metrics.classification import nll, reliability_bins


def grid_edge_position(grid: Sequence[float], chosen: float) -> str | None:
    """Whether `chosen` is the grid's smallest point ("low"), largest ("high") or neither (None),
    matching it to the nearest point in log10. A grid of one point has no inside, hence no edge."""
    values = [float(v) for v in grid]
    if len(values) < 2 or chosen <= 0:
        return None
    logs = [math.log10(v) for v in values]
    nearest = min(range(len(values)), key=lambda i: abs(logs[i] - math.log10(chosen)))
    lo, hi = (
        min(range(len(logs)), key=logs.__getitem__),
        max(range(len(logs)), key=logs.__getitem__),
    )
    if nearest == lo:
        return "low"
    if nearest == hi:
        return "high"
    return None


def coefficient_of_variation(values: Tensor) -> float:
    """std / mean of a per-input quantity (population std); 0 when every value is equal.
    Rows of several outputs are summed first (the trace of the predictive covariance)."""
    v = values.double().reshape(values.shape[0], -1).sum(dim=1)
    mean = float(v.mean())
    if mean <= 0:
        return 0.0
    return float(v.std(unbiased=False)) / mean


def under_confidence(
    probs_laplace: Tensor, probs_map: Tensor, labels: Tensor, n_bins: int = 15
) -> dict[str, float]:
    """NLL of Laplace and MAP, and the share of Laplace's ECE from under-confident bins.

    under_share = Σ_{b: conf_b < acc_b} n_b |acc_b − conf_b| / Σ_b n_b |acc_b − conf_b|
    (0 when the ECE is 0): 1 means every bit of miscalibration is under-confidence."""
    bins = reliability_bins(probs_laplace, labels, n_bins)
    keep = bins.count > 0
    conf, acc, count = bins.confidence[keep], bins.accuracy[keep], bins.count[keep].double()
    gap = (acc.double() - conf.double()) * count
    total = float(gap.abs().sum())
    under = float(gap.clamp(min=0).sum())
    n = float(count.sum())
    return {
        "nll_laplace": nll(probs_laplace, labels),
        "nll_map": nll(probs_map, labels),
        "ece_laplace": total / n if n else 0.0,
        "under_share": under / total if total > 0 else 0.0,
    }


def mean_total_variation(p: Tensor, q: Tensor) -> float:
    """Mean over rows of ½ Σ_k |p_k − q_k| (probability vectors in the last dimension)."""
    return float(0.5 * (p.double() - q.double()).abs().sum(dim=-1).mean())


def log10_ratio(a: float, b: float) -> float:
    """|log10(a / b)|: how many orders of magnitude two positive numbers lie apart."""
    return abs(math.log10(a) - math.log10(b))


def relative_gradient_norm(gradients: Sequence[Tensor], parameters: Sequence[Tensor]) -> float:
    """‖∇L‖ / ‖θ‖ over all given tensors (∞ when θ = 0 and ∇L ≠ 0)."""
    g = math.sqrt(sum(float(t.double().pow(2).sum()) for t in gradients))
    p = math.sqrt(sum(float(t.double().pow(2).sum()) for t in parameters))
    if p == 0:
        return 0.0 if g == 0 else math.inf
    return g / p


def trace_shares(diagonal: Tensor, sizes: Sequence[int]) -> list[float]:
    """The share of the trace Σ diag held by each consecutive block of `sizes` entries."""
    parts = torch.split(diagonal.double().reshape(-1), list(sizes))
    traces = [float(p.sum()) for p in parts]
    total = sum(traces)
    if total <= 0:
        return [0.0 for _ in traces]
    return [t / total for t in traces]
