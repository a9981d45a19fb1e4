"""Rebuild a fitted `Laplace` from the tensors and metadata `serialization.laplace_state` wrote."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from laplace_cli.laplace.approximation import Laplace
from laplace_cli.laplace.precision import model_dtype_of
from laplace_cli.laplace.serialization import restore_state
from laplace_cli.subsets.precision import is_half


def laplace_from_state(
    model: nn.Module, tensors: dict[str, Tensor], metadata: dict[str, Any]
) -> Laplace:
    """Rebuild a fitted `Laplace` on `model` (already on its device and dtype) from saved state.

    The caller checks the model's fingerprint first; the saved MAP must match the model's
    parameters, which is checked again here because predictions linearise around them.
    """
    kwargs: dict[str, Any] = {}
    if metadata.get("last_layer_name"):
        kwargs["last_layer_name"] = metadata["last_layer_name"]
    if metadata.get("feature_reduction"):
        kwargs["feature_reduction"] = metadata["feature_reduction"]
    if metadata.get("output_positions"):
        kwargs["output_positions"] = metadata["output_positions"]
        kwargs["ignore_index"] = int(metadata.get("ignore_index", -100))
    if metadata.get("kron_approx"):
        kwargs["kron_approx"] = metadata["kron_approx"]
    if metadata.get("rank") is not None:
        kwargs["rank"] = int(metadata["rank"])
    if "subnetwork.indices" in tensors:
        kwargs["subnetwork_indices"] = tensors["subnetwork.indices"]
    if metadata.get("model_dtype") or is_half(model_dtype_of(model)):
        # Fitted with a posterior dtype other than the model's (a bfloat16 / float16 model):
        # the posterior keeps the dtype it was saved in.
        kwargs["curvature_dtype"] = tensors["mean"].dtype
    la = Laplace(
        model,
        metadata["likelihood"],
        metadata["subset"],
        metadata["structure"],
        curvature=metadata["curvature"],
        temperature=float(metadata["temperature"]),
        **kwargs,
    )
    return restore_state(la, tensors, metadata)
