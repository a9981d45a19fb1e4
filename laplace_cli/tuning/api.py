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

Losses: classification "nll", "brier", "ece" (as in `laplace_cli.metrics.classification`); binary "nll",
"brier"; regression "nll" (mean Gaussian NLL per output of N(f_μ, diag(J Σ Jᵀ) + σ²)) and "mse"
(of the mean: it cannot depend on δ, so it cannot choose, and says so); or a callable
`loss(probs, y)` (classification / binary) or `loss((mean, var), y)` (regression, `var` the total
per-output variance), returning a float to minimise.

Options of `optimize_prior_precision`, in full:

* `la`: a fitted Laplace approximation; its `prior_precision` (and `sigma_noise`,
  `temperature`) are set to the result. `method`: "marglik" or "gridsearch".
* `prior_structure`: "scalar", "layerwise" (one δ per parameter tensor) or "diag" (one per
  parameter; diag and full posteriors only). gridsearch tunes a scalar.
* `pred_type`, `link_approx`: the predictive that gridsearch scores (defaults: what `la.tuning`
  recorded, else "glm" and "probit"; "mc" for pred_type "nn"). Recorded in `la.tuning` so that
  a posterior file and `predict` default to them.
* `val_loader`: validation batches `(x, y)` or dicts (gridsearch). `loss`: see "Losses" above.
* `grid`: prior precisions to score; default `logspace(log_prior_prec_min, log_prior_prec_max,
  grid_size)` (base 10, as laplace-torch). `temperature_grid`: temperatures to score jointly
  with the prior grid (the product grid).
* `refine`: if > 0, score this many more log-spaced points strictly between the best grid value
  and each of its neighbours (2·refine in all, refine at an edge) and keep the best of all.
* `n_steps`: most optimiser steps for marglik (it stops earlier when converged). `lr`: optimiser
  step size (L-BFGS default 1.0, Adam 0.1). `optimizer`: "lbfgs" or "adam". `tol`: convergence
  threshold on the largest gradient entry of −log p(D)/N in log space (default 1e-7 in float64,
  1e-4 in lower precision).
* `init_prior_prec`: start of marglik (default: the current prior, reduced or expanded to
  `prior_structure`). `tune_prior`: False keeps δ and tunes σ on its own (marglik, regression).
* `tune_sigma_noise`: also tune σ by marglik (regression). Default off, as laplace-torch: a σ the
  user set is kept (`laplace tune` turns it on for regression); with `tune_prior=False` it
  defaults to on.
* `n_samples`: Monte Carlo samples for link_approx "mc" / pred_type "nn"; `seed`: their seed
  (every grid point uses the same draws). `use_cache`: False scores each grid point by calling
  `la(...)` (slow; for checking).
* `progress`: `progress(iterable, total, description)` wrapper of the marglik steps (the CLI's
  progress bar); the default shows nothing.

The result, also stored as `la.tuning`, is a JSON-serialisable dict: method, prior_structure,
prior_precision (list), sigma_noise (list), temperature, log_evidence (marglik) or curve
([[δ, loss], ...] or [[δ, T, loss], ...]) (gridsearch), pred_type, link_approx, loss, n_steps,
converged, on_edge, tuned.

The methods live in `tuning.marglik` and `tuning.grid` (the validation losses in
`tuning.scoring`, the predictive cache in `tuning.cache`, their shared warning in
`tuning.common`); this module dispatches to them and re-exports their public names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from laplace_cli.core.enums import LinkApprox, PredType, PriorStructure, Structure, TuneMethod
from laplace_cli.core.errors import BadInputError
from laplace_cli.tuning.common import TuningWarning
from laplace_cli.tuning.grid import LOSSES as LOSSES  # re-exported, as LOG_BOUND below
from laplace_cli.tuning.grid import LossFn, compare_with_map, grid_losses, map_loss, run_gridsearch
from laplace_cli.tuning.laplace_torch_args import LAPLACE_TORCH_ORDER as LAPLACE_TORCH_ORDER
from laplace_cli.tuning.laplace_torch_args import laplace_torch_arguments as laplace_torch_arguments
from laplace_cli.tuning.marglik import LOG_BOUND as LOG_BOUND
from laplace_cli.tuning.marglik import Progress, log_evidence, no_progress, run_marglik
from laplace_cli.tuning.protocol import FittedLaplace

