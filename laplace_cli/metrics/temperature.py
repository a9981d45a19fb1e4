"""Temperature scaling (Guo et al., 2017): the post-hoc calibration baseline of ``evaluate``.

Not to be confused with the *posterior* temperature of the Laplace approximation
(``--temperature``, docs/design.md §5), which scales the curvature. Here a single scalar ``T``
divides the MAP logits, ``softmax(z / T)``, and is fitted by minimising the NLL on held-out
data. For regression the analogue is a scalar ``s`` multiplying the predictive variance.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError, LaplaceWarning
from laplace_cli.metrics.classification import (
    as_tensor,
    check_finite,
    check_labels,
    check_regression,
)

__all__ = [
    "CalibrationWarning",
    "apply_temperature",
    "apply_variance_scale",
    "fit_temperature",
    "fit_temperature_checked",
    "fit_variance_scale",
    "temperature_nll",
]


def _check_logits(logits: Any) -> Tensor:
    t = as_tensor(logits, "logits")
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] < 2 or not t.is_floating_point():
        raise BadInputError(
            f"logits: expected floating-point logits of shape (N, C) with N >= 1, C >= 2, got "
            f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
        )
    check_finite(t, "logits")
    return t


def _check_temperature(value: Any, name: str = "temperature") -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BadInputError(f"{name}: expected a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise BadInputError(f"{name}: expected a positive finite number, got {value!r}")
    return v


def _nll_grad_hess(z: Tensor, y: Tensor, beta: float) -> tuple[float, float, float]:
    """NLL of softmax(β z) and its first two derivatives in β.

    ``f(β) = mean_n [logsumexp(β z_n) − β z_{n,y_n}]``, ``f'(β) = mean_n [E_p[z_n] − z_{n,y_n}]``
    and ``f''(β) = mean_n Var_p[z_n] ≥ 0`` with ``p = softmax(β z_n)``: f is convex in β.
    """
    scaled = beta * z  # (N, C)
    log_p = torch.log_softmax(scaled, dim=1)
    p = log_p.exp()
    z_true = z.gather(1, y.unsqueeze(1)).squeeze(1)  # (N,)
    mean_z = (p * z).sum(dim=1)
    var_z = (p * (z - mean_z.unsqueeze(1)) ** 2).sum(dim=1)
    f = float(-log_p.gather(1, y.unsqueeze(1)).mean())
    return f, float((mean_z - z_true).mean()), float(var_z.mean())


def temperature_nll(logits: Tensor, labels: Tensor, temperature: float) -> float:
    """Mean NLL of ``softmax(logits / T)`` on ``labels`` (the objective of :func:`fit_temperature`).

    Args:
        logits: (N, C) logits.
        labels: (N,) integer labels.
        temperature: T > 0.
    """
    z = _check_logits(logits).to(torch.float64)
    y = check_labels(labels, z.shape[0], z.shape[1]).to(z.device)
    t = _check_temperature(temperature)
    return _nll_grad_hess(z, y, 1.0 / t)[0]


def fit_temperature(
    logits: Tensor,
    labels: Tensor,
    *,
    max_iter: int = 100,
    bounds: tuple[float, float] = (1e-2, 1e2),
    tol: float = 1e-10,
) -> float:
    """Fit the temperature minimising the NLL of ``softmax(logits / T)``.

    The objective is convex in the inverse temperature ``β = 1/T`` (see ``_nll_grad_hess``),
    so its derivative is monotone and a safeguarded Newton iteration on ``f'(β) = 0`` (Newton
    steps, falling back to bisection of the sign-change bracket when a step leaves it) finds
    the unique minimiser; this is equivalent to minimising over ``log T`` but with no step
    size to tune, deterministic, and accurate to ``tol`` relative in β (far below 1e-4 in T).

    If the optimum lies outside ``bounds`` the nearest bound is returned (e.g. separable data
    where the NLL keeps falling as T → 0 gives ``bounds[0]``). If the NLL does not depend on
    T at all (constant logits per row), 1.0 is returned.

    Args:
        logits: (N, C) validation logits of the MAP model.
        labels: (N,) integer labels.
        max_iter: maximum number of iterations (each costs one pass over the logits).
        bounds: ``(T_min, T_max)`` search range, ``0 < T_min < T_max``.
        tol: relative tolerance on β.

    Returns:
        The fitted temperature T as a float.
    """
    z = _check_logits(logits).to(torch.float64)
    y = check_labels(labels, z.shape[0], z.shape[1]).to(z.device)
    t_min = _check_temperature(bounds[0], "bounds[0]")
    t_max = _check_temperature(bounds[1], "bounds[1]")
    if not t_min < t_max:
        raise BadInputError(f"bounds: expected T_min < T_max, got {bounds!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise BadInputError(f"max_iter: expected a positive integer, got {max_iter!r}")

    lo, hi = 1.0 / t_max, 1.0 / t_min  # bracket in β
    _, g_lo, _ = _nll_grad_hess(z, y, lo)
    _, g_hi, _ = _nll_grad_hess(z, y, hi)
    if g_lo >= 0.0 and g_hi <= 0.0:
        return 1.0  # f' ≡ 0 on the bracket (f' is monotone): every T is optimal
    if g_lo >= 0.0:
        return t_max  # minimiser at β <= 1/T_max
    if g_hi <= 0.0:
        return t_min  # minimiser at β >= 1/T_min

    beta = min(max(1.0, lo), hi)  # start at T = 1: the usual answer is nearby
    for _ in range(max_iter):
        _, g, h = _nll_grad_hess(z, y, beta)
        if g > 0.0:
            hi = beta
        elif g < 0.0:
            lo = beta
        else:
            break
        step = g / h if h > 0.0 else math.inf
        candidate = beta - step
        if not lo < candidate < hi:
            candidate = 0.5 * (lo + hi)
        converged = abs(candidate - beta) <= tol * beta or (hi - lo) <= tol * beta
        beta = candidate
        if converged:
            break
    return 1.0 / beta


class CalibrationWarning(LaplaceWarning):
    """A post-hoc calibration baseline (temperature / variance scale) not to be trusted."""


def fit_temperature_checked(
    logits: Tensor, labels: Tensor, *, bounds: tuple[float, float] = (1e-2, 1e2)
) -> tuple[float, str | None]:
    """:func:`fit_temperature`, guarded: returns ``(T, note)``; ``note`` is None when T is fine.

    T at the lower bound means the validation logits separate the classes: the NLL keeps
    falling as T → 0, so the "optimum" is infinite confidence, which no test set rewards
    (T = 0.01 multiplies the logits by 100). Then T = 1 is used instead (no rescaling). T at
    the upper bound (near-uniform predictions) is kept. Either way a CalibrationWarning says so.
    """
    t = fit_temperature(logits, labels, bounds=bounds)
    n = int(as_tensor(logits, "logits").shape[0])
    if t <= bounds[0]:
        note = (
            f"temperature scaling: the {n} validation rows are separated perfectly by the MAP "
            f"logits, so the fitted temperature runs to its bound {bounds[0]:g} (the NLL keeps "
            "falling as T -> 0); using T = 1 instead. A larger validation split gives a "
            "usable temperature"
        )
        warnings.warn(note, CalibrationWarning, stacklevel=2)
        return 1.0, note
    if t >= bounds[1]:
        note = (
            f"temperature scaling: the fitted temperature hit its bound {bounds[1]:g} on the {n} "
            "validation rows (near-uniform predictions do best there); check the model and the "
            "validation split"
        )
        warnings.warn(note, CalibrationWarning, stacklevel=2)
        return t, note
    return t, None


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Scale logits by a temperature: ``logits / T`` (apply softmax afterwards).

    Args:
        logits: (..., C) logits.
        temperature: T > 0 (as returned by :func:`fit_temperature`).

    Returns:
        Tensor of the same shape and dtype as ``logits``.
    """
    t = _check_temperature(temperature)
    z = as_tensor(logits, "logits")
    if not z.is_floating_point():
        raise BadInputError(f"logits: expected a floating-point tensor, got {z.dtype}")
    return z / t


