"""What `Laplace.__init__` decides before any data is seen, as functions of its arguments.

`refuse_unsupported`: the subset × structure pairs, model forms and backends the engine cannot
do, refused with the alternative named; `placement`: device, dtypes and memory budget from the
model; `plain_subset`: the parameter subset (all weights, last layer or subnetwork) of a model
with (B, C) outputs (dense outputs wrap it: laplace/dense_outputs.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from laplace_cli.core.enums import Curvature, KronApprox, Structure, Subset
from laplace_cli.core.errors import BadInputError, MissingArgumentError
from laplace_cli.laplace.precision import model_dtype_of, posterior_dtype
from laplace_cli.posterior.memory import default_budget
from laplace_cli.posterior.table import StructureSpec, supported_combinations
from laplace_cli.subsets.base import AllWeights, ParameterSubset
from laplace_cli.subsets.last_layer import LastLayer

__all__ = ["placement", "plain_subset", "refuse_unsupported"]


def refuse_unsupported(
    model: nn.Module,
    backend: str,
    spec: StructureSpec,
    subset_of_weights: Subset,
    structure: Structure,
    curvature: Curvature,
    output_positions: str | None,
) -> None:
    """Refuse a subset × structure, model form or backend this engine cannot do."""
    if not spec.supports(subset_of_weights):
        combos = supported_combinations()
        raise BadInputError(
            f"hessian_structure {structure.value!r} is not available with subset "
            f"{subset_of_weights.value!r}; supported combinations: {combos}"
        )
    if (
        isinstance(model, torch.jit.ScriptModule)
        and subset_of_weights == Subset.ALL
        and structure == Structure.KRON
    ):
        # K-FAC needs each layer's inputs and output gradients, i.e. forward hooks, which
        # compiled modules do not take; without them every tensor would silently get a
        # diagonal block.
        from laplace_cli.subsets.scripted import KRON_HINT

        raise BadInputError(
            "--structure kron over all weights needs forward hooks on the layers, which a "
            f"TorchScript model does not take; {KRON_HINT}"
        )
    if backend not in ("auto", "native", "asdl"):
        raise BadInputError(f"backend: expected auto, native or asdl, got {backend!r}")
    if curvature == Curvature.HESSIAN and output_positions is not None:
        raise BadInputError(
            "curvature 'hessian' takes (batch, classes) outputs; use curvature 'ggn' with "
            "output_positions"
        )


def placement(
    model: nn.Module, max_memory: int | None, curvature_dtype: Any = None
) -> tuple[torch.device, torch.dtype, torch.dtype, int]:
    """(device, model dtype, posterior dtype, memory budget), from the model's first parameter.

    The model dtype is what the model runs in (inputs are cast to it); the posterior's is the
    model's, float32 for a bfloat16 / float16 model, or `curvature_dtype` (laplace/precision.py).
    """
    first = next((p for p in model.parameters()), None)
    if first is None:
        raise BadInputError("the model has no parameters")
    device = first.device
    model_dtype = model_dtype_of(model)
    dtype = posterior_dtype(model_dtype, curvature_dtype)
    budget = int(max_memory) if max_memory is not None else default_budget(device)
    return device, model_dtype, dtype, budget


def plain_subset(
    model: nn.Module,
    subset_of_weights: Subset,
    kron_approx: KronApprox,
    last_layer_name: str | None,
    feature_reduction: str | None,
    subnetwork_indices: Any,
) -> ParameterSubset:
    """The parameter subset of a model with (B, C) outputs."""
    if subset_of_weights == Subset.ALL:
        return AllWeights(model, kron_approx=kron_approx)
    if subset_of_weights == Subset.LAST_LAYER:
        return LastLayer(model, last_layer_name, feature_reduction)
    try:
        from laplace_cli.subsets.subnetwork import Subnetwork
    except ImportError:
        raise BadInputError("subset_of_weights 'subnetwork' is not implemented yet") from None
    if subnetwork_indices is None:
        raise MissingArgumentError(
            "subset_of_weights 'subnetwork' needs subnetwork_indices (a 1-D tensor of "
            "parameter indices, e.g. laplace_cli.utils.LargestMagnitudeSubnetMask(model, "
            "n_params_subnet=128).select())"
        )
    return Subnetwork(model, subnetwork_indices)
