"""laplace-torch's small helpers (`laplace.utils.utils`) that users call directly."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from laplace_cli.core.errors import BadInputError

__all__ = [
    "get_nll",
    "validate",
    "parameters_per_layer",
    "expand_prior_precision",
    "fix_prior_prec_structure",
]


def get_nll(out_dist: Tensor, targets: Tensor) -> Tensor:
    """Mean negative log-likelihood of class probabilities `out_dist` (B, C) at `targets`."""
    return F.nll_loss(torch.log(out_dist), targets)


@torch.no_grad()
def validate(
    laplace: Any,
    val_loader: Iterable[Any],
    loss: Callable[..., Tensor] | Any,
    pred_type: str = "glm",
    link_approx: str = "probit",
    n_samples: int = 100,
    dict_key_y: str = "labels",
) -> float:
    """`loss` of `laplace`'s predictive over `val_loader`, as laplace-torch's `validate`.

    `loss` is a callable on all predictions at once — `loss(probs, y)`, or for a (mean,
    variance) predictive `loss(mean, var, y)` — or a torchmetrics `Metric` updated per batch.
    """
    is_metric = hasattr(loss, "update") and hasattr(loss, "compute")
    means: list[Tensor] = []
    variances: list[Tensor] = []
    targets: list[Tensor] = []
    for data in val_loader:
        if isinstance(data, Mapping):
            x, y = data, data[dict_key_y]
        else:
            x, y = data
        out = laplace(x, pred_type=pred_type, link_approx=link_approx, n_samples=n_samples)
        y = torch.as_tensor(y).to(out[0].device if isinstance(out, tuple) else out.device)
        if isinstance(out, tuple):
            if is_metric:
                try:
                    loss.update(*out, y)
                except TypeError:  # a metric of (prediction, target) only
                    loss.update(out[0], y)
            else:
                means.append(out[0])
                variances.append(out[1])
                targets.append(y)
        elif is_metric:
            loss.update(out, y)
        else:
            means.append(out)
            targets.append(y)
    if is_metric:
        return float(loss.compute().sum().item())
    if not variances:
        return float(loss(torch.cat(means), torch.cat(targets)).item())
    return float(loss(torch.cat(means), torch.cat(variances), torch.cat(targets)).item())


def parameters_per_layer(model: nn.Module) -> list[int]:
    """Number of entries of each parameter tensor of `model`."""
    return [int(p.numel()) for p in model.parameters()]


def expand_prior_precision(prior_prec: Tensor, model: nn.Module) -> Tensor:
    """A prior precision (1,), (tensors,) or (P,) expanded to one value per trainable entry."""
    params = [p for p in model.parameters() if p.requires_grad]
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    if prior_prec.ndim != 1:
        raise BadInputError(f"prior_prec must be 1-D, got shape {tuple(prior_prec.shape)}")
    n = prior_prec.numel()
    if n == 1:
        return torch.ones_like(theta) * prior_prec
    if n == theta.numel():
        return prior_prec.to(theta.device)
    if n != len(params):
        raise BadInputError(
            f"prior_prec has {n} values; expected 1, one per parameter tensor ({len(params)}) "
            f"or one per parameter ({theta.numel()})"
        )
    return torch.cat([d * torch.ones_like(p).reshape(-1) for d, p in zip(prior_prec, params)])


def fix_prior_prec_structure(
    prior_prec_init: float | Tensor,
    prior_structure: str,
    n_layers: int,
    n_params: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """`prior_prec_init` repeated to the shape of `prior_structure` ("scalar", "layerwise",
    "diag"): (1,), (n_layers,) or (n_params,)."""
    structure = str(getattr(prior_structure, "value", prior_structure))
    sizes = {"scalar": 1, "layerwise": n_layers, "diag": n_params}
    if structure not in sizes:
        raise BadInputError(f"Invalid prior structure {prior_structure}.")
    value = torch.as_tensor(prior_prec_init).reshape(-1)[0].item()
    return torch.full((sizes[structure],), value, device=device, dtype=dtype)
