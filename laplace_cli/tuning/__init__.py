"""Tuning the prior precision (and σ, T): grid search with a predictive cache, marginal likelihood."""

from __future__ import annotations

from laplace_cli.tuning.api import (  # the old module's public names
    TuningWarning,
    grid_losses,
    log_evidence,
    optimize_prior_precision,
    optimize_sigma_noise,
)

__all__ = [
    "TuningWarning",
    "log_evidence",
    "optimize_prior_precision",
    "optimize_sigma_noise",
    "grid_losses",
]
