"""Calibration of top-label classification: reliability bins, ECE, MCE and adaptive ECE.

Conventions as :mod:`laplace_cli.metrics.classification` (which re-exports these names):
``n_bins`` equal-width bins ``(lo, hi]`` over [0, 1] (confidence 0 in the first bin), or
equal-mass bins for the adaptive ECE; empty bins contribute 0. Public functions validate their
inputs; :func:`calibration_errors` takes inputs already validated (by
``classification_metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from laplace_cli.metrics.checks import check_classification, check_n_bins

__all__ = [
    "ReliabilityBins",
    "adaptive_ece",
    "calibration_errors",
    "ece",
    "mce",
    "reliability_bins",
]


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a top-label reliability diagram.

    Attributes:
        edges: (B + 1,) bin edges ``k / B``; bin b is ``(edges[b], edges[b + 1]]`` (the first
            bin also holds confidence 0).
        confidence: (B,) mean confidence of the samples in each bin; NaN where the bin is empty.
        accuracy: (B,) fraction of correct predictions in each bin; NaN where empty.
        count: (B,) number of samples in each bin (int64).
    """

    edges: Tensor
    confidence: Tensor
    accuracy: Tensor
    count: Tensor

    @property
    def n_samples(self) -> int:
        """Total number of samples over all bins."""
        return int(self.count.sum())

    def ece(self) -> float:
        """``Σ_b (n_b / N) |acc_b − conf_b|`` over non-empty bins."""
        return _weighted_gap(self.confidence, self.accuracy, self.count)

    def mce(self) -> float:
        """``max_b |acc_b − conf_b|`` over non-empty bins."""
        return _max_gap(self.confidence, self.accuracy, self.count)


def _top_label(p: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Confidence (N,) and correctness (N,) float64 of the argmax prediction."""
    conf, pred = p.max(dim=1)  # torch.max returns the first maximal index on ties
    return conf, (pred == y).to(torch.float64)


def _bin_stats(
    conf: Tensor, correct: Tensor, index: Tensor, n_bins: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean confidence, accuracy (NaN when empty) and count per bin, given a bin index per sample."""
    count = torch.bincount(index, minlength=n_bins)  # (B,)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(
        0, index, conf
    )
    acc_sum = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(
        0, index, correct
    )
    denom = count.to(torch.float64)
    nan = torch.full_like(denom, float("nan"))
    mean_conf = torch.where(count > 0, conf_sum / denom.clamp_min(1), nan)
    mean_acc = torch.where(count > 0, acc_sum / denom.clamp_min(1), nan)
    return mean_conf, mean_acc, count


def _weighted_gap(conf: Tensor, acc: Tensor, count: Tensor) -> float:
    nonempty = count > 0
    weights = count[nonempty].to(torch.float64) / count.sum()
    return float((weights * (acc[nonempty] - conf[nonempty]).abs()).sum())


def _max_gap(conf: Tensor, acc: Tensor, count: Tensor) -> float:
    nonempty = count > 0
    if not bool(nonempty.any()):
        return 0.0
    return float((acc[nonempty] - conf[nonempty]).abs().max())


