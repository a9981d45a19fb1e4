"""laplace-torch's `laplace.curvature.curvlinops` path: its backend class names, which select this
project's curvature (laplace_cli/laplace/backends.py; no curvlinops library is used)."""

from laplace_cli.laplace.backends import (
    CurvatureInterface,
    CurvlinopsEF,
    CurvlinopsGGN,
    CurvlinopsHessian,
    CurvlinopsInterface,
    EFInterface,
    GGNInterface,
)

__all__ = [
    "CurvlinopsInterface",
    "CurvlinopsGGN",
    "CurvlinopsEF",
    "CurvlinopsHessian",
    "CurvatureInterface",
    "EFInterface",
    "GGNInterface",
]
