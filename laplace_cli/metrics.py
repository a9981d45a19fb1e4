"""Evaluation metrics as pure functions on tensors: calibration, OOD detection and regression.

Every public function validates its inputs first (``_check_*``, raising
:class:`~laplace_cli.errors.BadInputError` that says what was expected and what was got) and
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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from laplace_cli.errors import BadInputError

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

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _describe(t: Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"


def _as_tensor(x: Any, name: str) -> Tensor:
    """Turn an array-like into a tensor, refusing things that are not real numbers."""
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise BadInputError(
            f"{name}: expected a tensor of numbers, got {type(x).__name__}"
        ) from exc
    if t.is_complex():
        raise BadInputError(f"{name}: expected real numbers, got {_describe(t)}")
    return t


def _clamp_eps(t: Tensor) -> float:
    """Smallest probability used before a log: the machine epsilon of the input's dtype.

    This matches scikit-learn's ``log_loss`` (``eps="auto"``) so that a zero probability on the
    true class costs a large but finite amount (about 36 nats in float64, 16 in float32).
    """
    dtype = t.dtype if t.is_floating_point() else torch.float64
    return float(torch.finfo(dtype).eps)


def _check_finite(t: Tensor, name: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise BadInputError(f"{name}: expected finite values, got {n_bad} NaN/Inf entries")


def _check_probs(probs: Any, *, name: str = "probs", simplex: bool = True) -> Tensor:
    """Validate probabilities and return them as float64.

    Args:
        probs: (N, C) class probabilities (``simplex=True``: rows sum to 1, C >= 2), or (N,) /
            (N, K) independent Bernoulli probabilities (``simplex=False``).
        name: name used in error messages.
        simplex: whether rows must sum to 1.

    Raises:
        BadInputError: wrong shape, empty, non-finite, outside [0, 1] or rows not summing to 1.
    """
    t = _as_tensor(probs, name)
    if t.dtype == torch.bool:
        raise BadInputError(f"{name}: expected probabilities, got {_describe(t)}")
    if simplex:
        if t.ndim != 2 or t.shape[1] < 2:
            raise BadInputError(
                f"{name}: expected class probabilities of shape (N, C) with C >= 2, got "
                f"{_describe(t)}"
            )
    elif t.ndim not in (1, 2):
        raise BadInputError(
            f"{name}: expected probabilities of shape (N,) or (N, K), got {_describe(t)}"
        )
    if t.shape[0] == 0:
        raise BadInputError(f"{name}: expected at least one sample, got {_describe(t)}")
    _check_finite(t, name)
    # Loose on purpose: the check is there to catch logits or unnormalised scores passed by
    # mistake, not rounding. float32 probabilities cast to float64 by a caller are off by
    # ~1e-6; half precision by ~1e-2 (hence sqrt(eps) for low-precision dtypes).
    tol = max(1e-3, math.sqrt(_clamp_eps(t)))
    t64 = t.to(torch.float64)
    lo, hi = float(t64.min()), float(t64.max())
    if lo < -tol or hi > 1.0 + tol:
        raise BadInputError(
            f"{name}: expected values in [0, 1], got values in [{lo:.6g}, {hi:.6g}]"
        )
    if simplex:
        worst = float((t64.sum(dim=1) - 1.0).abs().max())
        if worst > tol:
            raise BadInputError(
                f"{name}: expected rows summing to 1 (probabilities, not logits), got a row "
                f"off by {worst:.3g}"
            )
    return t64.clamp(0.0, 1.0)


def _check_labels(labels: Any, n: int, n_classes: int, *, name: str = "labels") -> Tensor:
    """Validate integer class labels of shape (N,) in ``[0, n_classes)``; returns int64.

    Float labels are accepted when every value is a whole number (CSV readers produce them).
    """
    t = _as_tensor(labels, name)
    if t.ndim != 1 or t.shape[0] != n:
        raise BadInputError(f"{name}: expected shape ({n},) to match probs, got {_describe(t)}")
    if t.dtype == torch.bool:
        raise BadInputError(f"{name}: expected integer class labels, got {_describe(t)}")
    if t.is_floating_point():
        _check_finite(t, name)
        if not bool((t == t.round()).all()):
            raise BadInputError(f"{name}: expected integer class labels, got non-integer floats")
    t = t.to(torch.int64)
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= n_classes:
        raise BadInputError(
            f"{name}: expected labels in [0, {n_classes - 1}] for {n_classes} classes, got "
            f"values in [{lo}, {hi}]"
        )
    return t


def _check_binary_labels(labels: Any, shape: torch.Size, *, name: str = "labels") -> Tensor:
    """Validate {0, 1} targets with the same shape as the probabilities; returns float64."""
    t = _as_tensor(labels, name)
    if t.shape != shape:
        raise BadInputError(
            f"{name}: expected shape {tuple(shape)} to match probs, got {_describe(t)}"
        )
    _check_finite(t, name)
    t = t.to(torch.float64)
    if not bool(((t == 0) | (t == 1)).all()):
        raise BadInputError(f"{name}: expected binary targets in {{0, 1}}, got other values")
    return t


def _check_classification(probs: Any, labels: Any) -> tuple[Tensor, Tensor]:
    p = _check_probs(probs)
    y = _check_labels(labels, p.shape[0], p.shape[1])
    return p, y.to(p.device)


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise BadInputError(f"n_bins: expected a positive integer, got {n_bins!r}")
    return n_bins


def _check_level(level: Any, name: str = "level") -> float:
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise BadInputError(f"{name}: expected a number in (0, 1), got {level!r}") from None
    if not 0.0 < value < 1.0:
        hint = f" (a fraction: {value / 100:g} for {value:g}%)" if 1.0 < value < 100.0 else ""
        raise BadInputError(f"{name}: expected a number in (0, 1), got {level!r}{hint}")
    return value


def _check_scores(scores: Any, name: str) -> Tensor:
    t = _as_tensor(scores, name)
    if t.ndim != 1 or t.shape[0] == 0 or t.dtype == torch.bool:
        raise BadInputError(
            f"{name}: expected a non-empty 1-D tensor of scores, got {_describe(t)}"
        )
    _check_finite(t, name)
    return t.to(torch.float64)


def _check_mean_var(mean: Any, var: Any) -> tuple[Tensor, Tensor]:
    m = _as_tensor(mean, "mean")
    v = _as_tensor(var, "var")
    if m.ndim not in (1, 2) or m.shape[0] == 0:
        raise BadInputError(f"mean: expected shape (N, D) or (N,) with N >= 1, got {_describe(m)}")
    if v.shape != m.shape:
        raise BadInputError(
            f"var: expected the shape of mean {tuple(m.shape)} (per-output total variance, not a "
            f"covariance), got {_describe(v)}"
        )
    _check_finite(m, "mean")
    _check_finite(v, "var")
    v = v.to(torch.float64)
    if not bool((v > 0).all()):
        raise BadInputError(
            f"var: expected strictly positive variances, got minimum {float(v.min()):.6g}"
        )
    return m.to(torch.float64), v


def _check_regression(mean: Any, var: Any, y: Any) -> tuple[Tensor, Tensor, Tensor]:
    m, v = _check_mean_var(mean, var)
    t = _as_tensor(y, "y")
    # (N,) targets with a single-output (N, 1) model are taken as (N, 1), as in DESIGN.md §1b.
    if t.ndim == 1 and m.ndim == 2 and m.shape[1] == 1 and t.shape[0] == m.shape[0]:
        t = t.unsqueeze(1)
    if t.shape != m.shape:
        raise BadInputError(f"y: expected shape {tuple(m.shape)} to match mean, got {_describe(t)}")
    _check_finite(t, "y")
    return m, v, t.to(device=m.device, dtype=torch.float64)


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


def _adaptive_ece(p: Tensor, y: Tensor, n_bins: int) -> float:
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
    mean_conf, mean_acc, count = _bin_stats(conf, correct, index, n_bins)
    return _weighted_gap(mean_conf, mean_acc, count)


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy: ``mean_n [argmax_c p_nc == y_n]``.

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
    """
    p, y = _check_classification(probs, labels)
    return _accuracy(p, y)


