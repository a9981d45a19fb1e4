"""Function-space (GP) Laplace to and from the posterior file's flat layout (structure "gp").

`FunctionalLaplace.state_dict()` holds everything prediction and the marginal likelihood need;
this module maps it onto the posterior file format (docs/posterior-format.md): the usual
`mean`, `prior.*` tensors and metadata keys, plus the `gp.*` tensors (kernel system and the M
context inputs) and the `gp` metadata object. Privacy: the file carries M training inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from laplace_cli.core.enums import Subset
from laplace_cli.core.errors import BadInputError
from laplace_cli.core.version import __version__
from laplace_cli.laplace.functional import FunctionalLaplace
from laplace_cli.laplace.functional_ll import FunctionalLLLaplace

__all__ = ["CONTEXT_PREFIX", "functional_from_state", "functional_state", "is_functional"]

#: Tensor name of the context inputs; dict inputs are stored as `gp.context_inputs.<key>`.
CONTEXT_PREFIX = "gp.context_inputs"


def is_functional(la: Any) -> bool:
    """Whether `la` is a function-space (GP) Laplace."""
    return isinstance(la, FunctionalLaplace)


def functional_state(
    la: FunctionalLaplace,
    *,
    model_ref: dict[str, Any] | None = None,
    fingerprint: str = "",
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a fitted FunctionalLaplace / FunctionalLLLaplace."""
    state = la.state_dict()
    tensors: dict[str, Tensor] = {
        "mean": state["mean"].detach().reshape(-1),
        "prior.precision": state["prior_precision"].detach().reshape(-1),
        "prior.mean": state["prior_mean"].detach().reshape(-1),
        "gp.K": state["K"].detach(),
        "gp.S": state["S"].detach(),
        "gp.mu": state["mu"].detach(),
    }
    x = state["context_inputs"]
    if isinstance(x, Mapping):
        input_keys: list[str] | None = sorted(x)
        tensors.update({f"{CONTEXT_PREFIX}.{k}": x[k].detach() for k in input_keys})
    else:
        input_keys = None
        tensors[CONTEXT_PREFIX] = x.detach()
    last_layer = isinstance(la, FunctionalLLLaplace)
    groups = la.subset.groups
    metadata: dict[str, Any] = {
        "library_version": __version__,
        "likelihood": la.likelihood.value,
        "subset": (Subset.LAST_LAYER if last_layer else Subset.ALL).value,
        "structure": "gp",
        "curvature": "ggn",
        "n_data": int(state["n_data"]),
        "n_outputs": int(state["n_outputs"]),
        "loss": float(state["loss"]),
        "temperature": float(state["temperature"]),
        "sigma_noise": [float(state["sigma_noise"])],
        "param_names": [g.name for g in groups],
        "param_shapes": [list(g.shape) for g in groups],
        "model": model_ref or {},
        "fingerprint": fingerprint,
        "gp": {
            "n_context": int(la.system.n_context),  # type: ignore[union-attr]
            "context": str(state["context"]),
            "seed": int(state["seed"]),
            "n_subset": state["num_data"],
            "output_hessian": str(state["output_hessian"]),
            "diagonal_kernel": bool(state["diagonal_kernel"]),
            "input_keys": input_keys,
        },
    }
    if last_layer:
        metadata["last_layer_name"] = la.subset.last_layer_name  # type: ignore[attr-defined]
    tuning = getattr(la, "tuning", None)
    if tuning:
        metadata["tuning"] = tuning
    metadata.update(extra or {})
    return tensors, metadata


def functional_from_state(
    model: nn.Module, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any]
) -> FunctionalLaplace:
    """Rebuild the fitted GP Laplace of a (validated) posterior file on `model`."""
    g = metadata["gp"]
    subset = str(getattr(metadata["subset"], "value", metadata["subset"]))
    likelihood = str(getattr(metadata["likelihood"], "value", metadata["likelihood"]))
    kwargs: dict[str, Any] = {
        "n_subset": g.get("n_subset"),
        "independent_outputs": bool(g["diagonal_kernel"]),
        "seed": int(g["seed"]),
        "context": str(g["context"]),
        "output_hessian": str(g["output_hessian"]),
    }
    if subset == Subset.LAST_LAYER.value:
        la: FunctionalLaplace = FunctionalLLLaplace(
            model, likelihood, last_layer_name=metadata.get("last_layer_name"), **kwargs
        )
    elif subset == Subset.ALL.value:
        la = FunctionalLaplace(model, likelihood, **kwargs)
    else:
        raise BadInputError(f"structure 'gp' is for subsets all and last_layer, got {subset!r}")
    keys = g.get("input_keys")
    if keys:
        context: Any = {k: tensors[f"{CONTEXT_PREFIX}.{k}"] for k in keys}
    else:
        context = tensors[CONTEXT_PREFIX]
    sigma = metadata["sigma_noise"]
    la.load_state_dict(
        {
            "cls_name": type(la).__name__,
            "likelihood": likelihood,
            "mean": tensors["mean"],
            "num_data": g.get("n_subset"),
            "diagonal_kernel": bool(g["diagonal_kernel"]),
            "output_hessian": str(g["output_hessian"]),
            "context": str(g["context"]),
            "seed": int(g["seed"]),
            "context_inputs": context,
            "K": tensors["gp.K"],
            "S": tensors["gp.S"],
            "mu": tensors["gp.mu"],
            # float64: a float32 tensor would round the stored loss (and the evidence).
            "loss": torch.tensor(float(metadata["loss"]), dtype=torch.float64),
            "prior_mean": tensors["prior.mean"],
            "prior_precision": tensors["prior.precision"],
            "sigma_noise": torch.tensor(
                float(sigma[0] if isinstance(sigma, list) else sigma), dtype=torch.float64
            ),
            "temperature": float(metadata["temperature"]),
            "n_data": int(metadata["n_data"]),
            "n_outputs": int(metadata["n_outputs"]),
            "param_names": list(metadata["param_names"]),
        }
    )
    if metadata.get("tuning"):
        la.tuning = dict(metadata["tuning"])  # type: ignore[attr-defined]
    return la
