"""laplace-torch's module path `laplace.utils.matrix`: `Kron` and `KronDecomposed`.

The classes live in laplace_cli/posterior/kron_matrix.py (the K-FAC posterior's algebra with
laplace-torch's interface); `KronLaplace.H` is a `Kron` and `KronLaplace.posterior_precision` a
`KronDecomposed` built from the fitted posterior. See docs/migrating.md.
"""

from laplace_cli.posterior.kron_matrix import Kron, KronDecomposed

__all__ = ["Kron", "KronDecomposed"]
