"""Split conformal prediction as pure functions: thresholds from a calibration split, then
prediction sets (classification) and intervals (regression) with their coverage and size.

Split conformal (Vovk et al. 2005; Angelopoulos & Bates 2021): with conformity scores s_1..s_n
on calibration rows (higher = the label fits worse) and level 1 − α, the threshold is

    q̂ = the k-th smallest score, k = ⌈(n + 1)(1 − α)⌉   (q̂ = +∞ when k > n),

and a test row's set holds every label whose score is ≤ q̂. If calibration and test rows are
exchangeable, P(y_test ∈ set) ≥ 1 − α (and < 1 − α + 1/(n + 1) without ties).

Scores:

* ``lac`` (least ambiguous sets, Sadinle et al. 2019): s = 1 − p_y.
* ``aps`` (adaptive sets, Romano et al. 2020), randomised: s = Σ_{j: p_j > p_y} p_j + u·p_y with
  u ~ U(0, 1) per row; a test row's set is {k : Σ_{j: p_j > p_k} p_j + u·p_k ≤ q̂} with one u
  per test row. Randomising makes coverage close to exact instead of conservative; the draws
  come from a seeded generator so results are reproducible.
* binary / multi-label, per label LAC: each label l is a two-class problem with probabilities
  (1 − p_l, p_l); s_l = 1 − p_l(y_l) and one q̂_l per label, the set of label l is
  {k ∈ {0, 1} : 1 − p_l(k) ≤ q̂_l}. Coverage is per label (each label's set holds its value
  with probability ≥ 1 − α), not of the whole label vector.
* regression, normalised (Lei et al. 2018): s = |y − μ| / σ, interval μ ± q̂σ (σ the predictive
  standard deviation); with σ ≡ 1 it is the absolute residual, interval μ ± q̂. Multi-output
  regression calibrates one threshold per output.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.checks import (
    check_binary_labels,
    check_classification,
    check_level,
    check_probs,
)

__all__ = [
    "CLASSIFICATION_SCORES",
    "prediction_fields",
    "aps_scores",
    "class_sets",
    "conformal_quantile",
    "conformal_rank",
    "interval_scores",
    "lac_scores",
    "regression_intervals",
    "set_metrics",
    "interval_metrics",
    "label_lac_scores",
    "label_set_metrics",
    "label_sets",
]

CLASSIFICATION_SCORES = ("lac", "aps")


def conformal_quantile(scores: Tensor, level: float) -> float:
    """q̂ at coverage `level` = 1 − α: the ⌈(n + 1)·level⌉-th smallest score (+∞ past n).

    Args:
        scores: (n,) calibration conformity scores (or (n, D): then use it column by column).
        level: target coverage in (0, 1).
    """
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(s).all()):
        raise BadInputError("conformal scores: expected finite values, got NaN/Inf")
    k = conformal_rank(s.numel(), level)
    if k > s.numel():
        return math.inf
    return float(torch.sort(s).values[k - 1])


def conformal_rank(n: int, level: float) -> int:
    """k = ⌈(n + 1)·level⌉: q̂ is the k-th smallest of n calibration scores (+∞ when k > n).

    The one place the rank rule lives: `conformal_quantile` and the vectorised re-splits of
    `metrics.conformal_resplit` both use it."""
    level = check_level(level, "conformal level")
    if n <= 0:
        raise BadInputError("conformal calibration needs at least one row, got none")
    # Round before ceil: (n + 1) · 0.56 is 28.000000000000004 for n = 49 in binary floating point.
    return math.ceil(round((n + 1) * level, 9))


def _uniform(n: int, generator: torch.Generator | None, device: Any) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64).to(device)


def lac_scores(probs: Tensor, labels: Tensor) -> Tensor:
    """LAC conformity scores 1 − p_y (N,)."""
    p, y = check_classification(probs, labels)
    return 1.0 - p.gather(1, y.unsqueeze(1)).squeeze(1)


def _aps_all(p: Tensor, u: Tensor) -> Tensor:
    """(N, C) APS scores of every label: Σ_{j: p_j > p_k} p_j + u·p_k."""
    # Mass strictly above p_k: sort descending, cumulative sum, then ties share the mass above
    # their group (searchsorted on the ascending order finds each group's start).
    asc, _ = torch.sort(p, dim=1)
    cum_asc = torch.cumsum(asc, 1)
    total = cum_asc[:, -1:]
    # Index of the first entry > p_k in ascending order; mass above = total − cumsum before it.
    idx = torch.searchsorted(asc.contiguous(), p.contiguous(), right=True)  # (N, C)
    before = torch.where(idx > 0, cum_asc.gather(1, (idx - 1).clamp_min(0)), torch.zeros_like(p))
    above = (total - before).clamp_min(0.0)
    return above + u.unsqueeze(1) * p


def aps_scores(probs: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Randomised APS conformity scores of the true labels (N,)."""
    p, y = check_classification(probs, labels)
    u = _uniform(p.shape[0], generator, p.device)
    return _aps_all(p, u).gather(1, y.unsqueeze(1)).squeeze(1)


