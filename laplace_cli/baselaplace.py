"""laplace-torch's module path `laplace.baselaplace`: its Laplace classes over all weights.

The classes live in `laplace_cli.laplace.flavours` (thin flavours of `laplace_cli.Laplace`); this
module keeps laplace-torch's import path working (docs/migrating.md).
"""

from laplace_cli.laplace.flavours import (
    ELLA,
    BaseFunctionalLaplace,
    BaseLaplace,
    DiagLaplace,
    FullLaplace,
    FunctionalLaplace,
    KronLaplace,
    LowRankLaplace,
    ParametricLaplace,
    VaLLA,
)

__all__ = [
    "BaseLaplace",
    "ParametricLaplace",
    "DiagLaplace",
    "KronLaplace",
    "FullLaplace",
    "LowRankLaplace",
    "FunctionalLaplace",
    "BaseFunctionalLaplace",
    "ELLA",
    "VaLLA",
]
