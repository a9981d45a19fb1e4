"""Posterior structures behind one interface (`Posterior`), and the registry that builds them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from laplace_cli.core.enums import KronApprox, Structure
from laplace_cli.core.errors import BadInputError
from laplace_cli.posterior.base import Posterior, expand_prior, per_group_prior
from laplace_cli.posterior.diag import DiagPosterior
from laplace_cli.posterior.full import FullPosterior
from laplace_cli.posterior.kron import KronPosterior
from laplace_cli.subsets.base import ParamGroup

__all__ = [
    "Posterior",
    "DiagPosterior",
    "FullPosterior",
    "KronPosterior",
    "build_posterior",
    "expand_prior",
    "per_group_prior",
]


def build_posterior(
    structure: Structure,
    groups: Sequence[ParamGroup],
    dtype: torch.dtype,
    device: torch.device,
    *,
    kron_approx: KronApprox = KronApprox.EXPAND,
    rank: int | None = None,
) -> Posterior:
    """Build an empty posterior of the given structure for the given parameter groups."""
    if structure == Structure.DIAG:
        return DiagPosterior(groups, dtype, device)
    if structure == Structure.FULL:
        return FullPosterior(groups, dtype, device)
    if structure == Structure.KRON:
        return KronPosterior(groups, dtype, device, kron_approx=kron_approx)
    if structure == Structure.LOWRANK:
        try:
            from laplace_cli.posterior.lowrank import LowRankPosterior
        except ImportError:  # pragma: no cover - until the module lands
            raise BadInputError("structure 'lowrank' is not implemented yet") from None
        return LowRankPosterior(groups, dtype, device, rank=rank)
    raise BadInputError(f"unknown structure {structure!r}")
