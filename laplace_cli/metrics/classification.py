"""Evaluation metrics as pure functions on tensors: calibration, OOD detection and regression.

Every public function validates its inputs first (``_check_*``, raising
:class:`~laplace_cli.core.errors.BadInputError` that says what was expected and what was got) and
then calls a private ``_compute`` function that assumes valid input. Computation is done in
float64 on the inputs' device; aggregate metrics are returned as Python floats.

Conventions (shared by the CLI's ``evaluate`` command, the JSON report and the plots):

* Classification inputs are probabilities ``probs`` of shape (N, C) whose rows sum to 1 and
  integer ``labels`` of shape (N,) in ``[0, C)``. The predicted class is ``argmax`` (the first
  maximal index on ties) and the *confidence* is the top probability.
* Calibration bins of :func:`ece`, :func:`mce` and :func:`reliability_bins` are ``n_bins``
  equal-width intervals ``(lo, hi]`` over [0, 1]; a confidence of exactly 0 goes into the first
  bin. Empty bins contribute 0.
* OOD scores follow "higher score = more likely out-of-distribution"; OOD inputs are the
  positive class.
* Regression inputs are a predictive mean and the *total* predictive variance (epistemic plus
  observation noise) of shape (N, D), and targets of the same shape ((N,) targets are taken
  as (N, 1)). Predictive distributions are independent Gaussians per output.

Validation lives in ``metrics_checks`` and the regression metrics in ``metrics_regression``;
their public names are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.checks import (
    as_tensor,
    check_binary_labels,
    check_classification,
    check_n_bins,
    check_probs,
    check_scores,
    clamp_eps,
)

# Re-exported: laplace_cli.metrics.temperature imports these three checks from this module.
from laplace_cli.metrics.checks import check_finite as check_finite
from laplace_cli.metrics.checks import check_labels as check_labels
from laplace_cli.metrics.checks import check_regression as check_regression
from laplace_cli.metrics.regression import (
    CoverageCurve,
    coverage,
    coverage_curve,
    coverage_key,
    crps_gaussian,
    gaussian_nll,
    interval,
    mae,
    regression_metrics,
    rmse,
)

__all__ = [
    "CoverageCurve",
    "ReliabilityBins",
    "accuracy",
    "adaptive_ece",
    "auroc",
    "binary_brier",
    "binary_metrics",
    "binary_nll",
    "brier",
    "classification_metrics",
    "coverage",
    "coverage_curve",
    "coverage_key",
    "crps_gaussian",
    "ece",
    "fpr_at_tpr",
    "gaussian_nll",
    "interval",
    "mae",
    "mce",
    "nll",
    "ood_metrics",
    "regression_metrics",
    "reliability_bins",
    "rmse",
]


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


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


def _accuracy(p: Tensor, y: Tensor) -> float:
    return float((p.argmax(dim=1) == y).to(torch.float64).mean())


def _nll(p: Tensor, y: Tensor, eps: float) -> float:
    p_true = p.gather(1, y.unsqueeze(1)).squeeze(1)  # (N,)
    return float(-p_true.clamp_min(eps).log().mean())


def _brier(p: Tensor, y: Tensor) -> float:
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(torch.float64)  # (N, C)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


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


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy: ``mean_n [argmax_c p_nc == y_n]``.

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
    """
    p, y = check_classification(probs, labels)
    return _accuracy(p, y)


