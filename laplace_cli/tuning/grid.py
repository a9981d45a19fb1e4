"""Tuning by grid search: score a scalar δ (optionally × temperatures) on validation data with
the predictive that prediction will use.

Split out of `laplace_cli.tuning.api` (see its docstring for the method and the losses), which
re-exports `grid_losses`, `LOSSES` and `LossFn`; the losses themselves are tuning/scoring.py's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import batch_size
from laplace_cli.core.enums import LinkApprox, PredType
from laplace_cli.core.errors import BadInputError, NumericalError
from laplace_cli.tuning.cache import PredictiveCache, cache_unsupported_reason
from laplace_cli.tuning.common import short_tensor, warn
from laplace_cli.tuning.protocol import FittedLaplace
from laplace_cli.tuning.scoring import (
    LOSSES,
    LossFn,
    against_map,
    cached_losses,
    compare_with_map,
    direct_losses,
    grid_losses,
    grid_scales,
    json_float,
    map_loss,
    map_model_outputs,
    resolve_loss,
    resolve_predictive,
)

# LOSSES, LossFn, grid_losses, compare_with_map, map_loss: re-exported from tuning/scoring.py
__all__ = [
    "LOSSES",
    "LossFn",
    "check_grid",
    "compare_with_map",
    "grid_losses",
    "map_loss",
    "run_gridsearch",
]


def check_grid(
    log_min: float | None,
    log_max: float | None,
    size: int | None,
    names: tuple[str, str, str] = ("log_prior_prec_min", "log_prior_prec_max", "grid_size"),
) -> dict[str, Any]:
    """The grid settings given (None: the default), checked, as `optimize_prior_precision`
    keywords: log10 bounds finite and min < max (defaults -4 and 4), at least 2 points.

    `names` are what the caller calls them in messages (CLI flags, recipe keys)."""
    lo = -4.0 if log_min is None else log_min
    hi = 4.0 if log_max is None else log_max
    problems = []
    for name, value in ((names[0], lo), (names[1], hi)):
        if not math.isfinite(value) or abs(value) > 300:
            problems.append(
                f"{name}: expected the log10 of a prior precision between -300 and 300, "
                f"got {value:g}"
            )
    if not problems and not lo < hi:
        problems.append(
            f"{names[0]} {lo:g} must be below {names[1]} {hi:g} (both are log10 of the prior "
            "precision; the defaults are -4 and 4)"
        )
    if size is not None and (isinstance(size, bool) or int(size) != size or size < 2):
        problems.append(f"{names[2]}: expected an integer >= 2, got {size}")
    if problems:
        raise BadInputError("\n".join(problems))
    out: dict[str, Any] = {}
    if log_min is not None:
        out["log_prior_prec_min"] = float(log_min)
    if log_max is not None:
        out["log_prior_prec_max"] = float(log_max)
    if size is not None:
        out["grid_size"] = int(size)
    return out


def _positive_values(values: Any, what: str) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise BadInputError(f"{what}: expected at least one value")
    if not torch.isfinite(t).all() or (t <= 0).any():
        raise BadInputError(f"{what}: expected positive finite values, got {short_tensor(t)}")
    return t


def run_gridsearch(
    la: FittedLaplace,
    val_loader: Iterable[Any] | None,
    *,
    loss: str | LossFn,
    pred_type: Any,
    link_approx: Any,
    grid: Any,
    grid_size: int,
    log_min: float,
    log_max: float,
    temperature_grid: Any,
    refine: int,
    n_samples: int,
    seed: int,
    use_cache: bool,
) -> dict[str, Any]:
    if val_loader is None:
        raise BadInputError("gridsearch needs validation data: pass val_loader")
    name, fn = resolve_loss(la.likelihood, loss)
    pt, link = resolve_predictive(la, pred_type, link_approx)
    prior_grid, temp_grid = _grid_axes(
        la, grid, grid_size, log_min, log_max, temperature_grid, refine, name
    )
    with_temp = temperature_grid is not None

    # Product grid, prior-major: point k = (prior_grid[k // K], temp_grid[k % K]).
    n_t = temp_grid.numel()
    priors = prior_grid.repeat_interleave(n_t)
    temps = temp_grid.repeat(prior_grid.numel())

    evaluate, map_outputs, cached = _grid_scorer(
        la, val_loader, use_cache, name, fn, pt, link, n_samples, seed
    )
    losses = evaluate(priors, temps)
    best, on_edge = _grid_best(losses, priors, temps, prior_grid, temp_grid, name)
    best_prior, best_temp = float(priors[best]), float(temps[best])
    curve = [
        [p, t, json_float(v)] if with_temp else [p, json_float(v)]
        for p, t, v in zip(priors.tolist(), temps.tolist(), losses.tolist())
    ]
    n_points = priors.numel()
    best_loss = float(losses[best])
    refined = False
    if refine > 0 and prior_grid.numel() > 1:
        fine, fine_losses = _refine_around(evaluate, prior_grid, best_prior, best_temp, refine)
        if fine.numel():
            n_points += fine.numel()
            _add_to_curve(curve, fine, fine_losses, best_temp, with_temp)
            fine_ok = torch.where(torch.isfinite(fine_losses), fine_losses, torch.inf)
            j = int(fine_ok.argmin())
            if fine_ok[j] < losses[best]:
                best_prior, refined = float(fine[j]), True
                best_loss = float(fine_ok[j])
            curve.sort(key=lambda row: tuple(row[:-1]))
    if on_edge:
        _warn_on_edge(float(priors[best]), best_temp, prior_grid)
    map_check = against_map(la, name, fn, best_loss, *map_outputs(), "grid search")
    la.prior_precision = torch.tensor([best_prior], dtype=la.dtype, device=la.device)
    la.temperature = best_temp
    tuned = ["prior_precision"] + (["temperature"] if with_temp else [])
    return {
        "log_evidence": None,
        "curve": curve,
        "pred_type": pt.value,
        "link_approx": None if link is None else link.value,
        "loss": name,
        "n_steps": int(n_points),
        "converged": True,
        "on_edge": bool(on_edge),
        "tuned": tuned,
        "cached": bool(cached),
        "refined": refined,
        **map_check,
    }


def _grid_axes(
    la: FittedLaplace,
    grid: Any,
    grid_size: int,
    log_min: float,
    log_max: float,
    temperature_grid: Any,
    refine: int,
    name: str,
) -> tuple[Tensor, Tensor]:
    """The prior precisions and temperatures to score, checked."""
    if grid is None:
        if grid_size < 1:
            raise BadInputError(f"grid_size must be at least 1, got {grid_size}")
        grid = torch.logspace(log_min, log_max, grid_size, dtype=torch.float64)
    prior_grid = _positive_values(grid, "grid")
    temp_grid = (
        torch.tensor([float(la.temperature)], dtype=torch.float64)
        if temperature_grid is None
        else _positive_values(temperature_grid, "temperature_grid")
    )
    if refine < 0:
        raise BadInputError(f"refine must be >= 0, got {refine}")
    if name == "mse":
        warn(
            "loss 'mse' scores the GLM mean, which does not depend on the prior precision: every "
            "grid point scores the same, so the grid search cannot choose (use 'nll')"
        )
    return prior_grid, temp_grid


def _grid_scorer(
    la: FittedLaplace,
    val_loader: Iterable[Any],
    use_cache: bool,
    name: str,
    fn: LossFn | None,
    pt: PredType,
    link: LinkApprox | None,
    n_samples: int,
    seed: int,
) -> tuple[Callable[[Tensor, Tensor], Tensor], Callable[[], tuple[Tensor, Tensor]], bool]:
    """``(evaluate, map_outputs, cached)``: the validation loss at (priors, temperatures), the
    MAP outputs and targets, and whether the predictive cache serves them."""
    reason = cache_unsupported_reason(la)
    cached = use_cache and reason is None and pt == PredType.GLM
    if cached:
        cache = PredictiveCache.from_loader(la, val_loader)

        def evaluate(p: Tensor, t: Tensor) -> Tensor:
            p_ = p.to(dtype=cache.dtype, device=cache.device)
            s = grid_scales(la, t.to(dtype=cache.dtype, device=cache.device))
            return cached_losses(la, cache, p_, s, name, fn, link, n_samples, seed)

        def map_outputs() -> tuple[Tensor, Tensor]:
            return cache.f_mu, cache.y

        return evaluate, map_outputs, cached

    batches = [la.prepare_batch(b) for b in val_loader]
    batches = [(x, y) for x, y in batches if batch_size(x) > 0]
    if not batches:
        raise BadInputError("the validation data is empty")

    def evaluate_direct(p: Tensor, t: Tensor) -> Tensor:
        return direct_losses(la, batches, p, t, name, fn, pt, link, n_samples, seed)

    def map_outputs_direct() -> tuple[Tensor, Tensor]:
        return map_model_outputs(la, batches)

    return evaluate_direct, map_outputs_direct, cached


def _grid_best(
    losses: Tensor,
    priors: Tensor,
    temps: Tensor,
    prior_grid: Tensor,
    temp_grid: Tensor,
    name: str,
) -> tuple[int, bool]:
    """The index of the lowest finite loss, and whether it lies on the edge of the grid."""
    finite = torch.isfinite(losses)
    if not finite.any():
        raise NumericalError(f"the validation loss {name!r} is not finite at any grid point")
    best = int(torch.where(finite, losses, torch.inf).argmin())
    best_prior, best_temp = float(priors[best]), float(temps[best])
    # A loss that is the same everywhere (mse) has no optimum, on the edge or elsewhere.
    constant = bool((losses[finite] == losses[finite][0]).all())
    on_edge = not constant and (
        (
            prior_grid.numel() > 1
            and best_prior in (float(prior_grid.min()), float(prior_grid.max()))
        )
        or (temp_grid.numel() > 1 and best_temp in (float(temp_grid.min()), float(temp_grid.max())))
    )
    return best, on_edge


def _refine_around(
    evaluate: Callable[[Tensor, Tensor], Tensor],
    prior_grid: Tensor,
    best_prior: float,
    best_temp: float,
    refine: int,
) -> tuple[Tensor, Tensor]:
    """Score ``refine`` log-spaced prior precisions towards each neighbour of the best one."""
    values = torch.unique(prior_grid)  # sorted
    i = int(torch.searchsorted(values, torch.tensor(best_prior, dtype=torch.float64)))
    sides = []
    for j in (i - 1, i + 1):  # `refine` log-spaced points towards each neighbour
        if 0 <= j < values.numel():
            lo, hi = sorted((math.log10(values[i]), math.log10(values[j])))
            sides.append(torch.logspace(lo, hi, refine + 2, dtype=torch.float64)[1:-1])
    fine = torch.cat(sides)
    if not fine.numel():
        return fine, fine
    return fine, evaluate(fine, torch.full_like(fine, best_temp))


def _add_to_curve(
    curve: list[list[Any]], priors: Tensor, losses: Tensor, temp: float, with_temp: bool
) -> None:
    """Append the refinement points to the curve, in its row layout."""
    for p, v in zip(priors, losses):
        curve.append([float(p), temp, json_float(v)] if with_temp else [float(p), json_float(v)])


def _warn_on_edge(grid_best_prior: float, best_temp: float, prior_grid: Tensor) -> None:
    """Warn that the optimum is on the edge of the grid, naming the axis."""
    prior_edge = prior_grid.numel() > 1 and grid_best_prior in (
        float(prior_grid.min()),
        float(prior_grid.max()),
    )
    where = (
        f"prior precision {grid_best_prior:.4g}" if prior_edge else f"temperature {best_temp:.4g}"
    )
    warn(
        f"grid search optimum is on the edge of the grid ({where}); extend the grid in that "
        "direction"
    )
