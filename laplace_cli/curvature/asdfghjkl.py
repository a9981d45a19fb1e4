"""laplace-torch's `laplace.curvature.asdfghjkl` path: its backend class names, which select this
project's curvature (laplace_cli/laplace/backends.py; no asdfghjkl library is used)."""

from laplace_cli.laplace.backends import (
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
