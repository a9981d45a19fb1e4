"""laplace-torch's `laplace.curvature.asdl` path: its backend class names, which select this
project's curvature (laplace_cli/laplace/backends.py), and the ASDL adapter's functions
(laplace_cli/fisher/asdl.py, used with the string ``backend="asdl"``)."""

from laplace_cli.fisher.asdl import asdl_accumulate, check_asdl, import_asdl
from laplace_cli.laplace.backends import (
    AsdlEF,
    AsdlGGN,
    AsdlHessian,
    AsdlInterface,
    CurvatureInterface,
    EFInterface,
    GGNInterface,
)

__all__ = [
    "asdl_accumulate",
    "check_asdl",
    "import_asdl",
    "AsdlInterface",
    "AsdlGGN",
    "AsdlEF",
    "AsdlHessian",
    "CurvatureInterface",
    "EFInterface",
    "GGNInterface",
]
