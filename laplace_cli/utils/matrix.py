"""laplace-torch's `Kron` / `KronDecomposed` matrix classes: not offered here.

This project's K-FAC posterior keeps its own per-layer factors and eigendecompositions
(posterior/kron.py) and is used through `Laplace(..., hessian_structure="kron")`; there is no
stand-alone Kronecker matrix object with laplace-torch's operator algebra (`+`, `*`, `bmm`,
`decompose`, `logdet`). For the numbers, read `la.posterior_precision` (dense) or
`la.posterior_covariance` after `la.fit`. Both names exist so code importing them loads; creating
one raises `NotImplementedError` naming these alternatives.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Kron", "KronDecomposed"]

_ALTERNATIVE = (
    "is laplace-torch's stand-alone Kronecker matrix class, not offered by laplace_cli: use "
    "Laplace(..., hessian_structure='kron') and read la.posterior_precision / "
    "la.posterior_covariance (dense) after la.fit; for a Kronecker product of two matrices "
    "use laplace_cli.utils.kron"
)


class Kron:
    """Placeholder for laplace-torch's `Kron`; raises `NotImplementedError` when used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} {_ALTERNATIVE}")

    @classmethod
    def init_from_model(cls, *args: Any, **kwargs: Any) -> Kron:
        raise NotImplementedError(f"{cls.__name__} {_ALTERNATIVE}")


class KronDecomposed:
    """Placeholder for laplace-torch's `KronDecomposed`; raises `NotImplementedError`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} {_ALTERNATIVE}")
