"""laplace-torch's `laplace.curvature.backpack` path: its backend class names, which select this
project's curvature (laplace_cli/laplace/backends.py; no backpack library is used)."""

from laplace_cli.laplace.backends import (
    BackPackEF,
    BackPackGGN,
    BackPackInterface,
    CurvatureInterface,
    EFInterface,
    GGNInterface,
)

__all__ = [
    "BackPackInterface",
    "BackPackGGN",
    "BackPackEF",
    "CurvatureInterface",
    "EFInterface",
    "GGNInterface",
]
