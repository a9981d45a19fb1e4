"""laplace-torch's subnetwork Laplace classes, as thin layers over `laplace_cli.Laplace`.

Each fixes `subset_of_weights="subnetwork"` and a structure ("diag" or "full"), with
laplace-torch's constructor signature (`subnetwork_indices` third); see
laplace_cli/laplace/flavours.py. Indices are positions in the flattened *trainable* parameters
(`model.parameters()` order, as laplace-torch's `SubnetLaplace`); pick them with the masks of
`laplace_cli.utils` (e.g. `LargestMagnitudeSubnetMask(model, 128).select()`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.flavours import DiagLaplace, FullLaplace, ParametricLaplace

__all__ = ["SubnetLaplace", "DiagSubnetLaplace", "FullSubnetLaplace"]


class SubnetLaplace(ParametricLaplace):
    """Base of the subnetwork flavours (laplace-torch's `SubnetLaplace`); construct a subclass.

    Args (laplace-torch's order): model, likelihood, subnetwork_indices, sigma_noise,
    prior_precision, prior_mean, temperature, backend (GGN or EF classes), backend_kwargs,
    asdl_fisher_kwargs (refused, as in laplace-torch).
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        subnetwork_indices: torch.Tensor | Sequence[int],
        sigma_noise: float | torch.Tensor = 1.0,
        prior_precision: float | torch.Tensor = 1.0,
        prior_mean: float | torch.Tensor = 0.0,
        temperature: float = 1.0,
        backend: type | str | None = None,
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if asdl_fisher_kwargs is not None:
            raise BadInputError("Subnetwork Laplace does not support asdl_fisher_kwargs.")
        if subnetwork_indices is None:
            raise BadInputError("Subnetwork indices cannot be None.")
        self._init_flavour(
            model,
            likelihood,
            subnetwork_indices=subnetwork_indices,
            sigma_noise=sigma_noise,
            prior_precision=prior_precision,
            prior_mean=prior_mean,
            temperature=temperature,
            backend=backend,
            backend_kwargs=backend_kwargs,
            **kwargs,
        )

    @property
    def n_params_subnet(self) -> int:
        """Number of parameters in the subnetwork (laplace-torch's attribute)."""
        return int(self.subset.indices.numel())


class FullSubnetLaplace(SubnetLaplace, FullLaplace):
    """Dense posterior precision over a subnetwork (laplace-torch's `FullSubnetLaplace`)."""

    _key = ("subnetwork", "full")


class DiagSubnetLaplace(SubnetLaplace, DiagLaplace):
    """Diagonal posterior precision over a subnetwork (laplace-torch's `DiagSubnetLaplace`)."""

    _key = ("subnetwork", "diag")


# laplace-torch users see (and pickle by) its module path, laplace_cli.subnetlaplace, which re-exports
# these classes; the code lives here, in the laplace package.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = "laplace_cli.subnetlaplace"