def fit_variance_scale(mean: Tensor, var: Tensor, y: Tensor) -> float:
    """Scalar ``s`` minimising the Gaussian NLL of ``N(mean, s · var)`` (closed form).

    ``NLL(s) = mean ½ [log 2π + log s + log σ² + r² / (s σ²)]`` with ``r = y − μ``;
    ``dNLL/ds = 0`` gives ``s = mean(r² / σ²)``, the mean squared standardised residual.

    Args:
        mean: (N, D) predictive mean.
        var: (N, D) total predictive variance (> 0).
        y: (N, D) targets.

    Raises:
        BadInputError: the residuals are all zero, so no finite NLL minimiser exists.
    """
    m, v, t = check_regression(mean, var, y)
    s = float(((t - m) ** 2 / v).mean())
    if not s > 0.0:
        raise BadInputError(
            "fit_variance_scale: every residual y - mean is 0, so no variance scale minimises "
            "the NLL (it decreases without bound as s -> 0)"
        )
    return s


def apply_variance_scale(var: Tensor, scale: float) -> Tensor:
    """Scale predictive variances: ``s · var``.

    Args:
        var: predictive variances of any shape.
        scale: s > 0 (as returned by :func:`fit_variance_scale`).
    """
    s = _check_temperature(scale, "scale")
    return as_tensor(var, "var") * s
