"""Validation losses of the GLM predictive at grid points of (δ, T): from a `PredictiveCache`
(vectorised over the grid) or by calling `la(...)` at each point, and the same loss of the MAP
predictive for comparison. The grid search (tuning/grid.py) and `laplace tune`'s check of a
marglik result against the MAP score with these; see tuning/api.py for the losses' definitions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import batch_size
from laplace_cli.core.enums import Likelihood, LinkApprox, PredType
from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics import classification as metrics
from laplace_cli.posterior.predictive import (
    check_pred_options,
    glm_link,
    probit_scale,
    probit_sigmoid,
)
from laplace_cli.tuning.cache import PredictiveCache, cache_unsupported_reason
from laplace_cli.tuning.common import warn
from laplace_cli.tuning.dense_rows import prediction_rows
from laplace_cli.tuning.protocol import FittedLaplace

__all__ = [
    "LOSSES",
    "LossFn",
    "against_map",
    "cached_losses",
    "compare_with_map",
    "direct_losses",
    "grid_losses",
    "json_float",
    "map_loss",
    "map_model_outputs",
    "point_losses",
    "resolve_loss",
    "resolve_predictive",
    "grid_scales",
]

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
    name, fn = resolve_loss(la.likelihood, loss)
    if cache.y is None:
        raise BadInputError("the cache has no targets; build it with PredictiveCache.from_loader")
    la_ = None if la.likelihood == Likelihood.REGRESSION else LinkApprox.parse(link_approx)
    priors = torch.as_tensor(priors, dtype=cache.dtype, device=cache.device).reshape(-1)
    temps = (
        torch.full_like(priors, float(la.temperature))
        if temperatures is None
        else torch.as_tensor(temperatures, dtype=cache.dtype, device=cache.device).reshape(-1)
    )
    point_scales = grid_scales(la, temps)
    return cached_losses(la, cache, priors, point_scales, name, fn, la_, n_samples, seed)


def grid_scales(la: FittedLaplace, temperatures: Tensor) -> Tensor:
    """s per grid point: 1/T, or 1/(σ²T) for regression, (G,); (G, C) with a per-output σ."""
    if la.likelihood == Likelihood.REGRESSION:
        sigma2 = la.sigma_noise.reshape(-1).to(temperatures.dtype) ** 2
        if sigma2.numel() > 1:
            return 1.0 / (sigma2.unsqueeze(0) * temperatures.unsqueeze(1))
        return 1.0 / (sigma2[0] * temperatures)
    return 1.0 / temperatures


def resolve_loss(likelihood: Likelihood, loss: str | LossFn) -> tuple[str, LossFn | None]:
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


def resolve_predictive(
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


def point_losses(
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


def cached_losses(
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
            out_losses.append(point_losses(lik, name, fn, out, y))
        return torch.cat(out_losses)
    # Link approximations that need the full C×C covariance: one grid point at a time, through
    # `predictive.glm_link` itself; Monte Carlo draws restart from `seed` at every point.
    for prior, scale in zip(priors, scales):
        fv = cache.functional_variance(prior.reshape(1, -1), scale)  # (N, C, C)
        gen = torch.Generator(device=cache.device).manual_seed(seed)
        probs = glm_link(lik, link, f_mu, fv, n_samples, gen)
        out_losses.append(point_losses(lik, name, fn, probs.unsqueeze(-1), y))
    return torch.cat(out_losses)


def direct_losses(
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
            y_point = y
            if getattr(la, "output_positions", None) is not None:  # one row per position
                out, y_point = prediction_rows(la, out, y)
            vals.append(float(point_losses(lik, name, fn, _as_point(out), y_point)[0]))
    finally:
        la.prior_precision, la.temperature = old_prior, old_temp
    return torch.tensor(vals, dtype=torch.float64)


def map_model_outputs(
    la: FittedLaplace, batches: list[tuple[Any, Tensor]]
) -> tuple[Tensor, Tensor]:
    """The MAP model's outputs and the targets of prepared batches."""
    with torch.no_grad():
        f = torch.cat([la.subset.output(x).to(la.dtype) for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    if getattr(la, "output_positions", None) is not None:  # one row per position
        f, y = prediction_rows(la, f, y)
    return f, y


def map_loss(la: FittedLaplace, loss: str | LossFn, f_map: Tensor, y: Tensor) -> float:
    """The loss of the MAP predictive (softmax / sigmoid of the MAP outputs; for regression
    N(f, σ²) with the posterior's σ), defined as the grid losses are."""
    name, fn = resolve_loss(la.likelihood, loss)
    lik = la.likelihood
    f = f_map.detach()
    if lik == Likelihood.REGRESSION:
        noise = (la.sigma_noise.detach().reshape(-1) ** 2).to(f).expand_as(f)
        out: Any = (f, noise.unsqueeze(-1))
    elif lik == Likelihood.CLASSIFICATION:
        out = torch.softmax(f, dim=1).unsqueeze(-1)
    else:
        out = torch.sigmoid(f).unsqueeze(-1)
    return float(point_losses(lik, name, fn, out, y)[0])


def against_map(
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
        "tuned_loss": json_float(tuned),
        "map_loss": json_float(base),
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
    name, fn = resolve_loss(la.likelihood, loss)
    pt, link = resolve_predictive(la, pred_type, link_approx)
    prior = la.prior_precision.detach().reshape(1, -1)
    temp = torch.tensor([float(la.temperature)], dtype=torch.float64)
    if use_cache and cache_unsupported_reason(la) is None and pt == PredType.GLM:
        cache = PredictiveCache.from_loader(la, val_loader)
        p_ = prior.to(dtype=cache.dtype, device=cache.device)
        s = grid_scales(la, temp.to(dtype=cache.dtype, device=cache.device))
        tuned = cached_losses(la, cache, p_, s, name, fn, link, n_samples, seed)
        f_map, y = cache.f_mu, cache.y
    else:
        batches = [la.prepare_batch(b) for b in val_loader]
        batches = [(x, y) for x, y in batches if batch_size(x) > 0]
        if not batches:
            raise BadInputError("the validation data is empty")
        tuned = direct_losses(la, batches, prior, temp, name, fn, pt, link, n_samples, seed)
        f_map, y = map_model_outputs(la, batches)
    return {"loss": name, **against_map(la, name, fn, float(tuned[0]), f_map, y, how)}


def _as_point(out: Tensor | tuple[Tensor, Tensor]) -> Tensor | tuple[Tensor, Tensor]:
    """One grid point's predictions in the (N, C, G = 1) layout of `point_losses`."""
    if isinstance(out, tuple):
        return out[0], out[1].unsqueeze(-1)
    return out.unsqueeze(-1)


def json_float(v: Tensor | float) -> float | None:
    v = float(v)  # a float, or None for NaN / inf (JSON has no such numbers)
    return v if math.isfinite(v) else None