__all__ = [
    "TuningWarning",
    "compare_with_map",
    "map_loss",
    "log_evidence",
    "optimize_prior_precision",
    "optimize_sigma_noise",
    "grid_losses",
]

#: Prior vectors longer than this are summarised (not listed) in `la.tuning`; the exact vector is
#: `la.prior_precision` (and the `prior.precision` tensor of a posterior file).
MAX_LISTED = 10_000


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def optimize_prior_precision(
    la: FittedLaplace,
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
    progress: Progress = no_progress,
    _verbose: bool = False,
) -> dict[str, Any]:
    """Tune the prior precision (and σ, T) of a fitted `Laplace`; set them on `la`.

    Args (the module docstring's "Options" says more on each):
        la: a fitted Laplace; its prior_precision (sigma_noise, temperature) are set.
        method, prior_structure: "marglik"/"gridsearch"; "scalar", "layerwise" or "diag".
        pred_type, link_approx: the predictive that gridsearch scores; recorded in `la.tuning`.
        val_loader, loss: gridsearch's validation batches; "nll", "brier", "ece", "mse", callable.
        grid, grid_size, log_prior_prec_min, log_prior_prec_max: the prior precisions scored.
        temperature_grid, refine: temperatures scored jointly; extra points near the best.
        n_steps, lr, optimizer, tol: marglik's step limit, step size, "lbfgs"/"adam", tolerance.
        init_prior_prec, tune_prior, tune_sigma_noise: marglik's start; whether it tunes δ, σ.
        n_samples, seed: Monte Carlo samples (link_approx "mc", pred_type "nn"), their seed.
        use_cache: False scores each grid point by calling `la(...)` (slow; for checking).
        progress: `progress(iterable, total, description)` wrapper of the marglik steps.

    Returns:
        A JSON-serialisable dict, also stored as `la.tuning` (fields: the module docstring).

    Raises:
        BadInputError: unknown options, K-FAC with "diag", gridsearch without validation data.
        NumericalError: the marginal likelihood or every grid loss is not finite.
    """
    tm, ps = _checked_arguments(
        la, method, prior_structure, temperature_grid, tune_prior, tune_sigma_noise
    )
    result = _run_method(
        la,
        tm,
        ps,
        pred_type,
        link_approx,
        val_loader,
        loss,
        grid,
        grid_size,
        log_prior_prec_min,
        log_prior_prec_max,
        temperature_grid,
        refine,
        n_steps,
        lr,
        optimizer,
        tol,
        init_prior_prec,
        tune_prior,
        tune_sigma_noise,
        n_samples,
        seed,
        use_cache,
        progress,
    )
    return _record_result(la, tm, ps, result, tune_prior, _verbose)


def _checked_arguments(
    la: FittedLaplace,
    method: TuneMethod | str,
    prior_structure: PriorStructure | str,
    temperature_grid: Sequence[float] | Tensor | None,
    tune_prior: bool,
    tune_sigma_noise: bool | None,
) -> tuple[TuneMethod, PriorStructure]:
    """The parsed method and prior structure, once every option is checked against them."""
    la.require_fit()
    tm = TuneMethod.parse(method, "method")
    ps = PriorStructure.parse(prior_structure, "prior_structure")
    _check_prior_structure(la, ps)
    if tm == TuneMethod.MARGLIK:
        _check_marglik_options(temperature_grid)
    else:
        _check_gridsearch_options(ps, tune_prior, tune_sigma_noise)
    return tm, ps