def _equal_width_index(conf: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
    """Bin edges (B + 1,) and the (lo, hi] bin index (N,) of each confidence."""
    # Edges k / B, each correctly rounded (linspace can be one ulp off), so a confidence typed
    # as 0.6 with B = 10 equals an edge and falls in (0.5, 0.6] on every platform.
    edges = torch.arange(n_bins + 1, dtype=torch.float64, device=conf.device) / n_bins
    # bucketize(right=False) returns i with inner[i-1] < x <= inner[i], i.e. (lo, hi] bins;
    # x <= inner[0] (confidence 0 included) lands in bin 0, x > inner[-1] in bin B - 1.
    index = torch.bucketize(conf, edges[1:-1].contiguous(), right=False)
    return edges, index


def _reliability_bins(p: Tensor, y: Tensor, n_bins: int) -> ReliabilityBins:
    conf, correct = _top_label(p, y)
    edges, index = _equal_width_index(conf, n_bins)
    mean_conf, mean_acc, count = _bin_stats(conf, correct, index, n_bins)
    return ReliabilityBins(edges=edges, confidence=mean_conf, accuracy=mean_acc, count=count)


def _equal_mass_stats(p: Tensor, y: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean confidence, accuracy and count of the equal-mass bins of :func:`adaptive_ece`."""
    conf, correct = _top_label(p, y)
    n = conf.shape[0]
    sorted_conf, _ = torch.sort(conf)
    # "Min" rank: number of samples with strictly smaller confidence. Ranks r in 0..N-1 map to
    # bin floor(r B / N), giving bins whose sizes differ by at most one; tied confidences share
    # the rank of the first of them and hence one bin. This makes the metric independent of
    # sample order (a tie group is never split by a boundary), at the cost of a larger bin
    # when many confidences are equal.
    rank = torch.searchsorted(sorted_conf, conf, right=False)  # (N,)
    index = torch.div(rank * n_bins, n, rounding_mode="floor")
    return _bin_stats(conf, correct, index, n_bins)


def _adaptive_ece(p: Tensor, y: Tensor, n_bins: int) -> float:
    return _weighted_gap(*_equal_mass_stats(p, y, n_bins))


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> ReliabilityBins:
    """Top-label reliability statistics in ``n_bins`` equal-width bins ``(lo, hi]``.

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
        n_bins: number of equal-width bins over [0, 1].

    Returns:
        Bin edges, per-bin mean confidence and accuracy (NaN for empty bins) and counts.
    """
    n_bins = check_n_bins(n_bins)
    p, y = check_classification(probs, labels)
    return _reliability_bins(p, y, n_bins)


def ece(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of the top label (Guo et al., 2017).

    ``ECE = Σ_b (n_b / N) |acc_b − conf_b|`` over ``n_bins`` equal-width bins ``(lo, hi]``
    (confidence 0 in the first bin); empty bins contribute 0. In [0, 1].

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
        n_bins: number of bins.
    """
    return reliability_bins(probs, labels, n_bins).ece()


def mce(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Maximum calibration error: ``max_b |acc_b − conf_b|`` over non-empty equal-width bins.

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
        n_bins: number of bins (same convention as :func:`ece`).
    """
    return reliability_bins(probs, labels, n_bins).mce()


def adaptive_ece(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Top-label ECE over equal-mass bins (adaptive binning, Nixon et al., 2019).

    Samples are ranked by confidence; with ``r`` the number of samples of strictly smaller
    confidence, a sample goes into bin ``floor(r · B / N)``. Without ties the bins hold
    ``N / B`` samples each (sizes differ by at most one); tied confidences always share a bin
    (the one where the tie group starts), so the result does not depend on sample order.
    Bins left empty (N < B, or ties) contribute 0. ``aECE = Σ_b (n_b / N) |acc_b − conf_b|``.

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
        n_bins: number of bins B.
    """
    n_bins = check_n_bins(n_bins)
    p, y = check_classification(probs, labels)
    return _adaptive_ece(p, y, n_bins)


def calibration_errors(
    p: Tensor, y: Tensor, n_bins: int, binning: str
) -> tuple[float, float, float]:
    """``(ece, mce, aece)`` of validated float64 ``p`` (N, C) and ``y`` (N,).

    ``ece`` and ``mce`` over ``binning`` bins (``equal-width`` as :func:`ece`, ``equal-mass``
    as :func:`adaptive_ece`); ``aece`` always over equal-mass bins.
    """
    if binning == "equal-mass":
        mass = _equal_mass_stats(p, y, n_bins)
        ece_value, mce_value = _weighted_gap(*mass), _max_gap(*mass)
    else:
        bins = _reliability_bins(p, y, n_bins)
        ece_value, mce_value = bins.ece(), bins.mce()
    return ece_value, mce_value, _adaptive_ece(p, y, n_bins)
