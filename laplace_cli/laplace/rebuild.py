"""Rebuild a fitted `Laplace` from the tensors and metadata `serialization.laplace_state` wrote."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from laplace_cli.laplace.approximation import Laplace
from laplace_cli.laplace.serialization import restore_state


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
    if metadata.get("kron_approx"):
        kwargs["kron_approx"] = metadata["kron_approx"]
    if metadata.get("rank") is not None:
        kwargs["rank"] = int(metadata["rank"])
    if "subnetwork.indices" in tensors:
        kwargs["subnetwork_indices"] = tensors["subnetwork.indices"]
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
