"""A fitted `Laplace` as a flat dict of tensors plus plain metadata, and back.

`la` is typed `Any` here: the class imports this module (state_dict), so this module cannot
import the class; `laplace_cli.laplace.rebuild.laplace_from_state` builds a new one.

The posterior file (`laplace_cli.io.posterior_file`) stores exactly this state; see
docs/posterior-format.md for every key. Only the curvature is stored, never the model: the
model is loaded from its own checkpoint and checked against the recorded fingerprint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.enums import Subset
from laplace_cli.core.errors import BadInputError
from laplace_cli.core.version import __version__
from laplace_cli.posterior.table import structure_spec


def laplace_state(
    la: Any,
    *,
    model_ref: dict[str, Any] | None = None,
    fingerprint: str = "",
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a fitted Laplace approximation (metadata values are plain Python)."""
    if not la.fitted:
        raise BadInputError("cannot save a Laplace approximation that is not fitted")
    tensors: dict[str, Tensor] = {
        "mean": la._mean.detach(),  # the subset's coordinates (the file format)
        "prior.precision": la.prior_precision.detach(),
        "prior.mean": la.prior_mean.detach(),
    }
    tensors.update({k: v.detach() for k, v in la.posterior.state().items()})
    indices = getattr(la.subset, "indices", None)
    if la.subset_of_weights == Subset.SUBNETWORK and indices is not None:
        tensors["subnetwork.indices"] = torch.as_tensor(indices, dtype=torch.int64)
    groups = la.subset.groups
    loss = la.loss.detach().reshape(-1)
    metadata: dict[str, Any] = {
        "library_version": __version__,
        "likelihood": la.likelihood.value,
        "subset": la.subset_of_weights.value,
        "structure": la.hessian_structure.value,
        "curvature": la.curvature.value,
        "n_data": int(la.n_data),
        "n_outputs": int(la.n_outputs or 1),
        "loss": float(loss[0]) if loss.numel() == 1 else [float(v) for v in loss],
        "temperature": float(la.temperature),
        "sigma_noise": [float(v) for v in la.sigma_noise.reshape(-1)],
        "param_names": [g.name for g in groups],
        "param_shapes": [list(g.shape) for g in groups],
        "model": model_ref or {},
        "fingerprint": fingerprint,
    }
    blocks = la.posterior.block_metadata()
    if blocks is not None:
        metadata["blocks"] = blocks
        metadata["kron_approx"] = la.kron_approx.value
    if la.subset_of_weights == Subset.LAST_LAYER:
        metadata["last_layer_name"] = la.subset.last_layer_name
        if la.feature_reduction:
            metadata["feature_reduction"] = la.feature_reduction
    if getattr(la, "output_positions", None) is not None:
        # Dense outputs (B, C, *S): how positions combine, the mask label and (C, *S).
        metadata["output_positions"] = la.output_positions
        metadata["ignore_index"] = int(la.ignore_index)
        metadata["output_shape"] = list(la.output_shape or ())
    if la.tuning:
        metadata["tuning"] = la.tuning
        for key in ("pred_type", "link_approx", "prior_structure"):
            if la.tuning.get(key):
                metadata[key] = la.tuning[key]
    if structure_spec(la.hessian_structure).records_rank and la.rank is not None:
        metadata["rank"] = int(la.rank)
    model_dtype = getattr(la, "model_dtype", la.dtype)
    if model_dtype != la.dtype:
        # A bfloat16 / float16 model (or float32 with a float64 curvature): the model is loaded
        # back in this dtype, the posterior in the tensors' dtype (docs/half-precision.md).
        metadata["model_dtype"] = str(model_dtype).removeprefix("torch.")
    metadata.update(extra or {})
    return tensors, metadata


def restore_state(la: Any, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> Any:
    """Load saved state into `la`, built on the same model with the same settings (checked:
    the parameter names and the MAP weights must match the model's)."""
    names = [g.name for g in la.subset.groups]
    if names != list(metadata["param_names"]):
        raise BadInputError(
            "the posterior's parameters do not match the model's: posterior has "
            f"{len(metadata['param_names'])} tensors ({', '.join(metadata['param_names'][:3])}, ...), "
            f"the model {len(names)} ({', '.join(names[:3])}, ...)"
        )
    dtype, device = la.dtype, la.device
    mean = tensors["mean"].to(dtype=dtype, device=device)
    if mean.shape != la._mean.shape or not torch.allclose(mean, la._mean, rtol=1e-5, atol=1e-6):
        raise BadInputError("the posterior's MAP weights differ from the model's parameters")
    n_data = int(metadata["n_data"])
    state = {k: v.to(dtype=dtype, device=device) for k, v in tensors.items()}
    if structure_spec(la.hessian_structure).load_with_n_data:
        la.posterior.load_state(state, n_data=n_data)
    else:
        la.posterior.load_state(state)
    la.n_data = n_data
    la.n_outputs = int(metadata["n_outputs"])
    if metadata.get("output_shape"):
        la.output_shape = tuple(int(v) for v in metadata["output_shape"])
    la.loss = torch.as_tensor(metadata["loss"], dtype=dtype, device=device)
    la.sigma_noise = torch.as_tensor(metadata["sigma_noise"], dtype=dtype)
    la.prior_precision = state["prior.precision"]
    la.prior_mean = state["prior.mean"]
    la.tuning = dict(metadata.get("tuning") or {})
    la.fitted = True
    return la
