"""Subnetwork masks chosen with a fitted Laplace approximation (above the `laplace/` package).

Masks that need only the model (largest magnitude, random, by name) live with the subset in
`laplace_cli.subsets.subnetwork`; this one needs a fitted diagonal `Laplace`, so it sits above
it, which keeps `subsets` below `laplace`.
"""

from __future__ import annotations

from torch import Tensor

from laplace_cli.core.enums import Structure, Subset
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.subsets.subnetwork import top_score_indices

__all__ = ["largest_variance_indices"]


def largest_variance_indices(la_diag: Laplace, n: int) -> Tensor:
    """The n parameters with the largest marginal variance under a fitted diagonal Laplace.

    `la_diag` must cover all weights with hessian_structure "diag" (the subnetwork selection of
    Daxberger et al. 2021, `LargestVarianceDiagLaplaceSubnetMask` in laplace-torch).
    """
    if la_diag.subset_of_weights != Subset.ALL or la_diag.hessian_structure != Structure.DIAG:
        raise BadInputError(
            "largest_variance_indices needs a fitted Laplace with subset_of_weights='all' and "
            f"hessian_structure='diag', got {la_diag.subset_of_weights.value!r} / "
            f"{la_diag.hessian_structure.value!r}"
        )
    return top_score_indices(la_diag.posterior_variance.detach(), n)
