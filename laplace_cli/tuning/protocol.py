"""What tuning needs from a fitted Laplace approximation: a typed `Protocol`, so that tuning sits
below the `laplace/` package and never imports the `Laplace` class (which calls into tuning from
`Laplace.optimize_prior_precision`). `Laplace` satisfies it structurally.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from laplace_cli.core.batches import Inputs
from laplace_cli.core.enums import Likelihood, Structure, Subset
from laplace_cli.posterior.base import Posterior
from laplace_cli.subsets.base import Factor, ParameterSubset

__all__ = ["FittedLaplace"]


class FittedLaplace(Protocol):
    """The public state and methods of a fitted `Laplace` that tuning reads and writes."""

    likelihood: Likelihood
    hessian_structure: Structure
    subset_of_weights: Subset
    subset: ParameterSubset
    posterior: Posterior
    temperature: float
    tuning: dict[str, Any]
    max_memory: int
    n_data: int
    prior_precision: Any  # a Tensor; set from floats, sequences or tensors
    sigma_noise: Any  # likewise

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def n_params(self) -> int: ...

    def require_fit(self) -> None: ...

    def prepare_batch(self, batch: Any) -> tuple[Inputs, Tensor]: ...

    def as_inputs(self, x: Any) -> Inputs: ...

    def curvature_scale(self, sigma_noise: Tensor | None = None) -> Tensor: ...

    def jacobian_chunk_rows(self) -> int: ...

    def factor_rows(self, x: Inputs) -> int: ...

    def jacobian_pieces(self, x: Inputs) -> tuple[Tensor, list[Factor] | None, Tensor | None]: ...

    def functional_variance(self, x: Any) -> tuple[Tensor, Tensor]: ...

    def log_marginal_likelihood(
        self, prior_precision: Tensor | None = None, sigma_noise: Tensor | None = None
    ) -> Tensor: ...
