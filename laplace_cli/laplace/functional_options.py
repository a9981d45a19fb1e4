"""What a function-space (GP) Laplace accepts: options, hyperparameters and a saved state.

`FunctionalGP.__init__` refuses what function-space Laplace does not offer
(`check_gp_options`), naming the alternative; its hyperparameters are scalars (an isotropic
prior: the kernel is J Jᵀ / δ) or, for μ₀, one value per parameter (`gp_*`);
`load_state_dict` refuses a state of another class, likelihood or model (`check_gp_state`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError

__all__ = [
    "check_gp_options",
    "check_gp_state",
    "gp_prior_mean",
    "gp_prior_precision",
    "gp_sigma_noise",
]


def check_gp_options(
    cls_name: str,
    likelihood: Likelihood,
    fixed_subset: str,
    subset_of_weights: str | None,
    hessian_structure: str | None,
    enable_backprop: bool,
    output_hessian: str,
    independent_outputs: bool,
) -> bool:
    """Refuse what function-space Laplace does not offer; returns `independent_outputs`."""
    if likelihood == Likelihood.BINARY:
        raise BadInputError(
            "function-space Laplace supports 'classification' and 'regression'; for a "
            "binary likelihood use a weight-space structure"
        )
    for name, given, fixed in (
        ("subset_of_weights", subset_of_weights, fixed_subset),
        ("hessian_structure", hessian_structure, "gp"),
    ):
        if given is not None and str(getattr(given, "value", given)) != fixed:
            raise BadInputError(f"{cls_name} has {name}={fixed!r}, got {given!r}")
    if enable_backprop:
        raise BadInputError(
            "enable_backprop=True (gradients through the GP predictive) is not offered by "
            "function-space Laplace here; use a weight-space Laplace(enable_backprop=True)"
        )
    if output_hessian not in ("diag", "full"):
        raise BadInputError(f"output_hessian: expected 'diag' or 'full', got {output_hessian!r}")
    if independent_outputs and output_hessian == "full":
        raise BadInputError(
            "independent_outputs=True keeps one kernel per output, so only the diagonal of "
            "the output Hessian: use output_hessian='diag'"
        )
    return bool(independent_outputs)


def check_gp_state(
    state: Mapping[str, Any],
    cls_name: str,
    likelihood: Likelihood,
    param_names: Sequence[str],
    mean: Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Refuse a `state_dict()` of another class, likelihood, model or MAP."""
    if state.get("cls_name") != cls_name:
        raise BadInputError(
            f"state of a {state.get('cls_name')}, loaded into a {cls_name}: make "
            "sure subset_of_weights and hessian_structure are the same"
        )
    if state["likelihood"] != likelihood.value:
        raise BadInputError(
            f"state has likelihood {state['likelihood']!r}, this object {likelihood.value!r}"
        )
    if list(state["param_names"]) != list(param_names):
        raise BadInputError("the state's parameters do not match the model's (another model?)")
    saved = torch.as_tensor(state["mean"], dtype=dtype, device=device)
    if saved.shape != mean.shape or not torch.allclose(saved, mean, rtol=1e-5, atol=1e-6):
        raise BadInputError("the state's MAP weights differ from the model's parameters")


def gp_sigma_noise(
    value: float | Tensor, likelihood: Likelihood, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """σ as a 0-d tensor; 1 for classification."""
    t = torch.as_tensor(value, dtype=dtype, device=device).reshape(-1)
    if t.numel() != 1:
        raise BadInputError("function-space Laplace takes one scalar sigma_noise")
    if likelihood != Likelihood.REGRESSION and float(t) != 1.0:
        raise BadInputError("sigma_noise is for regression; leave it at 1 for classification")
    return t.reshape(())


def gp_prior_precision(value: float | Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """δ as a (1,) tensor (an isotropic prior)."""
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.ndim > 1 or t.numel() != 1:
        raise BadInputError(
            "function-space Laplace takes an isotropic prior: one scalar prior_precision "
            "(the GP kernel is J Jᵀ / δ)"
        )
    return t.reshape(1)


def gp_prior_mean(
    value: float | Tensor, n_params: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """μ₀ as a 0-d tensor or a (P,) vector."""
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.numel() != 1 and t.numel() != n_params:
        raise BadInputError(f"prior_mean: a scalar or {n_params} values, got {t.numel()}")
    return t.reshape(()) if t.numel() == 1 else t.reshape(-1)
