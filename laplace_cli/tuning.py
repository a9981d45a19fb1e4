"""Tuning the prior precision δ (and the observation noise σ, the temperature T) after fitting.

Two methods, both through `optimize_prior_precision(la, method=...)`:

* **marglik** maximises the Laplace log marginal likelihood (MacKay 1992; Immer et al. 2021)

      log p(D) ≈ log p(D|θ*) − ½ (log det Λ − log det P₀ + (θ*−μ₀)ᵀ P₀ (θ*−μ₀)),
      Λ = s·H + diag(δ),  s = 1/T (classification) or 1/(σ²T) (regression),

  over log δ (scalar, one per parameter tensor, or one per parameter where the structure allows)
  and, for regression, log σ — jointly or σ on its own. The optimiser (L-BFGS with a strong-Wolfe
  line search, or Adam) runs until a convergence test passes: the largest gradient entry of
  −log p(D)/N in log space is below `tol`, or the objective stops changing.
* **gridsearch** scores every grid value of a scalar δ (optionally × a grid of temperatures) on
  validation data with the predictive that prediction will use (`pred_type`, `link_approx`).
  Each grid point is scored on its own: the metric starts from nothing at every point (the
  reference implementation pools its metric across grid points, and for regression scores the
  mean only, which is the same at every point). The validation pass is made once: a
  `PredictiveCache` keeps what does not depend on δ or T (MAP outputs, Jacobians projected into
  the posterior's eigenbasis), so a grid point costs a few small tensor products instead of a
  forward and backward pass.

Losses: classification "nll", "brier", "ece" (as in `laplace_cli.metrics`); binary "nll",
"brier"; regression "nll" (mean Gaussian NLL per output of N(f_μ, diag(J Σ Jᵀ) + σ²)) and "mse"
(of the mean: it cannot depend on δ, so it cannot choose, and says so); or a callable
`loss(probs, y)` (classification / binary) or `loss((mean, var), y)` (regression, `var` the total
per-output variance), returning a float to minimise.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from laplace_cli import metrics
from laplace_cli.batches import batch_size
from laplace_cli.enums import (
    Likelihood,
    LinkApprox,
    PredType,
    PriorStructure,
    Structure,
    TuneMethod,
)
from laplace_cli.errors import BadInputError, NumericalError
from laplace_cli.posterior.base import expand_prior
from laplace_cli.predictive import check_pred_options, glm_link, probit_scale, probit_sigmoid
from laplace_cli.tuning_cache import PredictiveCache, cache_unsupported_reason

if TYPE_CHECKING:  # pragma: no cover
    from laplace_cli.laplace import Laplace

__all__ = [
    "TuningWarning",
    "log_evidence",
    "optimize_prior_precision",
    "optimize_sigma_noise",
    "grid_losses",
]

#: Log-space bound on δ and σ during marglik (e^±25 ≈ 7e10): keeps exp() finite in float32.
LOG_BOUND = 25.0
#: Prior vectors longer than this are summarised (not listed) in `la.tuning`; the exact vector is
#: `la.prior_precision` (and the `prior.precision` tensor of a posterior file).
MAX_LISTED = 10_000
_LOG_2PI = math.log(2.0 * math.pi)

LOSSES = {
    Likelihood.CLASSIFICATION: ("nll", "brier", "ece"),
    Likelihood.BINARY: ("nll", "brier"),
    Likelihood.REGRESSION: ("nll", "mse"),
}

LossFn = Callable[..., float]


class TuningWarning(UserWarning):
    """A tuning result to look at: optimum on the grid's edge, no convergence, a loss that cannot choose."""


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def optimize_prior_precision(
    la: Laplace,
    method: TuneMethod | str = "marglik",
    *,
    prior_structure: PriorStructure | str = "scalar",
    pred_type: PredType | str | None = None,
    link_approx: LinkApprox | str | None = None,
    val_loader: Iterable[Any] | None = None,
    loss: str | LossFn = "nll",
    grid: Sequence[float] | Tensor | None = None,
    grid_size: int = 100,
    log_prior_prec_min: float = -4.0,
    log_prior_prec_max: float = 4.0,
    temperature_grid: Sequence[float] | Tensor | None = None,
    refine: int = 0,
    n_steps: int = 1000,
    lr: float | None = None,
    optimizer: str = "lbfgs",
    tol: float | None = None,
    init_prior_prec: float | Sequence[float] | Tensor | None = None,
    tune_prior: bool = True,
    tune_sigma_noise: bool | None = None,
    n_samples: int = 100,
    seed: int = 0,
    use_cache: bool = True,
) -> dict[str, Any]:
    """Tune the prior precision (and σ, T) of a fitted `Laplace`; set them on `la`.

    Args:
        la: a fitted Laplace approximation; its `prior_precision` (and `sigma_noise`,
            `temperature`) are set to the result.
        method: "marglik" or "gridsearch" (see the module docstring).
        prior_structure: "scalar", "layerwise" (one δ per parameter tensor) or "diag" (one per
            parameter; diag and full posteriors only). gridsearch tunes a scalar.
        pred_type, link_approx: the predictive that gridsearch scores (defaults: what `la.tuning`
            recorded, else "glm" and "probit"; "mc" for pred_type "nn"). Recorded in `la.tuning`
            so that a posterior file and `predict` default to them.
        val_loader: validation batches `(x, y)` or dicts (gridsearch).
        loss: "nll", "brier", "ece", "mse" or a callable; see the module docstring.
        grid: prior precisions to score; default `logspace(log_prior_prec_min,
            log_prior_prec_max, grid_size)` (base 10, as laplace-torch).
        temperature_grid: temperatures to score jointly with the prior grid (the product grid).
        refine: if > 0, score this many more log-spaced points strictly between the best grid
            value and each of its neighbours (2·refine in all, refine at an edge) and keep the
            best of all.
        n_steps: most optimiser steps for marglik (it stops earlier when converged).
        lr: optimiser step size (L-BFGS default 1.0, Adam 0.1).
        optimizer: "lbfgs" or "adam".
        tol: convergence threshold on the largest gradient entry of −log p(D)/N in log space
            (default 1e-7 in float64, 1e-4 in lower precision).
        init_prior_prec: start of marglik (default: the current prior, reduced or expanded to
            `prior_structure`).
        tune_prior: False keeps δ and tunes σ on its own (marglik, regression).
        tune_sigma_noise: tune σ jointly by marglik; default True for regression.
        n_samples: Monte Carlo samples for link_approx "mc" / pred_type "nn".
        seed: seed of those samples; every grid point uses the same draws.
        use_cache: False scores each grid point by calling `la(...)` (slow; for checking).

    Returns:
        A JSON-serialisable dict, also stored as `la.tuning`: method, prior_structure,
        prior_precision (list), sigma_noise (list), temperature, log_evidence (marglik) or
        curve ([[δ, loss], ...] or [[δ, T, loss], ...]) (gridsearch), pred_type, link_approx,
        loss, n_steps, converged, on_edge, tuned.

    Raises:
        BadInputError: unknown options, a structure that cannot take the prior structure
            (K-FAC with "diag"), gridsearch without validation data.
        NumericalError: the marginal likelihood or every grid loss is not finite.
    """
    la._require_fit()
    tm = TuneMethod.parse(method, "method")
    ps = PriorStructure.parse(prior_structure, "prior_structure")
    if ps == PriorStructure.DIAG and la.hessian_structure == Structure.KRON:
        raise BadInputError(
            "prior_structure 'diag' (one prior precision per parameter) is not available with "
            "hessian_structure 'kron': K-FAC adds the prior to Kronecker eigenvalues, which needs "
            "one value per parameter tensor; use prior_structure 'scalar' or 'layerwise', or "
            "structure 'diag' or 'full'"
        )
    if tm == TuneMethod.MARGLIK:
        if temperature_grid is not None:
            raise BadInputError(
                "temperature is tuned by gridsearch only (the marginal likelihood of a tempered "
                "likelihood is not a model-selection criterion); use method='gridsearch'"
            )
        result = _marglik(
            la,
            ps,
            tune_prior=tune_prior,
            tune_sigma=tune_sigma_noise,
            init=init_prior_prec,
            n_steps=n_steps,
            lr=lr,
            optimizer=optimizer,
            tol=tol,
        )
        result["pred_type"] = None if pred_type is None else PredType.parse(pred_type).value
        result["link_approx"] = None if link_approx is None else LinkApprox.parse(link_approx).value
        result["loss"] = None
    else:
        if ps != PriorStructure.SCALAR:
            raise BadInputError(
                f"gridsearch tunes a scalar prior precision, got prior_structure {ps.value!r}; "
                "use method='marglik' for layer-wise or per-parameter priors"
            )
        if not tune_prior:
            raise BadInputError(
                "gridsearch tunes the prior precision; tune_prior=False is for marglik"
            )
        if tune_sigma_noise:
            raise BadInputError(
                "sigma_noise is tuned by marglik; run method='marglik' with tune_prior=False "
                "first, then the grid search"
            )
        result = _gridsearch(
            la,
            val_loader,
            loss=loss,
            pred_type=pred_type,
            link_approx=link_approx,
            grid=grid,
            grid_size=grid_size,
            log_min=log_prior_prec_min,
            log_max=log_prior_prec_max,
            temperature_grid=temperature_grid,
            refine=refine,
            n_samples=n_samples,
            seed=seed,
            use_cache=use_cache,
        )
    if not tune_prior:  # σ on its own: report the structure of the prior that was kept
        k = la.prior_precision.numel()
        ps = PriorStructure.SCALAR if k == 1 else PriorStructure.LAYERWISE
        if k == la.n_params and k != len(la.subset.groups):
            ps = PriorStructure.DIAG
    result = {
        "method": tm.value,
        "prior_structure": ps.value,
        "prior_precision": _listed(la.prior_precision),
        "sigma_noise": [float(v) for v in la.sigma_noise.reshape(-1)],
        "temperature": float(la.temperature),
        **result,
    }
    la.tuning = result
    return result


