"""Tuning by grid search: score a scalar δ (optionally × temperatures) on validation data with
the predictive that prediction will use.

Split out of `laplace_cli.tuning.api` (see its docstring for the method and the losses), which
re-exports `grid_losses`, `LOSSES` and `LossFn`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import batch_size
from laplace_cli.core.enums import Likelihood, LinkApprox, PredType
from laplace_cli.core.errors import BadInputError, NumericalError
from laplace_cli.metrics import classification as metrics
from laplace_cli.posterior.predictive import (
    check_pred_options,
    glm_link,
    probit_scale,
    probit_sigmoid,
)
from laplace_cli.tuning.cache import PredictiveCache, cache_unsupported_reason
from laplace_cli.tuning.common import short_tensor, warn
from laplace_cli.tuning.protocol import FittedLaplace

_LOG_2PI = math.log(2.0 * math.pi)
LOSSES = {
    Likelihood.CLASSIFICATION: ("nll", "brier", "ece"),
    Likelihood.BINARY: ("nll", "brier"),
    Likelihood.REGRESSION: ("nll", "mse"),
}
LossFn = Callable[..., float]


def grid_losses(
    la: FittedLaplace,
    cache: PredictiveCache,
    priors: Tensor,
    temperatures: Tensor | None = None,
    *,
    loss: str | LossFn = "nll",
    link_approx: LinkApprox | str = "probit",
    n_samples: int = 100,
    seed: int = 0,
) -> Tensor:
    """Validation loss of the GLM predictive at each (δ_g, T_g) from a cache: (G,) float64.

    Every point is scored on its own (nothing carries over from one point to the next).
    """
    name, fn = _resolve_loss(la.likelihood, loss)
    if cache.y is None:
        raise BadInputError("the cache has no targets; build it with PredictiveCache.from_loader")
    la_ = None if la.likelihood == Likelihood.REGRESSION else LinkApprox.parse(link_approx)
    priors = torch.as_tensor(priors, dtype=cache.dtype, device=cache.device).reshape(-1)
    temps = (
        torch.full_like(priors, float(la.temperature))
        if temperatures is None
        else torch.as_tensor(temperatures, dtype=cache.dtype, device=cache.device).reshape(-1)
    )
    scales = _scales(la, temps)
    return _cached_losses(la, cache, priors, scales, name, fn, la_, n_samples, seed)


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


def _scales(la: FittedLaplace, temperatures: Tensor) -> Tensor:
    """s per grid point: 1/T, or 1/(σ²T) for regression, (G,); (G, C) with a per-output σ."""
    if la.likelihood == Likelihood.REGRESSION:
        sigma2 = la.sigma_noise.reshape(-1).to(temperatures.dtype) ** 2
        if sigma2.numel() > 1:
            return 1.0 / (sigma2.unsqueeze(0) * temperatures.unsqueeze(1))
        return 1.0 / (sigma2[0] * temperatures)
    return 1.0 / temperatures


def _resolve_loss(likelihood: Likelihood, loss: str | LossFn) -> tuple[str, LossFn | None]:
    if callable(loss):
        return getattr(loss, "__name__", "custom"), loss
    name = str(loss).lower()
    allowed = LOSSES[likelihood]
    if name not in allowed:
        raise BadInputError(
            f"loss: expected one of {', '.join(allowed)} (or a callable) for {likelihood.value}, "
            f"got {loss!r}"
        )
    return name, None


def _resolve_predictive(
    la: FittedLaplace, pred_type: Any, link_approx: Any
) -> tuple[PredType, LinkApprox | None]:
    pt_value = pred_type or la.tuning.get("pred_type") or "glm"
    pt = PredType.parse(pt_value, "pred_type")
    if la.likelihood == Likelihood.REGRESSION:
        return pt, None
    default_link = "mc" if pt == PredType.NN else "probit"
    if link_approx is None and pred_type is None:
        link_approx = la.tuning.get("link_approx")
    _, link = check_pred_options(pt, link_approx or default_link, la.likelihood)
    return pt, link


def _batched_loss(
    likelihood: Likelihood, name: str, out: Tensor | tuple[Tensor, Tensor], y: Tensor
) -> Tensor:
    """Built-in losses for G grid points at once, (G,) float64, in the layout (N, C, G).

    out: probabilities (N, C, G), or (mean (N, C), total variance (N, C, G)) for regression.
    Same definitions (and clamping at the machine epsilon) as `laplace_cli.metrics.classification`.
    """
    if likelihood == Likelihood.REGRESSION:
        mean, var = out
        m, v = mean.double().unsqueeze(-1), var.double()
        t = y.double().reshape(mean.shape).unsqueeze(-1)
        if name == "mse":
            return ((m - t) ** 2).mean().expand(v.shape[-1]).clone()
        return (0.5 * (_LOG_2PI + v.log() + (t - m) ** 2 / v)).mean((0, 1))
    probs = out
    eps = float(torch.finfo(probs.dtype).eps)
    if likelihood == Likelihood.BINARY:
        p = probs.double().clamp(0.0, 1.0)
        t = y.double().reshape(p.shape[:2]).unsqueeze(-1)
        if name == "nll":
            nll = -(t * p.clamp_min(eps).log() + (1 - t) * (1 - p).clamp_min(eps).log())
            return nll.mean((0, 1))
        return ((p - t) ** 2).mean((0, 1))
    if name == "nll":
        # Only the true class's probability is needed: gather first (clamping is elementwise).
        index = y.reshape(-1, 1, 1).expand(-1, 1, probs.shape[-1])
        p_true = probs.gather(1, index).squeeze(1).double().clamp(0.0, 1.0)  # (N, G)
        return -p_true.clamp_min(eps).log().mean(0)
    p = probs.double().clamp(0.0, 1.0)
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).double().unsqueeze(-1)
    return ((p - onehot) ** 2).sum(1).mean(0)


def _losses(
    likelihood: Likelihood,
    name: str,
    fn: LossFn | None,
    out: Tensor | tuple[Tensor, Tensor],
    y: Tensor,
) -> Tensor:
    """Losses of G grid points' predictions, layout (N, C, G) (batched where possible)."""
    if fn is None and name != "ece":
        return _batched_loss(likelihood, name, out, y)
    if isinstance(out, tuple):
        points: list[Any] = [(out[0], out[1][..., g]) for g in range(out[1].shape[-1])]
    else:
        points = [out[..., g] for g in range(out.shape[-1])]
    if fn is not None:
        return torch.tensor([float(fn(p, y)) for p in points], dtype=torch.float64)
    return torch.tensor([metrics.ece(p, y) for p in points], dtype=torch.float64)


