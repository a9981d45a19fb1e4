"""Parameter subsets (all weights, last layer, subnetwork): their factors, Jacobians and products with them."""

from __future__ import annotations

from laplace_cli.subsets.base import (  # the old module's public names
    AllWeights,
    DenseFactor,
    Factor,
    GroupKind,
    LayerFactor,
    NoLayerFactorsError,
    ParameterSubset,
    ParamGroup,
    dense_from_factors,
    factored_layers,
    iter_rows,
    supported_layer,
)
from laplace_cli.subsets.layer_capture import conv_patches
from laplace_cli.subsets.per_sample import call_model_functional, eval_mode

__all__ = [
    "GroupKind",
    "ParamGroup",
    "NoLayerFactorsError",
    "LayerFactor",
    "DenseFactor",
    "Factor",
    "supported_layer",
    "factored_layers",
    "eval_mode",
    "conv_patches",
    "iter_rows",
    "ParameterSubset",
    "dense_from_factors",
    "AllWeights",
    "call_model_functional",
]