def optimize_sigma_noise(la: Laplace, **kwargs: Any) -> dict[str, Any]:
    """Tune the observation noise σ alone by marginal likelihood (regression), keeping δ."""
    kwargs.setdefault("tune_prior", False)
    kwargs.setdefault("tune_sigma_noise", True)
    return optimize_prior_precision(la, method="marglik", **kwargs)


def log_evidence(
    la: Laplace, log_prior_precision: Tensor, log_sigma_noise: Tensor | None = None
) -> Tensor:
    """log p(D) as a function of log δ ((1,), (groups,) or (P,)) and log σ (regression).

    The function marglik maximises (divided by N); differentiable in both arguments.
    """
    sigma = None if log_sigma_noise is None else log_sigma_noise.exp()
    return la.log_marginal_likelihood(log_prior_precision.exp(), sigma)


def grid_losses(
    la: Laplace,
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


# --------------------------------------------------------------------------------------------
# Marginal likelihood
# --------------------------------------------------------------------------------------------


def _initial_prior(la: Laplace, ps: PriorStructure, init: Any) -> Tensor:
    """Start value of δ in the requested structure (geometric means when reducing)."""
    cur = la.prior_precision if init is None else torch.as_tensor(init, dtype=la._dtype)
    cur = cur.detach().to(dtype=la._dtype, device=la._device).reshape(-1)
    if not torch.isfinite(cur).all() or (cur <= 0).any():
        raise BadInputError("init_prior_prec must be positive and finite")
    vec = expand_prior(cur, la.subset.groups)  # (P,)
    if ps == PriorStructure.SCALAR:
        return vec.log().mean().exp().reshape(1)
    if ps == PriorStructure.LAYERWISE:
        out, start = [], 0
        for g in la.subset.groups:
            out.append(vec[start : start + g.numel].log().mean().exp())
            start += g.numel
        return torch.stack(out)
    return vec.clone()


def _marglik(
    la: Laplace,
    ps: PriorStructure,
    *,
    tune_prior: bool,
    tune_sigma: bool | None,
    init: Any,
    n_steps: int,
    lr: float | None,
    optimizer: str,
    tol: float | None,
) -> dict[str, Any]:
    regression = la.likelihood == Likelihood.REGRESSION
    if tune_sigma is None:
        tune_sigma = regression
    if tune_sigma and not regression:
        raise BadInputError("sigma_noise is tuned for regression only")
    if not (tune_prior or tune_sigma):
        raise BadInputError("nothing to tune: tune_prior and tune_sigma_noise are both off")
    if optimizer not in ("lbfgs", "adam"):
        raise BadInputError(f"optimizer: expected lbfgs or adam, got {optimizer!r}")
    if n_steps < 1:
        raise BadInputError(f"n_steps must be at least 1, got {n_steps}")
    low_precision = la._dtype not in (torch.float64,)
    gtol = tol if tol is not None else (1e-4 if low_precision else 1e-7)
    ftol = 1e-6 if low_precision else 1e-13

    if tune_prior:
        log_prior = _initial_prior(la, ps, init).log().clone()
    else:  # σ on its own: the prior stays exactly as it is
        log_prior = la.prior_precision.detach().log().clone()
    log_sigma = la.sigma_noise.detach().log().clone()
    params = []
    if tune_prior:
        params.append(log_prior.requires_grad_(True))
    if tune_sigma:
        params.append(log_sigma.requires_grad_(True))

    def objective() -> Tensor:
        lp = log_prior.clamp(-LOG_BOUND, LOG_BOUND)
        ls = log_sigma.clamp(-LOG_BOUND, LOG_BOUND) if regression else None
        return -log_evidence(la, lp, ls) / la.n_data

    if optimizer == "lbfgs":
        opt: torch.optim.Optimizer = torch.optim.LBFGS(
            params,
            lr=1.0 if lr is None else lr,
            max_iter=1,
            max_eval=25,
            tolerance_grad=0.0,
            tolerance_change=0.0,
            history_size=20,
            line_search_fn="strong_wolfe",
        )
    else:
        opt = torch.optim.Adam(params, lr=0.1 if lr is None else lr)

    def closure() -> Tensor:
        opt.zero_grad()
        f = objective()
        if not torch.isfinite(f):
            raise NumericalError(
                "the log marginal likelihood is not finite at prior precision "
                f"{_short(log_prior.detach().exp())}, sigma_noise {_short(log_sigma.detach().exp())}"
            )
        f.backward()
        return f

    f_prev = float(closure().detach())
    converged, stalled, steps = False, 0, 0
    patience = 3 if optimizer == "lbfgs" else 20
    for steps in range(1, n_steps + 1):  # noqa: B007 - steps is reported
        opt.step(closure)
        f_now = float(closure().detach())
        gmax = max(float(p.grad.abs().max()) for p in params)
        if gmax <= gtol:
            converged = True
            break
        stalled = stalled + 1 if abs(f_prev - f_now) <= ftol * max(1.0, abs(f_now)) else 0
        if stalled >= patience:
            converged = True
            break
        f_prev = f_now
    with torch.no_grad():
        lp = log_prior.detach().clamp(-LOG_BOUND, LOG_BOUND)
        ls = log_sigma.detach().clamp(-LOG_BOUND, LOG_BOUND)
    on_edge = bool((lp.abs() >= LOG_BOUND).any()) or (
        tune_sigma and bool((ls.abs() >= LOG_BOUND).any())
    )
    if tune_prior:
        la.prior_precision = lp.exp()
    if tune_sigma:
        la.sigma_noise = ls.exp()
    evidence = float(la.log_marginal_likelihood())
    if not converged:
        _warn(
            f"marglik did not converge in {n_steps} steps (largest gradient {gmax:.2e} > "
            f"tol {gtol:.1e}); raise n_steps or change lr"
        )
    if on_edge:
        _warn(
            f"marglik drove a hyperparameter to its bound exp(±{LOG_BOUND:g}): the evidence keeps "
            "growing that way (check the model and the data)"
        )
    tuned = (["prior_precision"] if tune_prior else []) + (["sigma_noise"] if tune_sigma else [])
    return {
        "log_evidence": evidence,
        "curve": None,
        "n_steps": steps,
        "converged": converged,
        "on_edge": on_edge,
        "tuned": tuned,
        "optimizer": optimizer,
    }


# --------------------------------------------------------------------------------------------
# Grid search
# --------------------------------------------------------------------------------------------


def _positive_values(values: Any, what: str) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise BadInputError(f"{what}: expected at least one value")
    if not torch.isfinite(t).all() or (t <= 0).any():
        raise BadInputError(f"{what}: expected positive finite values, got {_short(t)}")
    return t


def _scales(la: Laplace, temperatures: Tensor) -> Tensor:
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
    la: Laplace, pred_type: Any, link_approx: Any
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
    Same definitions (and clamping at the machine epsilon) as `laplace_cli.metrics`.
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


def _chunk_size(la: Laplace, cache: PredictiveCache, n_points: int) -> int:
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
    la: Laplace,
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
        step = _chunk_size(la, cache, priors.numel())
        noise = (la.sigma_noise.reshape(-1) ** 2).reshape(-1, 1)  # (1, 1) or (C, 1)
        mu = f_mu.unsqueeze(-1)  # (N, C, 1)
        for start in range(0, priors.numel(), step):
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
        fv = cache.functional_variance(prior.reshape(1), scale)  # (N, C, C)
        gen = torch.Generator(device=cache.device).manual_seed(seed)
        probs = glm_link(lik, link, f_mu, fv, n_samples, gen)
        out_losses.append(_losses(lik, name, fn, probs.unsqueeze(-1), y))
    return torch.cat(out_losses)


def _direct_losses(
    la: Laplace,
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
            la.prior_precision = prior.reshape(1)
            la.temperature = float(temp)
            gen = torch.Generator(device=la._device).manual_seed(seed)
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


def _gridsearch(
    la: Laplace,
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
        _warn(
            "loss 'mse' scores the GLM mean, which does not depend on the prior precision: every "
            "grid point scores the same, so the grid search cannot choose (use 'nll')"
        )

    # Product grid, prior-major: point k = (prior_grid[k // K], temp_grid[k % K]).
    n_t = temp_grid.numel()
    priors = prior_grid.repeat_interleave(n_t)
    temps = temp_grid.repeat(prior_grid.numel())

    reason = cache_unsupported_reason(la)
    cached = use_cache and reason is None and pt == PredType.GLM
    if cached:
        cache = PredictiveCache.from_loader(la, val_loader)

        def evaluate(p: Tensor, t: Tensor) -> Tensor:
            p_ = p.to(dtype=cache.dtype, device=cache.device)
            s = _scales(la, t.to(dtype=cache.dtype, device=cache.device))
            return _cached_losses(la, cache, p_, s, name, fn, link, n_samples, seed)
    else:
        batches = [la._prepare(b) for b in val_loader]
        batches = [(x, y) for x, y in batches if batch_size(x) > 0]
        if not batches:
            raise BadInputError("the validation data is empty")

        def evaluate(p: Tensor, t: Tensor) -> Tensor:
            return _direct_losses(la, batches, p, t, name, fn, pt, link, n_samples, seed)

    losses = evaluate(priors, temps)
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
        or (n_t > 1 and best_temp in (float(temp_grid.min()), float(temp_grid.max())))
    )
    curve = [
        [p, t, _json_float(v)] if temperature_grid is not None else [p, _json_float(v)]
        for p, t, v in zip(priors.tolist(), temps.tolist(), losses.tolist())
    ]
    n_points = priors.numel()
    refined = False
    if refine > 0 and prior_grid.numel() > 1:
        values = torch.unique(prior_grid)  # sorted
        i = int(torch.searchsorted(values, torch.tensor(best_prior, dtype=torch.float64)))
        sides = []
        for j in (i - 1, i + 1):  # `refine` log-spaced points towards each neighbour
            if 0 <= j < values.numel():
                lo, hi = sorted((math.log10(values[i]), math.log10(values[j])))
                sides.append(torch.logspace(lo, hi, refine + 2, dtype=torch.float64)[1:-1])
        fine = torch.cat(sides)
        if fine.numel():
            fine_losses = evaluate(fine, torch.full_like(fine, best_temp))
            n_points += fine.numel()
            for p, v in zip(fine, fine_losses):
                curve.append(
                    [float(p), best_temp, _json_float(v)]
                    if temperature_grid is not None
                    else [float(p), _json_float(v)]
                )
            fine_ok = torch.where(torch.isfinite(fine_losses), fine_losses, torch.inf)
            j = int(fine_ok.argmin())
            if fine_ok[j] < losses[best]:
                best_prior, refined = float(fine[j]), True
            curve.sort(key=lambda row: tuple(row[:-1]))
    if on_edge:
        prior_edge = prior_grid.numel() > 1 and float(priors[best]) in (
            float(prior_grid.min()),
            float(prior_grid.max()),
        )
        where = (
            f"prior precision {float(priors[best]):.4g}"
            if prior_edge
            else f"temperature {best_temp:.4g}"
        )
        _warn(
            f"grid search optimum is on the edge of the grid ({where}); extend the grid in that "
            "direction"
        )
    la.prior_precision = torch.tensor([best_prior], dtype=la._dtype, device=la._device)
    la.temperature = best_temp
    tuned = ["prior_precision"] + (["temperature"] if temperature_grid is not None else [])
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
    }


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _warn(message: str) -> None:
    """A TuningWarning attributed to the caller's code (the first frame outside laplace_cli)."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2: the frame that called _warn
    while frame is not None and frame.f_globals.get("__name__", "").startswith("laplace_cli"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, TuningWarning, stacklevel=level)


def _as_point(out: Tensor | tuple[Tensor, Tensor]) -> Tensor | tuple[Tensor, Tensor]:
    """One grid point's predictions in the (N, C, G = 1) layout of `_losses`."""
    if isinstance(out, tuple):
        return out[0], out[1].unsqueeze(-1)
    return out.unsqueeze(-1)


def _json_float(v: Tensor | float) -> float | None:
    v = float(v)  # a float, or None for NaN / inf (JSON has no such numbers)
    return v if math.isfinite(v) else None


def _listed(t: Tensor) -> list[float] | dict[str, float]:
    """A prior vector as a list, or a summary when it is longer than MAX_LISTED."""
    flat = t.detach().reshape(-1).double().cpu()
    if flat.numel() <= MAX_LISTED:
        return [float(v) for v in flat]
    return {
        "n": int(flat.numel()),
        "min": float(flat.min()),
        "max": float(flat.max()),
        "geometric_mean": float(flat.log().mean().exp()),
    }


def _short(t: Tensor) -> str:
    flat = t.reshape(-1)
    if flat.numel() <= 4:
        return "[" + ", ".join(f"{float(v):.4g}" for v in flat) + "]"
    return f"[{float(flat.min()):.4g} .. {float(flat.max()):.4g}] ({flat.numel()} values)"
