"""laplace-torch's `laplace.curvature.asdfghjkl` path: its backend class names, which select this
project's curvature (see laplace_cli.curvature.backends; no asdfghjkl library is used)."""

from laplace_cli.curvature.backends import (
    AsdfghjklEF,
    AsdfghjklGGN,
    AsdfghjklHessian,
    AsdfghjklInterface,
    CurvatureInterface,
    EFInterface,
    GGNInterface,
)

__all__ = [
    "AsdfghjklInterface",
    "AsdfghjklGGN",
    "AsdfghjklEF",
    "AsdfghjklHessian",
    "CurvatureInterface",
    "EFInterface",
    "GGNInterface",
]
