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

Validation lives in ``metrics.checks``, calibration (reliability bins, ECE, MCE, adaptive ECE)
in ``metrics.calibration`` and the regression metrics in ``metrics.regression``; their public
names are re-exported here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError

# Calibration lives in its own module; its names stay importable from here.
from laplace_cli.metrics.calibration import (
    ReliabilityBins,
    adaptive_ece,
    calibration_errors,
    ece,
    mce,
    reliability_bins,
)
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


def _accuracy(p: Tensor, y: Tensor) -> float:
    return float((p.argmax(dim=1) == y).to(torch.float64).mean())


def _nll(p: Tensor, y: Tensor, eps: float) -> float:
    p_true = p.gather(1, y.unsqueeze(1)).squeeze(1)  # (N,)
    return float(-p_true.clamp_min(eps).log().mean())


def _brier(p: Tensor, y: Tensor) -> float:
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(torch.float64)  # (N, C)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


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
    ece_value, mce_value, aece_value = calibration_errors(p, y, n_bins, binning)
    return {
        "acc": _accuracy(p, y),
        "nll": _nll(p, y, clamp_eps(as_tensor(probs, "probs"))),
        "ece": ece_value,
        "mce": mce_value,
        "brier": _brier(p, y),
        "aece": aece_value,
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
