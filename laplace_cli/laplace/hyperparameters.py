"""Validation of the hyperparameters of a weight-space `Laplace`: δ, μ₀, σ and T.

`Laplace`'s `prior_precision`, `prior_mean` and `sigma_noise` setters call these and store the
tensor they return; they raise `BadInputError` naming the accepted shapes. A vector σ (one
value per output) needs the posterior to keep its curvature per output
(`per_output_noise_split`); see docs/design.md §5 for Λ = s·H + diag(δ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.enums import Curvature, Likelihood, Structure
from laplace_cli.core.errors import BadInputError
from laplace_cli.posterior.base import expand_prior

__all__ = [
    "HyperparameterMixin",
    "as_tensor",
    "check_prior_mean",
    "check_prior_precision",
    "check_sigma_noise",
    "check_temperature",
    "per_output_noise_split",
]


def as_tensor(
    value: float | Sequence[float] | Tensor, dtype: torch.dtype, device: torch.device
) -> Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    return t.reshape(-1) if t.ndim == 0 else t


def check_prior_precision(
    value: float | Sequence[float] | Tensor,
    dtype: torch.dtype,
    device: torch.device,
    groups: Sequence[Any],
    structure: Structure,
) -> Tensor:
    """δ as a (1,), (groups,) or (P,) tensor, positive and finite (kron: not per parameter)."""
    t = as_tensor(value, dtype, device)
    if t.ndim != 1:
        raise BadInputError(
            f"prior_precision must be a scalar or a vector, got shape {tuple(t.shape)}"
        )
    expand_prior(t, groups)  # validates the length
    if structure == Structure.KRON and t.numel() not in (1, len(groups)):
        raise BadInputError(
            f"kron supports a scalar prior precision or one per parameter tensor "
            f"({len(groups)} values), got {t.numel()}"
        )
    if not torch.isfinite(t).all() or (t <= 0).any():
        raise BadInputError("prior_precision must be positive and finite")
    return t


def check_prior_mean(
    value: float | Tensor, dtype: torch.dtype, device: torch.device, n_params: int
) -> Tensor:
    """μ₀ as a (1,) or (P,) tensor."""
    t = as_tensor(value, dtype, device)
    # laplace-torch's rule: a scalar or a vector of length 1 or P. A (P, 1) column used to
    # be accepted and broadcast against the (P,) mean into a (P, P) scatter term.
    if t.ndim != 1:
        raise BadInputError(
            f"prior_mean must be a scalar or a vector of {n_params} values, got shape "
            f"{tuple(t.shape)}; flatten it with prior_mean.reshape(-1)"
        )
    if t.numel() not in (1, n_params):
        raise BadInputError(
            f"prior_mean must be a scalar or have {n_params} values, got {t.numel()}"
        )
    return t


def check_sigma_noise(
    value: float | Sequence[float] | Tensor,
    dtype: torch.dtype,
    device: torch.device,
    likelihood: Likelihood,
) -> Tensor:
    """σ as a (1,) or (C,) tensor, positive and finite; 1 for anything but regression."""
    t = as_tensor(value, dtype, device)
    if likelihood != Likelihood.REGRESSION and (t.numel() != 1 or not torch.all(t == 1)):
        raise BadInputError("sigma_noise applies to regression only; leave it at 1")
    if t.ndim != 1:
        raise BadInputError(
            f"sigma_noise must be a scalar or one value per output, got shape {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all() or (t <= 0).any():
        raise BadInputError("sigma_noise must be positive and finite")
    return t


def check_temperature(temperature: float) -> float:
    """T as a float, positive and finite."""
    if temperature <= 0 or not math.isfinite(temperature):
        raise BadInputError(f"temperature must be a positive number, got {temperature}")
    return float(temperature)


def per_output_noise_split(
    n: int,
    n_outputs: int | None,
    split: int | None,
    curvature: Curvature,
    structure: Structure,
    fitted: bool,
) -> bool:
    """Whether the posterior must start keeping H per output for a σ of `n` values.

    Per-output σ: Λ = Σ_k H_k / (σ_k² T) + diag(δ), so H is kept per output k. Only the GGN
    of a Gaussian likelihood splits into per-output terms (its output Hessian is the
    identity); the empirical and MC Fisher mix outputs in every outer product, and kron /
    lowrank factorise the summed curvature, so those refuse a vector σ. `split`: the outputs
    the posterior keeps already (None: summed); `n_outputs` None while `__init__` runs.
    """
    if n_outputs is not None and n != n_outputs:
        raise BadInputError(f"sigma_noise has {n} values but the model has {n_outputs} outputs")
    if split == n:
        return False
    if split is not None:
        raise BadInputError(
            f"this posterior keeps the curvature of {split} outputs, sigma_noise has {n} values"
        )
    if curvature != Curvature.GGN:
        raise BadInputError(
            f"per-output sigma_noise needs curvature 'ggn', got {curvature.value!r} "
            "(the empirical and MC Fisher mix outputs in every outer product)"
        )
    if structure not in (Structure.DIAG, Structure.FULL):
        raise BadInputError(
            f"per-output sigma_noise needs hessian_structure 'diag' or 'full', got "
            f"{structure.value!r} (its curvature is factorised over all outputs "
            "at once); use a scalar sigma_noise or structure diag/full"
        )
    if fitted:
        raise BadInputError(
            "this posterior was fitted with a scalar sigma_noise; refit with a per-output "
            f"sigma_noise ({n} values) to use one noise level per output"
        )
    return True


class HyperparameterMixin:
    """`Laplace`'s prior precision δ, prior mean μ₀ and observation noise σ: properties whose
    setters check and place the values (the checks above)."""

    _dtype: torch.dtype
    _device: torch.device

    @property
    def prior_precision(self) -> Tensor:
        return self._prior_precision

    @prior_precision.setter
    def prior_precision(self, value: float | Sequence[float] | Tensor) -> None:
        self._prior_precision = check_prior_precision(
            value, self._dtype, self._device, self.subset.groups, self.hessian_structure
        )

    @property
    def prior_mean(self) -> Tensor:
        return self._prior_mean

    @prior_mean.setter
    def prior_mean(self, value: float | Tensor) -> None:
        self._prior_mean = check_prior_mean(value, self._dtype, self._device, self.n_params)

    @property
    def sigma_noise(self) -> Tensor:
        return self._sigma_noise

    @sigma_noise.setter
    def sigma_noise(self, value: float | Sequence[float] | Tensor) -> None:
        t = check_sigma_noise(value, self._dtype, self._device, self.likelihood)
        if t.numel() > 1:
            self._use_per_output_noise(t.numel())
        self._sigma_noise = t

    def _use_per_output_noise(self, n: int) -> None:
        """Per-output σ: the posterior keeps H per output (laplace/hyperparameters.py)."""
        split = per_output_noise_split(
            n,
            getattr(self, "n_outputs", None),  # None while __init__ runs
            self.posterior.split_outputs,
            self.curvature,
            self.hessian_structure,
            getattr(self, "fitted", False),
        )
        if split:
            self.posterior.split_by_output(n)
