"""Targets of a batch for a weight-space `Laplace`: their layout and the checks against outputs.

`Laplace.prepare_batch` puts them in the layout the likelihoods take (class indices (B,),
real targets (B, C); dense outputs: laplace/dense_outputs.py) and the fit checks every batch's
targets against the model's outputs (`check_targets`) before it forms a curvature from them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError

__all__ = ["check_targets", "target_layout"]


def target_layout(likelihood: Likelihood, y: Tensor, dtype: torch.dtype) -> Tensor:
    """Class indices as a (B,) integer tensor; real targets in `dtype` as (B, C)."""
    if likelihood == Likelihood.CLASSIFICATION:
        return y.long().reshape(-1)
    y = y.to(dtype)
    if y.ndim == 1:
        y = y.unsqueeze(-1)
    return y


def check_targets(likelihood: Likelihood, f: Tensor, y: Tensor, batch_index: int) -> None:
    """BadInputError naming the batch when targets `y` do not fit the outputs `f` (B, C)."""
    n_out = f.shape[1]
    if likelihood == Likelihood.CLASSIFICATION:
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_out):
            raise BadInputError(
                f"batch {batch_index}: labels must lie in [0, {n_out}) for a model with "
                f"{n_out} outputs, got min {int(y.min())}, max {int(y.max())}"
            )
    elif y.shape != f.shape:
        raise BadInputError(
            f"batch {batch_index}: targets of shape {tuple(y.shape)} do not fit model outputs "
            f"of shape {tuple(f.shape)}"
        )
    if likelihood != Likelihood.CLASSIFICATION and not torch.isfinite(y).all():
        raise BadInputError(f"batch {batch_index}: targets contain NaN or Inf")
    if likelihood == Likelihood.BINARY and y.numel() and ((y < 0) | (y > 1)).any():
        raise BadInputError(
            f"batch {batch_index}: binary targets must lie in [0, 1] (one 0/1 column per "
            f"label), got values in [{float(y.min())}, {float(y.max())}]"
        )
