"""Posterior structures behind one interface (`Posterior`); `table` says which exist and what each can do."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from laplace_cli.core.enums import KronApprox, Structure
from laplace_cli.posterior.base import Posterior, expand_prior, per_group_prior
from laplace_cli.posterior.diag import DiagPosterior
from laplace_cli.posterior.full import FullPosterior
from laplace_cli.posterior.kron import KronPosterior
from laplace_cli.posterior.table import build_from_table
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
    return build_from_table(structure, groups, dtype, device, kron_approx=kron_approx, rank=rank)
