"""Tuning by marginal likelihood: maximise the Laplace log evidence over log δ (and log σ).

Split out of `laplace_cli.tuning.api` (see its docstring for the method), which re-exports
`log_evidence` and `LOG_BOUND`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.enums import Likelihood, PriorStructure
from laplace_cli.core.errors import BadInputError, NumericalError
from laplace_cli.posterior.base import expand_prior
from laplace_cli.tuning.common import short_tensor, warn
from laplace_cli.tuning.protocol import FittedLaplace

Progress = Callable[[Iterable[Any], "int | None", str], Iterable[Any]]


def no_progress(
    it: Iterable[Any], total: int | None = None, description: str = ""
) -> Iterable[Any]:
    return it


#: Log-space bound on δ and σ during marglik (e^±25 ≈ 7e10): keeps exp() finite in float32.
LOG_BOUND = 25.0


def log_evidence(
    la: FittedLaplace, log_prior_precision: Tensor, log_sigma_noise: Tensor | None = None
) -> Tensor:
    """log p(D) as a function of log δ ((1,), (groups,) or (P,)) and log σ (regression).

    The function marglik maximises (divided by N); differentiable in both arguments.
    """
    sigma = None if log_sigma_noise is None else log_sigma_noise.exp()
    return la.log_marginal_likelihood(log_prior_precision.exp(), sigma)


def _initial_prior(la: FittedLaplace, ps: PriorStructure, init: Any) -> Tensor:
    """Start value of δ in the requested structure (geometric means when reducing)."""
    cur = la.prior_precision if init is None else torch.as_tensor(init, dtype=la.dtype)
    cur = cur.detach().to(dtype=la.dtype, device=la.device).reshape(-1)
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


def _what(la: FittedLaplace, ps: PriorStructure) -> str:
    """What one evaluation of the evidence costs, for the progress line."""
    structure = la.hessian_structure.value
    if structure == "full":
        p = la.n_params
        how = "eigendecomposition" if ps == PriorStructure.SCALAR else "Cholesky factorisation"
        return f"{how} of the {p:,}×{p:,} precision"
    return f"{structure}, {la.n_params:,} parameters"


def run_marglik(
    la: FittedLaplace,
    ps: PriorStructure,
    *,
    tune_prior: bool,
    tune_sigma: bool | None,
    init: Any,
    n_steps: int,
    lr: float | None,
    optimizer: str,
    tol: float | None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    regression = la.likelihood == Likelihood.REGRESSION
    tune_sigma = _marglik_tune_sigma(regression, tune_prior, tune_sigma, optimizer, n_steps)
    low_precision = la.dtype not in (torch.float64,)
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

    opt = _marglik_optimizer(params, optimizer, lr)
    closure = _memoised_closure(la, opt, params, log_prior, log_sigma, regression)
    converged, steps, gmax = _marglik_steps(
        la, ps, closure, opt, params, optimizer, n_steps, gtol, ftol, progress
    )
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
    _warn_marglik(converged, on_edge, n_steps, gmax, gtol)
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


def _marglik_tune_sigma(
    regression: bool, tune_prior: bool, tune_sigma: bool | None, optimizer: str, n_steps: int
) -> bool:
    """Check the options; return whether σ is tuned (its default decided)."""
    if tune_sigma is None:
        # As laplace-torch: σ is the user's unless they ask for it to be tuned (it used to be
        # retuned by default for regression, overwriting a σ set on purpose). `laplace tune`
        # asks for it explicitly (pipeline.tune). With tune_prior=False σ is all there is to tune.
        tune_sigma = regression and not tune_prior
    if tune_sigma and not regression:
        raise BadInputError("sigma_noise is tuned for regression only")
    if not (tune_prior or tune_sigma):
        raise BadInputError("nothing to tune: tune_prior and tune_sigma_noise are both off")
    if optimizer not in ("lbfgs", "adam"):
        raise BadInputError(f"optimizer: expected lbfgs or adam, got {optimizer!r}")
    if n_steps < 1:
        raise BadInputError(f"n_steps must be at least 1, got {n_steps}")
    return tune_sigma


def _marglik_optimizer(
    params: list[Tensor], optimizer: str, lr: float | None
) -> torch.optim.Optimizer:
    """L-BFGS (one iteration per step, strong-Wolfe line search) or Adam."""
    if optimizer == "lbfgs":
        return torch.optim.LBFGS(
            params,
            lr=1.0 if lr is None else lr,
            max_iter=1,
            max_eval=25,
            tolerance_grad=0.0,
            tolerance_change=0.0,
            history_size=20,
            line_search_fn="strong_wolfe",
        )
    return torch.optim.Adam(params, lr=0.1 if lr is None else lr)


def _memoised_closure(
    la: FittedLaplace,
    opt: torch.optim.Optimizer,
    params: list[Tensor],
    log_prior: Tensor,
    log_sigma: Tensor,
    regression: bool,
) -> Callable[[], Tensor]:
    """The optimiser's closure: −log p(D)/N and its gradient, evaluated once per point.

    The convergence test after a step and the next step's first evaluation land on a point the
    line search (or the step before) has just evaluated. On a full posterior with a non-scalar
    prior every evaluation is an O(P³) factorisation, so a point is evaluated once (the points
    are a few log-priors: the memo is tiny).
    """

    def objective() -> Tensor:
        lp = log_prior.clamp(-LOG_BOUND, LOG_BOUND)
        ls = log_sigma.clamp(-LOG_BOUND, LOG_BOUND) if regression else None
        return -log_evidence(la, lp, ls) / la.n_data

    memo: dict[bytes, tuple[Tensor, list[Tensor]]] = {}

    def closure() -> Tensor:
        key = b"".join(p.detach().cpu().numpy().tobytes() for p in params)
        if key in memo:
            f, grads = memo[key]
            for p, g in zip(params, grads):
                p.grad = g.clone()
            return f
        opt.zero_grad()
        f = objective()
        if not torch.isfinite(f):
            raise NumericalError(
                "the log marginal likelihood is not finite at prior precision "
                f"{short_tensor(log_prior.detach().exp())}, sigma_noise {short_tensor(log_sigma.detach().exp())}"
            )
        f.backward()
        if len(memo) > 256:
            memo.clear()
        memo[key] = (f.detach(), [p.grad.detach().clone() for p in params])
        return f

    return closure


def _marglik_steps(
    la: FittedLaplace,
    ps: PriorStructure,
    closure: Callable[[], Tensor],
    opt: torch.optim.Optimizer,
    params: list[Tensor],
    optimizer: str,
    n_steps: int,
    gtol: float,
    ftol: float,
    progress: Progress,
) -> tuple[bool, int, float]:
    """Step until converged or ``n_steps``; return (converged, steps, largest gradient)."""
    started = time.perf_counter()
    first = progress([None], 1, f"marglik: first evaluation ({_what(la, ps)})")
    for _ in first:  # the first evaluation may be a long factorisation: show it
        f_prev = float(closure().detach())
    per_eval = time.perf_counter() - started
    converged, stalled, steps = False, 0, 0
    patience = 3 if optimizer == "lbfgs" else 20
    # The optimiser stops when converged, usually long before n_steps: the bar counts steps
    # and the description says what one evaluation costs (a step makes one or a few).
    label = f"marglik steps (≈{per_eval:.2g} s per evaluation)" if per_eval >= 0.5 else "marglik"
    # An iterator, not the range: no length, so the bar counts steps without a false total.
    for steps in progress(iter(range(1, n_steps + 1)), None, label):  # noqa: B007 - reported
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
    return converged, steps, gmax


def _warn_marglik(converged: bool, on_edge: bool, n_steps: int, gmax: float, gtol: float) -> None:
    """Warn when the optimiser did not converge or drove a value to its bound."""
    if not converged:
        warn(
            f"marglik did not converge in {n_steps} steps (largest gradient {gmax:.2e} > "
            f"tol {gtol:.1e}); raise n_steps or change lr"
        )
    if on_edge:
        warn(
            f"marglik drove a hyperparameter to its bound exp(±{LOG_BOUND:g}): the evidence keeps "
            "growing that way (check the model and the data)"
        )