def _run_method(
    la: FittedLaplace,
    tm: TuneMethod,
    ps: PriorStructure,
    pred_type: PredType | str | None,
    link_approx: LinkApprox | str | None,
    val_loader: Iterable[Any] | None,
    loss: str | LossFn,
    grid: Sequence[float] | Tensor | None,
    grid_size: int,
    log_prior_prec_min: float,
    log_prior_prec_max: float,
    temperature_grid: Sequence[float] | Tensor | None,
    refine: int,
    n_steps: int,
    lr: float | None,
    optimizer: str,
    tol: float | None,
    init_prior_prec: float | Sequence[float] | Tensor | None,
    tune_prior: bool,
    tune_sigma_noise: bool | None,
    n_samples: int,
    seed: int,
    use_cache: bool,
    progress: Progress,
) -> dict[str, Any]:
    """Run the checked method (`run_marglik` or `run_gridsearch`); its part of the record."""
    if tm == TuneMethod.MARGLIK:
        result = run_marglik(
            la,
            ps,
            tune_prior=tune_prior,
            tune_sigma=tune_sigma_noise,
            init=init_prior_prec,
            n_steps=n_steps,
            lr=lr,
            optimizer=optimizer,
            tol=tol,
            progress=progress,
        )
        result.update(_marglik_predictive(pred_type, link_approx))
        return result
    return run_gridsearch(
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


def _record_result(
    la: FittedLaplace,
    tm: TuneMethod,
    ps: PriorStructure,
    result: dict[str, Any],
    tune_prior: bool,
    verbose: bool,
) -> dict[str, Any]:
    """Store the full record of a tuning run as `la.tuning` and return it."""
    if not tune_prior:  # σ on its own: report the structure of the prior that was kept
        ps = _kept_prior_structure(la)
    result = _tuning_record(la, tm, ps, result)
    la.tuning = result
    if verbose:  # laplace-torch's `verbose=True`
        print(f"Optimized prior precision is {la.prior_precision}.")
    return result


def _check_prior_structure(la: FittedLaplace, ps: PriorStructure) -> None:
    """K-FAC cannot take one prior precision per parameter."""
    if ps == PriorStructure.DIAG and la.hessian_structure == Structure.KRON:
        raise BadInputError(
            "prior_structure 'diag' (one prior precision per parameter) is not available with "
            "hessian_structure 'kron': K-FAC adds the prior to Kronecker eigenvalues, which needs "
            "one value per parameter tensor; use prior_structure 'scalar' or 'layerwise', or "
            "structure 'diag' or 'full'"
        )


def _check_marglik_options(temperature_grid: Sequence[float] | Tensor | None) -> None:
    """Options that marglik does not take."""
    if temperature_grid is not None:
        raise BadInputError(
            "temperature is tuned by gridsearch only (the marginal likelihood of a tempered "
            "likelihood is not a model-selection criterion); use method='gridsearch'"
        )


def _marglik_predictive(
    pred_type: PredType | str | None, link_approx: LinkApprox | str | None
) -> dict[str, Any]:
    """The predictive recorded with a marglik result (as given; marglik scores none)."""
    return {
        "pred_type": None if pred_type is None else PredType.parse(pred_type).value,
        "link_approx": None if link_approx is None else LinkApprox.parse(link_approx).value,
        "loss": None,
    }


def _check_gridsearch_options(
    ps: PriorStructure, tune_prior: bool, tune_sigma_noise: bool | None
) -> None:
    """Options that gridsearch does not take."""
    if ps != PriorStructure.SCALAR:
        raise BadInputError(
            f"gridsearch tunes a scalar prior precision, got prior_structure {ps.value!r}; "
            "use method='marglik' for layer-wise or per-parameter priors"
        )
    if not tune_prior:
        raise BadInputError("gridsearch tunes the prior precision; tune_prior=False is for marglik")
    if tune_sigma_noise:
        raise BadInputError(
            "sigma_noise is tuned by marglik; run method='marglik' with tune_prior=False "
            "first, then the grid search"
        )


def _kept_prior_structure(la: FittedLaplace) -> PriorStructure:
    """The structure of the prior precision that was kept (σ tuned on its own)."""
    k = la.prior_precision.numel()
    ps = PriorStructure.SCALAR if k == 1 else PriorStructure.LAYERWISE
    if k == la.n_params and k != len(la.subset.groups):
        ps = PriorStructure.DIAG
    return ps


def _tuning_record(
    la: FittedLaplace, tm: TuneMethod, ps: PriorStructure, result: dict[str, Any]
) -> dict[str, Any]:
    """The result of a tuning run with the values now set on ``la`` (stored as ``la.tuning``)."""
    return {
        "method": tm.value,
        "prior_structure": ps.value,
        "prior_precision": _listed(la.prior_precision),
        "sigma_noise": [float(v) for v in la.sigma_noise.reshape(-1)],
        "temperature": float(la.temperature),
        **result,
    }


def optimize_sigma_noise(la: FittedLaplace, **kwargs: Any) -> dict[str, Any]:
    """Tune the observation noise σ alone by marginal likelihood (regression), keeping δ."""
    kwargs.setdefault("tune_prior", False)
    kwargs.setdefault("tune_sigma_noise", True)
    return optimize_prior_precision(la, method="marglik", **kwargs)


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