def class_sets(
    probs: Tensor,
    threshold: float,
    score: str,
    generator: torch.Generator | None = None,
    uniforms: Tensor | None = None,
) -> Tensor:
    """(N, C) boolean prediction sets: the labels whose conformity score is ≤ `threshold`.

    For ``aps`` one uniform per row: `uniforms` (N,) when given (`predict` seeds them per row),
    else drawn from `generator` (the calibration draws are independent of these)."""
    p = check_probs(probs)
    if score == "lac":
        return (1.0 - p) <= threshold
    if score == "aps":
        if uniforms is None:
            u = _uniform(p.shape[0], generator, p.device)
        else:
            u = torch.as_tensor(uniforms, dtype=torch.float64).reshape(-1).to(p.device)
            if u.numel() != p.shape[0]:
                raise BadInputError(
                    f"APS sets: expected one uniform per row ({p.shape[0]}), got {u.numel()}"
                )
        return _aps_all(p, u) <= threshold
    raise BadInputError(
        f"conformal score: expected one of {', '.join(CLASSIFICATION_SCORES)}, got {score!r}"
    )


def set_metrics(sets: Tensor, labels: Tensor) -> dict[str, float]:
    """``{"coverage", "size"}``: share of rows whose set holds the label; mean set size."""
    y = torch.as_tensor(labels).long().reshape(-1)
    covered = sets.gather(1, y.unsqueeze(1).to(sets.device)).squeeze(1)
    return {
        "coverage": float(covered.to(torch.float64).mean()),
        "size": float(sets.sum(1).to(torch.float64).mean()),
    }


def _label_probs(probs: Tensor) -> Tensor:
    p = check_probs(probs, simplex=False)
    return p.unsqueeze(1) if p.ndim == 1 else p


def label_lac_scores(probs: Tensor, targets: Tensor) -> Tensor:
    """(N, L) per-label LAC scores 1 − p_l(y_l) of binary / multi-label probabilities p (N, L)
    (or (N,)) of label value 1 and 0/1 targets of the same shape."""
    p = _label_probs(probs)
    y = check_binary_labels(torch.as_tensor(targets).reshape(p.shape), p.shape).to(p.device)
    return 1.0 - torch.where(y.bool(), p, 1.0 - p)


def label_sets(probs: Tensor, thresholds: list[float]) -> Tensor:
    """(N, L, 2) boolean per-label sets: ``[n, l, k]`` is whether value k ∈ {0, 1} of label l
    is in the set, i.e. 1 − p_l(k) ≤ q̂_l (p_l(1) = p_l, p_l(0) = 1 − p_l)."""
    p = _label_probs(probs)
    q = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1).to(p.device)
    if q.numel() != p.shape[1]:
        raise BadInputError(
            f"per-label conformal sets: expected {p.shape[1]} thresholds (one per label), "
            f"got {q.numel()}"
        )
    two = torch.stack([p, 1.0 - p], -1)  # 1 − p_l(k) for k = 0, 1
    return two <= q.reshape(1, -1, 1)


def label_set_metrics(sets: Tensor, targets: Tensor) -> tuple[dict[str, float], list[dict]]:
    """(averaged, per label): ``{"coverage", "size"}`` of each label's sets (share of rows whose
    set holds the label's value; mean set size, 0–2), and their means over labels."""
    y = torch.as_tensor(targets).reshape(sets.shape[:2]).long().to(sets.device)
    covered = sets.gather(2, y.unsqueeze(2)).squeeze(2).to(torch.float64)  # (N, L)
    coverage = covered.mean(0)
    size = sets.sum(2).to(torch.float64).mean(0)
    per_label = [
        {"coverage": float(c), "size": float(z)}
        for c, z in zip(coverage.tolist(), size.tolist(), strict=True)
    ]
    return {"coverage": float(coverage.mean()), "size": float(size.mean())}, per_label


