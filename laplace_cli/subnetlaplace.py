"""laplace-torch's module path `laplace.subnetlaplace`: its Laplace classes over a subnetwork.

The classes live in `laplace_cli.laplace.flavours_subnet` (thin flavours of `laplace_cli.Laplace`); this
module keeps laplace-torch's import path working (docs/migrating.md).
"""

from laplace_cli.laplace.flavours_subnet import (
    DiagSubnetLaplace,
    FullSubnetLaplace,
    SubnetLaplace,
)

__all__ = ["SubnetLaplace", "DiagSubnetLaplace", "FullSubnetLaplace"]