def _chunk_size(la: FittedLaplace, cache: PredictiveCache, n_points: int) -> int:
    """Grid points per vectorised chunk, so that the temporaries stay within max_memory / 4."""
    # Per point: rank-one weights w (N, d_out) per layer, the block eigenvalues, the variances
    # and probabilities (N, C) with their float64 copies.
    width = sum(b.u.shape[-1] for b in cache.blocks if hasattr(b, "u"))
    item = cache.f_mu.element_size()
    n_eig = sum(p.numel for b in cache.blocks for p in b.parts)
    per_point = item * (cache.n * width + n_eig)
    per_point += (3 * item + 3 * 8) * cache.n * cache.n_outputs
    return int(max(1, min(n_points, (la.max_memory // 4) // max(per_point, 1))))


def _cached_losses(
    la: FittedLaplace,
    cache: PredictiveCache,
    priors: Tensor,
    scales: Tensor,
    name: str,
    fn: LossFn | None,
    link: LinkApprox | None,
    n_samples: int,
    seed: int,
) -> Tensor:
    """Losses at (δ_g, s_g) from the cache: probit and regression vectorised over the grid."""
    lik = la.likelihood
    f_mu, y = cache.f_mu, cache.y
    out_losses = []
    if lik == Likelihood.REGRESSION or link == LinkApprox.PROBIT:
        n_points = priors.shape[0]  # priors: (G,) scalars or (G, k) vectors
        step = _chunk_size(la, cache, n_points)
        noise = (la.sigma_noise.reshape(-1) ** 2).reshape(-1, 1)  # (1, 1) or (C, 1)
        mu = f_mu.unsqueeze(-1)  # (N, C, 1)
        for start in range(0, n_points, step):
            stop = start + step
            var = cache.variance_ncg(priors[start:stop], scales[start:stop])  # (N, C, G)
            if lik == Likelihood.REGRESSION:
                out: Any = (f_mu, var + noise)
            elif lik == Likelihood.CLASSIFICATION:
                # `predictive.probit_softmax` (glm_link's probit) with the classes on dim 1.
                out = torch.softmax(mu * probit_scale(var), dim=1)
            else:
                out = probit_sigmoid(mu, var)  # glm_link's binary probit
            out_losses.append(_losses(lik, name, fn, out, y))
        return torch.cat(out_losses)
    # Link approximations that need the full C×C covariance: one grid point at a time, through
    # `predictive.glm_link` itself; Monte Carlo draws restart from `seed` at every point.
    for prior, scale in zip(priors, scales):
        fv = cache.functional_variance(prior.reshape(1, -1), scale)  # (N, C, C)
        gen = torch.Generator(device=cache.device).manual_seed(seed)
        probs = glm_link(lik, link, f_mu, fv, n_samples, gen)
        out_losses.append(_losses(lik, name, fn, probs.unsqueeze(-1), y))
    return torch.cat(out_losses)


def _direct_losses(
    la: FittedLaplace,
    batches: list[tuple[Any, Tensor]],
    priors: Tensor,
    temps: Tensor,
    name: str,
    fn: LossFn | None,
    pt: PredType,
    link: LinkApprox | None,
    n_samples: int,
    seed: int,
) -> Tensor:
    """Losses by calling `la(...)` at every grid point (structures without a cache; checks)."""
    lik = la.likelihood
    y = torch.cat([b[1] for b in batches])
    old_prior, old_temp = la.prior_precision, la.temperature
    vals = []
    try:
        for prior, temp in zip(priors, temps):
            la.prior_precision = prior.reshape(-1)
            la.temperature = float(temp)
            gen = torch.Generator(device=la.device).manual_seed(seed)
            outs = []
            for x, _ in batches:
                if lik == Likelihood.REGRESSION:
                    mean, var = la(
                        x, pred_type=pt, n_samples=n_samples, diagonal_output=True, generator=gen
                    )
                    outs.append((mean, var + la.sigma_noise.reshape(-1) ** 2))
                else:
                    outs.append(la(x, pt, link, n_samples=n_samples, generator=gen))
            if lik == Likelihood.REGRESSION:
                out: Any = (torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]))
            else:
                out = torch.cat(outs)
            vals.append(float(_losses(lik, name, fn, _as_point(out), y)[0]))
    finally:
        la.prior_precision, la.temperature = old_prior, old_temp
    return torch.tensor(vals, dtype=torch.float64)


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
    name, fn = _resolve_loss(la.likelihood, loss)
    pt, link = _resolve_predictive(la, pred_type, link_approx)
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
        [p, t, _json_float(v)] if with_temp else [p, _json_float(v)]
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
    map_check = _against_map(la, name, fn, best_loss, *map_outputs(), "grid search")
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
            s = _scales(la, t.to(dtype=cache.dtype, device=cache.device))
            return _cached_losses(la, cache, p_, s, name, fn, link, n_samples, seed)

        def map_outputs() -> tuple[Tensor, Tensor]:
            return cache.f_mu, cache.y

        return evaluate, map_outputs, cached

    batches = [la.prepare_batch(b) for b in val_loader]
    batches = [(x, y) for x, y in batches if batch_size(x) > 0]
    if not batches:
        raise BadInputError("the validation data is empty")

    def evaluate_direct(p: Tensor, t: Tensor) -> Tensor:
        return _direct_losses(la, batches, p, t, name, fn, pt, link, n_samples, seed)

    def map_outputs_direct() -> tuple[Tensor, Tensor]:
        return _map_outputs(la, batches)

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
        curve.append([float(p), temp, _json_float(v)] if with_temp else [float(p), _json_float(v)])


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


def _map_outputs(la: FittedLaplace, batches: list[tuple[Any, Tensor]]) -> tuple[Tensor, Tensor]:
    """The MAP model's outputs and the targets of prepared batches."""
    with torch.no_grad():
        f = torch.cat([la.subset.output(x).to(la.dtype) for x, _ in batches])
    return f, torch.cat([y for _, y in batches])


def map_loss(la: FittedLaplace, loss: str | LossFn, f_map: Tensor, y: Tensor) -> float:
    """The loss of the MAP predictive (softmax / sigmoid of the MAP outputs; for regression
    N(f, σ²) with the posterior's σ), defined as the grid losses are."""
    name, fn = _resolve_loss(la.likelihood, loss)
    lik = la.likelihood
    f = f_map.detach()
    if lik == Likelihood.REGRESSION:
        noise = (la.sigma_noise.detach().reshape(-1) ** 2).to(f).expand_as(f)
        out: Any = (f, noise.unsqueeze(-1))
    elif lik == Likelihood.CLASSIFICATION:
        out = torch.softmax(f, dim=1).unsqueeze(-1)
    else:
        out = torch.sigmoid(f).unsqueeze(-1)
    return float(_losses(lik, name, fn, out, y)[0])


def _against_map(
    la: FittedLaplace,
    name: str,
    fn: LossFn | None,
    tuned: float,
    f_map: Tensor,
    y: Tensor,
    how: str,
) -> dict[str, Any]:
    """`map_loss`, `worse_than_map` for the result; a TuningWarning when the tuned posterior's
    loss on the tuning data is above the MAP's (then the Laplace predictive does harm there)."""
    base = map_loss(la, fn if fn is not None else name, f_map, y)
    worse = math.isfinite(tuned) and tuned > base + 1e-9 * max(1.0, abs(base))
    if worse:
        warn(
            f"the posterior tuned by {how} is worse than the MAP on the tuning data "
            f"({name} {tuned:.4g} vs MAP {base:.4g}): its predictive does harm here; "
            + (
                "widen the grid towards larger prior precisions, or predict with the MAP"
                if how == "grid search"
                else "tune by grid search on this data instead, or predict with the MAP"
            )
        )
    return {
        "tuned_loss": _json_float(tuned),
        "map_loss": _json_float(base),
        "worse_than_map": worse,
    }


def compare_with_map(
    la: FittedLaplace,
    val_loader: Iterable[Any],
    *,
    loss: str | LossFn = "nll",
    pred_type: Any = None,
    link_approx: Any = None,
    n_samples: int = 100,
    seed: int = 0,
    use_cache: bool = True,
    how: str = "marglik",
) -> dict[str, Any]:
    """Score the posterior as it is (its prior, σ, T) and the MAP on validation data.

    Returns `{"loss", "tuned_loss", "map_loss", "worse_than_map"}` (the grid search reports the
    same keys) and warns (TuningWarning) when the posterior's loss is above the MAP's.
    """
    name, fn = _resolve_loss(la.likelihood, loss)
    pt, link = _resolve_predictive(la, pred_type, link_approx)
    prior = la.prior_precision.detach().reshape(1, -1)
    temp = torch.tensor([float(la.temperature)], dtype=torch.float64)
    if use_cache and cache_unsupported_reason(la) is None and pt == PredType.GLM:
        cache = PredictiveCache.from_loader(la, val_loader)
        p_ = prior.to(dtype=cache.dtype, device=cache.device)
        s = _scales(la, temp.to(dtype=cache.dtype, device=cache.device))
        tuned = _cached_losses(la, cache, p_, s, name, fn, link, n_samples, seed)
        f_map, y = cache.f_mu, cache.y
    else:
        batches = [la.prepare_batch(b) for b in val_loader]
        batches = [(x, y) for x, y in batches if batch_size(x) > 0]
        if not batches:
            raise BadInputError("the validation data is empty")
        tuned = _direct_losses(la, batches, prior, temp, name, fn, pt, link, n_samples, seed)
        f_map, y = _map_outputs(la, batches)
    return {"loss": name, **_against_map(la, name, fn, float(tuned[0]), f_map, y, how)}


def _as_point(out: Tensor | tuple[Tensor, Tensor]) -> Tensor | tuple[Tensor, Tensor]:
    """One grid point's predictions in the (N, C, G = 1) layout of `_losses`."""
    if isinstance(out, tuple):
        return out[0], out[1].unsqueeze(-1)
    return out.unsqueeze(-1)


def _json_float(v: Tensor | float) -> float | None:
    v = float(v)  # a float, or None for NaN / inf (JSON has no such numbers)
    return v if math.isfinite(v) else None