def nll(probs: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the true class: ``−mean_n log max(p_{n,y_n}, ε)``.

    ``ε`` is the machine epsilon of the input dtype (as scikit-learn's ``log_loss``), so a zero
    probability on the true class gives a large finite value instead of ``inf``.

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
    """
    p, y = _check_classification(probs, labels)
    return _nll(p, y, _clamp_eps(_as_tensor(probs, "probs")))


def brier(probs: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score: ``mean_n Σ_c (p_nc − [y_n = c])²`` (in [0, 2]).

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
    """
    p, y = _check_classification(probs, labels)
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
    n_bins = _check_n_bins(n_bins)
    p, y = _check_classification(probs, labels)
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
    n_bins = _check_n_bins(n_bins)
    p, y = _check_classification(probs, labels)
    return _adaptive_ece(p, y, n_bins)


def classification_metrics(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, float]:
    """All classification metrics at once (inputs validated once).

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
        n_bins: number of calibration bins.

    Returns:
        ``{"acc", "nll", "ece", "mce", "brier", "aece"}`` as floats.
    """
    n_bins = _check_n_bins(n_bins)
    p, y = _check_classification(probs, labels)
    bins = _reliability_bins(p, y, n_bins)
    return {
        "acc": _accuracy(p, y),
        "nll": _nll(p, y, _clamp_eps(_as_tensor(probs, "probs"))),
        "ece": bins.ece(),
        "mce": bins.mce(),
        "brier": _brier(p, y),
        "aece": _adaptive_ece(p, y, n_bins),
    }


# --------------------------------------------------------------------------------------------
# Binary / multi-label
# --------------------------------------------------------------------------------------------


def _check_binary(probs: Any, labels: Any) -> tuple[Tensor, Tensor, float]:
    p = _check_probs(probs, simplex=False)
    t = _check_binary_labels(labels, p.shape).to(p.device)
    return p, t, _clamp_eps(_as_tensor(probs, "probs"))


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
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out").to(s_in.device)
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
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out").to(s_in.device)
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


# --------------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------------


def _z(level: float) -> float:
    """Half-width of the central ``level`` interval of N(0, 1): ``Φ⁻¹((1 + level) / 2)``."""
    return float(torch.special.ndtri(torch.tensor((1.0 + level) / 2.0, dtype=torch.float64)))


def _rmse(m: Tensor, t: Tensor) -> float:
    return float(((m - t) ** 2).mean().sqrt())


def _mae(m: Tensor, t: Tensor) -> float:
    return float((m - t).abs().mean())


def _gaussian_nll(m: Tensor, v: Tensor, t: Tensor) -> float:
    return float((0.5 * (_LOG_2PI + v.log() + (t - m) ** 2 / v)).mean())


def _crps(m: Tensor, v: Tensor, t: Tensor) -> float:
    sigma = v.sqrt()
    z = (t - m) / sigma
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    cdf = torch.special.ndtr(z)
    crps = sigma * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))
    return float(crps.mean())