def _mean_std_y(mean: Any, std: Any, y: Any) -> tuple[Tensor, Tensor, Tensor]:
    m = torch.as_tensor(mean, dtype=torch.float64)
    m = m.unsqueeze(1) if m.ndim == 1 else m
    s = torch.as_tensor(std, dtype=torch.float64).reshape(m.shape)
    t = torch.as_tensor(y, dtype=torch.float64).reshape(m.shape)
    if not bool((s > 0).all()):
        raise BadInputError("conformal intervals: expected strictly positive standard deviations")
    return m, s, t


def interval_scores(mean: Tensor, std: Tensor, y: Tensor) -> Tensor:
    """(N, D) normalised residuals |y − μ| / σ (σ ≡ 1: absolute residuals)."""
    m, s, t = _mean_std_y(mean, std, y)
    return (t - m).abs() / s


def interval_thresholds(scores: Tensor, level: float) -> list[float]:
    """One q̂ per output column of (N, D) scores."""
    s = scores.unsqueeze(1) if scores.ndim == 1 else scores
    return [conformal_quantile(s[:, d], level) for d in range(s.shape[1])]


def regression_intervals(
    mean: Tensor, std: Tensor, thresholds: list[float]
) -> tuple[Tensor, Tensor]:
    """(lower, upper) = μ ∓ q̂_d σ per output column d."""
    m = torch.as_tensor(mean, dtype=torch.float64)
    m = m.unsqueeze(1) if m.ndim == 1 else m
    s = torch.as_tensor(std, dtype=torch.float64).reshape(m.shape)
    q = torch.tensor(thresholds, dtype=torch.float64)
    return m - q * s, m + q * s


def interval_metrics(lower: Tensor, upper: Tensor, y: Tensor) -> dict[str, float]:
    """``{"coverage", "width"}``: share of targets inside; mean interval width (target units)."""
    t = torch.as_tensor(y, dtype=torch.float64).reshape(lower.shape)
    inside = (t >= lower) & (t <= upper)
    return {
        "coverage": float(inside.to(torch.float64).mean()),
        "width": float((upper - lower).mean()),
    }


def prediction_fields(
    pred: dict[str, Tensor], thresholds: dict[str, Any], uniforms: Tensor | None = None
) -> dict[str, Tensor]:
    """Conformal fields of a batch of prediction rows from the stored thresholds of one score.

    ``{"lac": q̂}`` or ``{"aps": q̂}`` (classification, `pred["probs"]`; APS needs `uniforms`,
    one per row): ``conformal_set``, 0/1 per class; ``{"label_lac": [q̂ per label]}`` (binary /
    multi-label, `pred["probs"]` of value 1): ``conformal_has_0`` / ``conformal_has_1``, 0/1 per
    label (whether value 0 / 1 is in the label's set); ``{"normalised": [q̂ per output]}``
    (regression, `pred["mean"]`, `pred["var_total"]`): ``conformal_lower`` /
    ``conformal_upper`` = mean ∓ q̂·√var_total."""
    if "lac" in thresholds or "aps" in thresholds:
        score = "lac" if "lac" in thresholds else "aps"
        if score == "aps" and uniforms is None:
            raise BadInputError("APS conformal sets need one uniform draw per row")
        sets = class_sets(pred["probs"].double(), thresholds[score], score, uniforms=uniforms)
        return {"conformal_set": sets.to(torch.int8)}
    if "label_lac" in thresholds:
        probs = pred["probs"]
        sets = label_sets(probs.double(), thresholds["label_lac"]).to(torch.int8)
        shape = probs.shape  # (N,) for one label: the fields keep the probabilities' shape
        return {
            "conformal_has_0": sets[..., 0].reshape(shape),
            "conformal_has_1": sets[..., 1].reshape(shape),
        }
    mean = pred["mean"]
    std = pred["var_total"].double().sqrt()
    lower, upper = regression_intervals(mean, std, thresholds["normalised"])
    return {
        "conformal_lower": lower.reshape(mean.shape).to(mean.dtype),
        "conformal_upper": upper.reshape(mean.shape).to(mean.dtype),
    }
