"""Regression metrics on Gaussian predictives: RMSE, MAE, NLL, CRPS, central intervals and
their coverage.

Split out of `laplace_cli.metrics.classification`, which re-exports every public name; the conventions are in
its docstring (a mean and the *total* predictive variance of shape (N, D)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.checks import check_level, check_mean_var, check_regression

_LOG_2PI = math.log(2.0 * math.pi)


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
    m, _, t = check_regression(mean, var, y)
    return _rmse(m, t)


def mae(mean: Tensor, var: Tensor, y: Tensor) -> float:
    """Mean absolute error over all elements: ``mean |μ − y|`` (``var`` validated, unused)."""
    m, _, t = check_regression(mean, var, y)
    return _mae(m, t)


def gaussian_nll(mean: Tensor, var: Tensor, y: Tensor) -> float:
    """Mean Gaussian negative log-likelihood per element.

    ``mean ½ [log 2π + log σ² + (y − μ)² / σ²]`` with ``σ²`` the total predictive variance.

    Args:
        mean: (N, D) predictive mean.
        var: (N, D) total predictive variance (> 0).
        y: (N, D) targets ((N,) for D = 1 is fine).
    """
    m, v, t = check_regression(mean, var, y)
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
    m, v, t = check_regression(mean, var, y)
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
    level = check_level(level)
    m, v = check_mean_var(mean, var)
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
    level = check_level(level)
    m, v, t = check_regression(mean, var, y)
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
    checked = [check_level(lv, "levels") for lv in levels]
    if not checked:
        raise BadInputError("levels: expected at least one level, got none")
    m, v, t = check_regression(mean, var, y)
    empirical = [_coverage(m, v, t, lv) for lv in checked]
    return CoverageCurve(
        nominal=torch.tensor(checked, dtype=torch.float64),
        empirical=torch.tensor(empirical, dtype=torch.float64),
    )


def coverage_key(level: float) -> str:
    """Metric name of a coverage level: 0.9 → ``coverage_90``, 0.975 → ``coverage_97_5``.

    The decimal point becomes ``_`` so the name stays an identifier usable in gates.
    """
    pct = round(check_level(level) * 100.0, 6)
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
    checked = [check_level(lv, "levels") for lv in levels]
    keys = {coverage_key(lv): lv for lv in checked}
    m, v, t = check_regression(mean, var, y)
    out = {
        "rmse": _rmse(m, t),
        "mae": _mae(m, t),
        "nll": _gaussian_nll(m, v, t),
        "crps": _crps(m, v, t),
    }
    for key, lv in keys.items():
        out[key] = _coverage(m, v, t, lv)
    return out