def _coverage(m: Tensor, v: Tensor, t: Tensor, level: float) -> float:
    return float(((t - m).abs() <= _z(level) * v.sqrt()).to(torch.float64).mean())


def rmse(mean: Tensor, var: Tensor, y: Tensor) -> float:
    """Root mean squared error over all elements: ``sqrt(mean (μ − y)²)``.

    ``var`` is validated but unused, so every regression metric takes the same arguments.
    """
    m, _, t = _check_regression(mean, var, y)
    return _rmse(m, t)


def mae(mean: Tensor, var: Tensor, y: Tensor) -> float:
    """Mean absolute error over all elements: ``mean |μ − y|`` (``var`` validated, unused)."""
    m, _, t = _check_regression(mean, var, y)
    return _mae(m, t)


def gaussian_nll(mean: Tensor, var: Tensor, y: Tensor) -> float:
    """Mean Gaussian negative log-likelihood per element.

    ``mean ½ [log 2π + log σ² + (y − μ)² / σ²]`` with ``σ²`` the total predictive variance.

    Args:
        mean: (N, D) predictive mean.
        var: (N, D) total predictive variance (> 0).
        y: (N, D) targets ((N,) for D = 1 is fine).
    """
    m, v, t = _check_regression(mean, var, y)
    return _gaussian_nll(m, v, t)


