"""Input validation of the metrics: shapes, dtypes, ranges and finiteness, checked before any
computation, each failure a `BadInputError` that says what was expected and what was got.

Split out of `laplace_cli.metrics.classification` (validation separate from compute); the metrics modules and
`laplace_cli.metrics.temperature` share these helpers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError


def _describe(t: Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"


def as_tensor(x: Any, name: str) -> Tensor:
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


def clamp_eps(t: Tensor) -> float:
    """Smallest probability used before a log: the machine epsilon of the input's dtype.

    This matches scikit-learn's ``log_loss`` (``eps="auto"``) so that a zero probability on the
    true class costs a large but finite amount (about 36 nats in float64, 16 in float32).
    """
    dtype = t.dtype if t.is_floating_point() else torch.float64
    return float(torch.finfo(dtype).eps)


def check_finite(t: Tensor, name: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise BadInputError(f"{name}: expected finite values, got {n_bad} NaN/Inf entries")


def check_probs(probs: Any, *, name: str = "probs", simplex: bool = True) -> Tensor:
    """Validate probabilities and return them as float64.

    Args:
        probs: (N, C) class probabilities (``simplex=True``: rows sum to 1, C >= 2), or (N,) /
            (N, K) independent Bernoulli probabilities (``simplex=False``).
        name: name used in error messages.
        simplex: whether rows must sum to 1.

    Raises:
        BadInputError: wrong shape, empty, non-finite, outside [0, 1] or rows not summing to 1.
    """
    t = as_tensor(probs, name)
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
    check_finite(t, name)
    # Loose on purpose: the check is there to catch logits or unnormalised scores passed by
    # mistake, not rounding. float32 probabilities cast to float64 by a caller are off by
    # ~1e-6; half precision by ~1e-2 (hence sqrt(eps) for low-precision dtypes).
    tol = max(1e-3, math.sqrt(clamp_eps(t)))
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


def check_labels(labels: Any, n: int, n_classes: int, *, name: str = "labels") -> Tensor:
    """Validate integer class labels of shape (N,) in ``[0, n_classes)``; returns int64.

    Float labels are accepted when every value is a whole number (CSV readers produce them).
    """
    t = as_tensor(labels, name)
    if t.ndim != 1 or t.shape[0] != n:
        raise BadInputError(f"{name}: expected shape ({n},) to match probs, got {_describe(t)}")
    if t.dtype == torch.bool:
        raise BadInputError(f"{name}: expected integer class labels, got {_describe(t)}")
    if t.is_floating_point():
        check_finite(t, name)
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


def check_binary_labels(labels: Any, shape: torch.Size, *, name: str = "labels") -> Tensor:
    """Validate {0, 1} targets with the same shape as the probabilities; returns float64."""
    t = as_tensor(labels, name)
    if t.shape != shape:
        raise BadInputError(
            f"{name}: expected shape {tuple(shape)} to match probs, got {_describe(t)}"
        )
    check_finite(t, name)
    t = t.to(torch.float64)
    if not bool(((t == 0) | (t == 1)).all()):
        raise BadInputError(f"{name}: expected binary targets in {{0, 1}}, got other values")
    return t


def check_classification(probs: Any, labels: Any) -> tuple[Tensor, Tensor]:
    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    return p, y.to(p.device)


def check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise BadInputError(f"n_bins: expected a positive integer, got {n_bins!r}")
    return n_bins


def check_level(level: Any, name: str = "level") -> float:
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise BadInputError(f"{name}: expected a number in (0, 1), got {level!r}") from None
    if not 0.0 < value < 1.0:
        hint = f" (a fraction: {value / 100:g} for {value:g}%)" if 1.0 < value < 100.0 else ""
        raise BadInputError(f"{name}: expected a number in (0, 1), got {level!r}{hint}")
    return value


def check_scores(scores: Any, name: str) -> Tensor:
    t = as_tensor(scores, name)
    if t.ndim != 1 or t.shape[0] == 0 or t.dtype == torch.bool:
        raise BadInputError(
            f"{name}: expected a non-empty 1-D tensor of scores, got {_describe(t)}"
        )
    check_finite(t, name)
    return t.to(torch.float64)


def check_mean_var(mean: Any, var: Any) -> tuple[Tensor, Tensor]:
    m = as_tensor(mean, "mean")
    v = as_tensor(var, "var")
    if m.ndim not in (1, 2) or m.shape[0] == 0:
        raise BadInputError(f"mean: expected shape (N, D) or (N,) with N >= 1, got {_describe(m)}")
    if v.shape != m.shape:
        raise BadInputError(
            f"var: expected the shape of mean {tuple(m.shape)} (per-output total variance, not a "
            f"covariance), got {_describe(v)}"
        )
    check_finite(m, "mean")
    check_finite(v, "var")
    v = v.to(torch.float64)
    if not bool((v > 0).all()):
        raise BadInputError(
            f"var: expected strictly positive variances, got minimum {float(v.min()):.6g}"
        )
    return m.to(torch.float64), v


def check_regression(mean: Any, var: Any, y: Any) -> tuple[Tensor, Tensor, Tensor]:
    m, v = check_mean_var(mean, var)
    t = as_tensor(y, "y")
    # (N,) targets with a single-output (N, 1) model are taken as (N, 1), as in docs/design.md §1b.
    if t.ndim == 1 and m.ndim == 2 and m.shape[1] == 1 and t.shape[0] == m.shape[0]:
        t = t.unsqueeze(1)
    if t.shape != m.shape:
        raise BadInputError(f"y: expected shape {tuple(m.shape)} to match mean, got {_describe(t)}")
    check_finite(t, "y")
    return m, v, t.to(device=m.device, dtype=torch.float64)
