"""laplace-torch's module path `laplace.lllaplace`: its Laplace classes over the last layer.

The classes live in `laplace_cli.laplace.flavours_last_layer` (thin flavours of `laplace_cli.Laplace`); this
module keeps laplace-torch's import path working (docs/migrating.md).
"""

from laplace_cli.laplace.flavours_last_layer import (
    DiagLLLaplace,
    FullLLLaplace,
    FunctionalLLLaplace,
    KronLLLaplace,
    LLLaplace,
)

__all__ = ["LLLaplace", "DiagLLLaplace", "KronLLLaplace", "FullLLLaplace", "FunctionalLLLaplace"]