def crps_gaussian(mean: Tensor, var: Tensor, y: Tensor) -> float:
    """Mean continuous ranked probability score of Gaussian predictions (closed form).

    ``CRPS(N(μ, σ²), y) = σ [z (2Φ(z) − 1) + 2φ(z) − 1/√π]`` with ``z = (y − μ)/σ``
    (Gneiting et al., 2005); equals ``∫ (F(x) − 1[x ≥ y])² dx``. Lower is better, in the units
    of y.

    Args:
        mean: (N, D) predictive mean.
        var: (N, D) total predictive variance (> 0).
        y: (N, D) targets.
    """
    m, v, t = _check_regression(mean, var, y)
    return _crps(m, v, t)


def interval(mean: Tensor, var: Tensor, level: float = 0.95) -> tuple[Tensor, Tensor]:
    """Central predictive interval ``μ ± Φ⁻¹((1 + level)/2) σ``.

    Args:
        mean: (N, D) predictive mean.
        var: (N, D) total predictive variance (> 0).
        level: probability mass inside the interval, in (0, 1).

    Returns:
        ``(lower, upper)``, each of the shape of ``mean``, in float64.
    """
    level = _check_level(level)
    m, v = _check_mean_var(mean, var)
    half = _z(level) * v.sqrt()
    return m - half, m + half


def coverage(mean: Tensor, var: Tensor, y: Tensor, level: float = 0.95) -> float:
    """Fraction of target elements inside the central ``level`` interval (bounds included).

    A calibrated Gaussian predictive gives ``coverage ≈ level``.

    Args:
        mean: (N, D) predictive mean.
        var: (N, D) total predictive variance (> 0).
        y: (N, D) targets.
        level: nominal level in (0, 1).
    """
    level = _check_level(level)
    m, v, t = _check_regression(mean, var, y)
    return _coverage(m, v, t, level)


@dataclass(frozen=True)
class CoverageCurve:
    """Nominal versus empirical coverage of central intervals (for the calibration plot).

    Attributes:
        nominal: (L,) nominal levels in (0, 1).
        empirical: (L,) observed fraction of targets inside each interval.
    """

    nominal: Tensor
    empirical: Tensor


def coverage_curve(
    mean: Tensor, var: Tensor, y: Tensor, levels: Iterable[float] | None = None
) -> CoverageCurve:
    """Empirical coverage at many nominal levels (default 0.05, 0.10, ..., 0.95, 0.99).

    Args:
        mean: (N, D) predictive mean.
        var: (N, D) total predictive variance (> 0).
        y: (N, D) targets.
        levels: nominal levels in (0, 1).
    """
    if levels is None:
        levels = [k / 20 for k in range(1, 20)] + [0.99]
    checked = [_check_level(lv, "levels") for lv in levels]
    if not checked:
        raise BadInputError("levels: expected at least one level, got none")
    m, v, t = _check_regression(mean, var, y)
    empirical = [_coverage(m, v, t, lv) for lv in checked]
    return CoverageCurve(
        nominal=torch.tensor(checked, dtype=torch.float64),
        empirical=torch.tensor(empirical, dtype=torch.float64),
    )


def coverage_key(level: float) -> str:
    """Metric name of a coverage level: 0.9 → ``coverage_90``, 0.975 → ``coverage_97_5``.

    The decimal point becomes ``_`` so the name stays an identifier usable in gates.
    """
    pct = round(_check_level(level) * 100.0, 6)
    text = f"{pct:g}" if pct != int(pct) else str(int(pct))
    return "coverage_" + text.replace(".", "_")


def regression_metrics(
    mean: Tensor, var: Tensor, y: Tensor, levels: Sequence[float] = (0.5, 0.9, 0.95)
) -> dict[str, float]:
    """All regression metrics at once (inputs validated once).

    Args:
        mean: (N, D) predictive mean.
        var: (N, D) total predictive variance (> 0), observation noise included.
        y: (N, D) targets.
        levels: nominal levels of the coverage metrics.

    Returns:
        ``{"rmse", "mae", "nll", "crps", "coverage_<pct>" per level}`` as floats.
    """
    checked = [_check_level(lv, "levels") for lv in levels]
    keys = {coverage_key(lv): lv for lv in checked}
    m, v, t = _check_regression(mean, var, y)
    out = {
        "rmse": _rmse(m, t),
        "mae": _mae(m, t),
        "nll": _gaussian_nll(m, v, t),
        "crps": _crps(m, v, t),
    }
    for key, lv in keys.items():
        out[key] = _coverage(m, v, t, lv)
    return out
