"""The bootstrap's statistics: the evaluation metrics as functions of per-row resample counts.

Each ``*_statistic`` takes the split's rows once and returns a :data:`Statistic`: per-row counts
``w`` (b, N) of b resamples → metric name → (b,) values, vectorised (``w @ x / N`` for a mean,
``scatter_add`` for binned and rank statistics). With ``w = 1`` each equals the metric of
:mod:`laplace_cli.metrics.classification` / :mod:`laplace_cli.metrics.regression` on the whole
split. :mod:`laplace_cli.metrics.bootstrap` draws the resamples, turns the values into intervals
and re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.checks import (
    as_tensor,
    check_binary_labels,
    check_classification,
    check_level,
    check_n_bins,
    check_probs,
    check_regression,
    check_scores,
    clamp_eps,
)
from laplace_cli.metrics.regression import coverage_key

__all__ = [
    "BINNINGS",
    "Statistic",
    "auroc_statistic",
    "binary_statistic",
    "classification_statistic",
    "regression_statistic",
]

BINNINGS = ("equal-width", "equal-mass")
"""Binning schemes of the ECE: equal-width bins ``(k/B, (k+1)/B]`` or equal-count bins."""

Statistic = Callable[[Sequence[Tensor]], dict[str, Tensor]]
"""Counts per group, each (b, N_group) float64, to metric name → (b,) values."""


# --------------------------------------------------------------------------------------------
# Statistics (counts → metric values per resample)
# --------------------------------------------------------------------------------------------


def _mean(w: Tensor, x: Tensor) -> Tensor:
    """Weighted mean per resample: ``Σ_n w_bn x_n / N`` (every resample has N rows)."""
    return (w @ x) / x.shape[0]


def _equal_width_index(conf: Tensor, n_bins: int) -> Tensor:
    # Same edges and (lo, hi] convention as metrics.classification.reliability_bins.
    edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
    return torch.bucketize(conf, edges[1:-1].contiguous(), right=False)


def _fixed_bin_gaps(w: Tensor, onehot: Tensor, conf: Tensor, correct: Tensor) -> tuple[Tensor, ...]:
    """Per resample and bin: count, Σ confidence, Σ correct, for a bin fixed per row."""
    count = w @ onehot
    conf_sum = w @ (onehot * conf[:, None])
    acc_sum = w @ (onehot * correct[:, None])
    return count, conf_sum, acc_sum


def _equal_mass_sums(
    w: Tensor, group: Tensor, group_conf: Tensor, correct: Tensor, n_bins: int
) -> tuple[Tensor, ...]:
    """Per resample and bin: count, Σ confidence, Σ correct over equal-mass bins.

    As ``metrics.classification.adaptive_ece`` on the materialised resample: a row goes into
    bin ``floor(r·B/N)`` with ``r`` the number of the resample's rows of strictly smaller
    confidence; rows of equal confidence (one ``group``) share a bin.
    """
    b, n = w.shape
    n_groups = group_conf.shape[0]
    idx = group.expand(b, n)
    g_count = torch.zeros(b, n_groups, dtype=torch.float64).scatter_add_(1, idx, w)
    g_correct = torch.zeros(b, n_groups, dtype=torch.float64).scatter_add_(1, idx, w * correct)
    rank = (torch.cumsum(g_count, dim=1) - g_count).round().to(torch.int64)  # exact integers
    bins = torch.div(rank * n_bins, n, rounding_mode="floor").clamp_max(n_bins - 1)

    def per_bin(x: Tensor) -> Tensor:
        return torch.zeros(b, n_bins, dtype=torch.float64).scatter_add_(1, bins, x)

    return per_bin(g_count), per_bin(g_count * group_conf), per_bin(g_correct)


def _ece_mce(count: Tensor, conf_sum: Tensor, acc_sum: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """ECE ``Σ_b |Σacc − Σconf| / N`` and MCE ``max_b |acc_b − conf_b|`` over non-empty bins."""
    gap = (acc_sum - conf_sum).abs()
    ece = gap.sum(dim=1) / n
    mce = torch.where(count > 0, gap / count.clamp_min(1.0), torch.zeros_like(gap)).amax(dim=1)
    return ece, mce


def classification_statistic(
    probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "equal-width"
) -> Statistic:
    """Resampled ``acc, nll, ece, mce, brier, aece`` of (N, C) probabilities (group 0).

    Same definitions as :func:`laplace_cli.metrics.classification.classification_metrics`;
    ``binning`` sets the bins of ``ece`` and ``mce`` (``aece`` is always equal-mass).
    """
    n_bins = check_n_bins(n_bins)
    if binning not in BINNINGS:
        raise BadInputError(f"binning: expected one of {', '.join(BINNINGS)}, got {binning!r}")
    p, y = check_classification(probs, labels)
    p, y = p.cpu(), y.cpu()
    eps = clamp_eps(as_tensor(probs, "probs"))
    n = p.shape[0]
    conf, pred = p.max(dim=1)
    correct = (pred == y).to(torch.float64)
    row_nll = -p.gather(1, y[:, None]).squeeze(1).clamp_min(eps).log()
    onehot_y = torch.nn.functional.one_hot(y, p.shape[1]).to(torch.float64)
    row_brier = ((p - onehot_y) ** 2).sum(dim=1)
    width_onehot = torch.nn.functional.one_hot(_equal_width_index(conf, n_bins), n_bins).to(
        torch.float64
    )
    group_conf, group = torch.unique(conf, sorted=True, return_inverse=True)

    def statistic(counts: Sequence[Tensor]) -> dict[str, Tensor]:
        w = counts[0].to(torch.float64)
        width = _ece_mce(*_fixed_bin_gaps(w, width_onehot, conf, correct), n)
        mass = _ece_mce(*_equal_mass_sums(w, group, group_conf, correct, n_bins), n)
        ece, mce = width if binning == "equal-width" else mass
        return {
            "acc": _mean(w, correct),
            "nll": _mean(w, row_nll),
            "ece": ece,
            "mce": mce,
            "brier": _mean(w, row_brier),
            "aece": mass[0],
        }

    return statistic


def binary_statistic(probs: Tensor, labels: Tensor) -> Statistic:
    """Resampled ``acc, nll, brier`` of independent sigmoid outputs (rows resampled, group 0).

    As :func:`laplace_cli.metrics.classification.binary_metrics`: means over all elements.
    """
    p = check_probs(probs, simplex=False).cpu()
    t = check_binary_labels(labels, p.shape).to(p.device)
    eps = clamp_eps(as_tensor(probs, "probs"))
    p2, t2 = p.reshape(p.shape[0], -1), t.reshape(p.shape[0], -1)
    row_acc = ((p2 > 0.5).to(torch.float64) == t2).to(torch.float64).mean(dim=1)
    ll = t2 * p2.clamp_min(eps).log() + (1.0 - t2) * (1.0 - p2).clamp_min(eps).log()
    row_nll = -ll.mean(dim=1)
    row_brier = ((p2 - t2) ** 2).mean(dim=1)

    def statistic(counts: Sequence[Tensor]) -> dict[str, Tensor]:
        w = counts[0].to(torch.float64)
        return {"acc": _mean(w, row_acc), "nll": _mean(w, row_nll), "brier": _mean(w, row_brier)}

    return statistic


def regression_statistic(
    mean: Tensor, var: Tensor, y: Tensor, levels: Sequence[float] = (0.5, 0.9, 0.95)
) -> Statistic:
    """Resampled ``rmse, mae, nll, crps, coverage_<pct>`` of Gaussian predictives (group 0).

    As :func:`laplace_cli.metrics.classification.regression_metrics`; rows (with their D
    outputs) are resampled, so each metric is the resample's mean over its N·D elements.
    """
    checked = [check_level(lv, "levels") for lv in levels]
    m, v, t = (x.cpu() for x in check_regression(mean, var, y))
    m, v, t = (x.reshape(x.shape[0], -1) for x in (m, v, t))
    err = t - m
    sigma = v.sqrt()
    z = err / sigma
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    crps = sigma * (z * (2.0 * torch.special.ndtr(z) - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))
    rows = {
        "sq": (err**2).mean(dim=1),
        "mae": err.abs().mean(dim=1),
        "nll": (0.5 * (math.log(2.0 * math.pi) + v.log() + err**2 / v)).mean(dim=1),
        "crps": crps.mean(dim=1),
    }
    for lv in checked:
        half = float(torch.special.ndtri(torch.tensor((1.0 + lv) / 2.0, dtype=torch.float64)))
        rows[coverage_key(lv)] = (err.abs() <= half * sigma).to(torch.float64).mean(dim=1)

    def statistic(counts: Sequence[Tensor]) -> dict[str, Tensor]:
        w = counts[0].to(torch.float64)
        out = {"rmse": _mean(w, rows["sq"]).sqrt()}
        out.update({k: _mean(w, x) for k, x in rows.items() if k != "sq"})
        return out

    return statistic


def auroc_statistic(
    scores_in: Tensor, scores_out: Tensor, groups: tuple[int, int] = (0, 1)
) -> Statistic:
    """Resampled AUROC of OOD scores (higher = more likely OOD), in and OOD rows resampled apart.

    ``AUROC = Σ_j w_out,j (#in below s_j + ½ #in tied with s_j) / (N_in N_out)`` with the
    resample's counts, as :func:`laplace_cli.metrics.classification.auroc` (ties count ½).

    Args:
        scores_in: (N_in,) scores of the scored split (group ``groups[0]``).
        scores_out: (N_out,) scores of the OOD split (group ``groups[1]``).
    """
    s_in = check_scores(scores_in, "scores_in").cpu()
    s_out = check_scores(scores_out, "scores_out").cpu()
    n_in, n_out = s_in.shape[0], s_out.shape[0]
    values, group = torch.unique(torch.cat([s_in, s_out]), sorted=True, return_inverse=True)
    g_in, g_out = group[:n_in], group[n_in:]
    n_groups = values.shape[0]

    def statistic(counts: Sequence[Tensor]) -> dict[str, Tensor]:
        w_in = counts[groups[0]].to(torch.float64)
        w_out = counts[groups[1]].to(torch.float64)
        b = w_in.shape[0]
        c_in = torch.zeros(b, n_groups, dtype=torch.float64).scatter_add_(
            1, g_in.expand(b, n_in), w_in
        )
        c_out = torch.zeros(b, n_groups, dtype=torch.float64).scatter_add_(
            1, g_out.expand(b, n_out), w_out
        )
        below = torch.cumsum(c_in, dim=1) - c_in
        return {"auroc": (c_out * (below + 0.5 * c_in)).sum(dim=1) / (n_in * n_out)}

    return statistic
