"""Outputs of networks with sampled weights: the "nn" predictive of a weight-space `Laplace`.

`Laplace.functional_samples(x, pred_type="nn")` draws θ_s ~ N(θ*, Σ) in the subset's
coordinates and calls `sampled_outputs`. A last-layer head is linear in its weights, so the
features are computed once and every sampled head is applied in one contraction; any other
subset runs the model once per sample with the sampled weights put in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.core.batches import Inputs
from laplace_cli.subsets.base import ParameterSubset
from laplace_cli.subsets.last_layer import LastLayer

__all__ = ["sampled_outputs"]


def sampled_outputs(
    subset: ParameterSubset,
    x: Inputs,
    thetas: Tensor,
    dtype: torch.dtype,
    model_dtype: torch.dtype,
) -> Tensor:
    """f(x; θ_s) for every row θ_s of `thetas` (S, P): (S, B, C) in `dtype`."""
    n_samples = thetas.shape[0]
    if isinstance(subset, LastLayer):
        phi, _ = subset.features(x)  # (B, d)
        weight = subset.groups[0]
        W = thetas[:, : weight.numel].reshape(n_samples, *weight.shape)  # (S, C, d)
        f = torch.einsum("bi,sci->sbc", phi.to(dtype), W)
        if len(subset.groups) > 1:
            f = f + thetas[:, weight.numel :].unsqueeze(1)  # bias (S, 1, C)
        return f
    # The sampled weights go into the model in its own dtype (bfloat16 / float16 models).
    return torch.stack(
        [subset.forward_with(x, theta.to(model_dtype)).to(dtype) for theta in thetas]
    )