def nll(probs: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the true class: ``−mean_n log max(p_{n,y_n}, ε)``.

    ``ε`` is the machine epsilon of the input dtype (as scikit-learn's ``log_loss``), so a zero
    probability on the true class gives a large finite value instead of ``inf``.

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
    """
    p, y = check_classification(probs, labels)
    return _nll(p, y, clamp_eps(as_tensor(probs, "probs")))


def brier(probs: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score: ``mean_n Σ_c (p_nc − [y_n = c])²`` (in [0, 2]).

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
    """
    p, y = check_classification(probs, labels)
    return _brier(p, y)


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


def classification_metrics(
    probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "equal-width"
) -> dict[str, float]:
    """All classification metrics at once (inputs validated once).

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
        n_bins: number of calibration bins.
        binning: bins of ``ece`` and ``mce``: ``equal-width`` (as :func:`ece`) or
            ``equal-mass`` (as :func:`adaptive_ece`); ``aece`` is always equal-mass.

    Returns:
        ``{"acc", "nll", "ece", "mce", "brier", "aece"}`` as floats.
    """
    n_bins = check_n_bins(n_bins)
    if binning not in ("equal-width", "equal-mass"):
        raise BadInputError(f"binning: expected equal-width or equal-mass, got {binning!r}")
    p, y = check_classification(probs, labels)
    if binning == "equal-mass":
        mass = _equal_mass_stats(p, y, n_bins)
        ece_value, mce_value = _weighted_gap(*mass), _max_gap(*mass)
    else:
        bins = _reliability_bins(p, y, n_bins)
        ece_value, mce_value = bins.ece(), bins.mce()
    return {
        "acc": _accuracy(p, y),
        "nll": _nll(p, y, clamp_eps(as_tensor(probs, "probs"))),
        "ece": ece_value,
        "mce": mce_value,
        "brier": _brier(p, y),
        "aece": _adaptive_ece(p, y, n_bins),
    }


# --------------------------------------------------------------------------------------------
# Binary / multi-label
# --------------------------------------------------------------------------------------------


def _check_binary(probs: Any, labels: Any) -> tuple[Tensor, Tensor, float]:
    p = check_probs(probs, simplex=False)
    t = check_binary_labels(labels, p.shape).to(p.device)
    return p, t, clamp_eps(as_tensor(probs, "probs"))


def _binary_nll(p: Tensor, t: Tensor, eps: float) -> float:
    log_p = p.clamp_min(eps).log()
    log_q = (1.0 - p).clamp_min(eps).log()
    return float(-(t * log_p + (1.0 - t) * log_q).mean())


def binary_nll(probs: Tensor, labels: Tensor) -> float:
    """Mean binary cross-entropy over all elements: ``−mean [y log p + (1 − y) log(1 − p)]``.

    Probabilities are clamped to ``ε`` (machine epsilon of the input dtype) before the logs.

    Args:
        probs: (N,) or (N, K) independent Bernoulli probabilities (sigmoid outputs).
        labels: {0, 1} targets of the same shape.
    """
    p, t, eps = _check_binary(probs, labels)
    return _binary_nll(p, t, eps)


def binary_brier(probs: Tensor, labels: Tensor) -> float:
    """Binary Brier score averaged over all elements: ``mean (p − y)²`` (in [0, 1]).

    Args:
        probs: (N,) or (N, K) independent Bernoulli probabilities.
        labels: {0, 1} targets of the same shape.
    """
    p, t, _ = _check_binary(probs, labels)
    return float(((p - t) ** 2).mean())


def binary_metrics(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """``{"acc", "nll", "brier"}`` for independent sigmoid outputs, averaged over all elements.

    ``acc`` predicts 1 where ``p > 0.5`` (0.5 itself predicts 0).

    Args:
        probs: (N,) or (N, K) independent Bernoulli probabilities.
        labels: {0, 1} targets of the same shape.
    """
    p, t, eps = _check_binary(probs, labels)
    return {
        "acc": float(((p > 0.5).to(torch.float64) == t).to(torch.float64).mean()),
        "nll": _binary_nll(p, t, eps),
        "brier": float(((p - t) ** 2).mean()),
    }


# --------------------------------------------------------------------------------------------
# Out-of-distribution detection
# --------------------------------------------------------------------------------------------


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of ``x`` with ties given their average rank, in O(N log N)."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    _, counts = torch.unique_consecutive(sorted_x, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)  # 1-based rank of each group's last
    group_rank = ends - (counts.to(torch.float64) - 1.0) / 2.0  # mean of start..end
    ranks_sorted = torch.repeat_interleave(group_rank, counts)
    ranks = torch.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    return ranks


def auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """Area under the ROC curve for telling OOD inputs (positives) from in-distribution ones.

    Mann–Whitney form: ``AUROC = P(s_out > s_in) + ½ P(s_out = s_in)``, computed as
    ``(R_out − n_out (n_out + 1) / 2) / (n_in n_out)`` with ``R_out`` the sum of the average
    ranks of the OOD scores in the pooled sample (O(N log N)). Higher scores must mean "more
    likely OOD" (e.g. predictive entropy, ``1 − max prob``).

    Args:
        scores_in: (N_in,) scores of in-distribution inputs.
        scores_out: (N_out,) scores of OOD inputs.
    """
    s_in = check_scores(scores_in, "scores_in")
    s_out = check_scores(scores_out, "scores_out").to(s_in.device)
    n_in, n_out = s_in.shape[0], s_out.shape[0]
    ranks = _average_ranks(torch.cat([s_in, s_out]))
    u = float(ranks[n_in:].sum()) - n_out * (n_out + 1) / 2.0
    return u / (n_in * n_out)


def fpr_at_tpr(scores_in: Tensor, scores_out: Tensor, tpr: float = 0.95) -> float:
    """False-positive rate at the first threshold reaching a true-positive rate of ``tpr``.

    OOD inputs are positives and a score ``s >= t`` is flagged OOD. The threshold ``t`` is the
    largest one with ``TPR(t) = mean(s_out >= t) >= tpr`` (the k-th largest OOD score, with
    ``k = ceil(tpr · N_out)``); the result is ``FPR(t) = mean(s_in >= t)``. This equals the
    FPR of the first point of scikit-learn's ``roc_curve`` whose TPR is at least ``tpr``.

    Args:
        scores_in: (N_in,) scores of in-distribution inputs.
        scores_out: (N_out,) scores of OOD inputs.
        tpr: target true-positive rate in (0, 1].
    """
    s_in = check_scores(scores_in, "scores_in")
    s_out = check_scores(scores_out, "scores_out").to(s_in.device)
    try:
        target = float(tpr)
    except (TypeError, ValueError):
        raise BadInputError(f"tpr: expected a number in (0, 1], got {tpr!r}") from None
    if not 0.0 < target <= 1.0:
        raise BadInputError(f"tpr: expected a number in (0, 1], got {tpr!r}")
    n_out = s_out.shape[0]
    # Round first so that 0.95 * 20 = 18.999999999999996 still asks for 19 positives.
    k = max(1, math.ceil(round(target * n_out, 9)))
    threshold = torch.sort(s_out, descending=True).values[k - 1]
    return float((s_in >= threshold).to(torch.float64).mean())


def ood_metrics(scores_in: Tensor, scores_out: Tensor) -> dict[str, float]:
    """``{"auroc", "fpr95"}`` for OOD scores (higher = more likely OOD)."""
    return {"auroc": auroc(scores_in, scores_out), "fpr95": fpr_at_tpr(scores_in, scores_out, 0.95)}
