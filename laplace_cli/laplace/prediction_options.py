"""What one prediction call of `Laplace` checks and sets up before any maths runs.

Model keyword arguments of a call (`la(x, **model_kwargs)`), the context they and
`enable_backprop` run in, and laplace-torch's Jacobian arguments (`functional_variance(Js)`,
`functional_covariance(Js)`): a (B, C, P) tensor is taken as Jacobians, anything else as inputs.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import keep_graph
from laplace_cli.core.batches import model_kwargs as model_kwargs_block
from laplace_cli.core.errors import BadInputError

__all__ = ["check_glm_model_kwargs", "checked_jacobians", "is_jacobians", "prediction_context"]


def check_glm_model_kwargs(model_kwargs: dict[str, Any]) -> None:
    """Refuse tensors among the model keyword arguments of a "glm" prediction."""
    tensors = sorted(k for k, v in model_kwargs.items() if isinstance(v, Tensor))
    if tensors:
        raise BadInputError(
            f"model keyword argument(s) {', '.join(tensors)} are tensors: with "
            "pred_type 'glm' they would reach each example's Jacobian whole; put "
            "per-example tensors in a dict batch x, or use pred_type 'nn'"
        )


def prediction_context(
    extra_model_kwargs: dict[str, Any] | None, enable_backprop: bool
) -> contextlib.ExitStack:
    """Model keyword arguments and, with `enable_backprop`, gradients kept (batches.py)."""
    stack = contextlib.ExitStack()
    if extra_model_kwargs:
        stack.enter_context(model_kwargs_block(extra_model_kwargs))
    if enable_backprop:
        stack.enter_context(keep_graph())
    return stack


def is_jacobians(arg: Any, n_params: int, n_outputs: int | None) -> bool:
    """True when `arg` is a tensor of laplace-torch's Jacobian shape (B, n_outputs,
    n_params): `functional_variance` then takes it as Jacobians, anything else as inputs."""
    if not isinstance(arg, Tensor) or arg.ndim != 3 or arg.shape[-1] != n_params:
        return False
    return n_outputs is None or arg.shape[1] == n_outputs


def checked_jacobians(
    Js: Any,  # noqa: N803 - laplace-torch's name
    n_params: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """Js as a (B, C, P) tensor in the posterior's dtype and device, or BadInputError."""
    Js = torch.as_tensor(Js, device=device).to(dtype)
    if Js.ndim != 3 or Js.shape[-1] != n_params:
        raise BadInputError(
            f"Jacobians must have shape (batch, outputs, {n_params}), got "
            f"{tuple(Js.shape)}; for inputs call functional_variance_at(x)"
        )
    return Js
