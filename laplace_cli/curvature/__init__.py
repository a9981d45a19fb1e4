"""Curvature: the Monte-Carlo Fisher (mc_fisher), the optional ASDL path (asdl), and
laplace-torch's backend class names (backends), which select this project's curvature."""

from laplace_cli.curvature.backends import (
    AsdfghjklEF,
    AsdfghjklGGN,
    AsdfghjklHessian,
    AsdfghjklInterface,
    AsdlEF,
    AsdlGGN,
    AsdlHessian,
    AsdlInterface,
    BackPackEF,
    BackPackGGN,
    BackPackInterface,
    CurvatureInterface,
    CurvlinopsEF,
    CurvlinopsGGN,
    CurvlinopsHessian,
    CurvlinopsInterface,
    EFInterface,
    GGNInterface,
)

__all__ = [
    "CurvatureInterface",
    "GGNInterface",
    "EFInterface",
    "AsdlInterface",
    "AsdlGGN",
    "AsdlEF",
    "AsdlHessian",
    "BackPackInterface",
    "BackPackGGN",
    "BackPackEF",
    "CurvlinopsInterface",
    "CurvlinopsGGN",
    "CurvlinopsEF",
    "CurvlinopsHessian",
    "AsdfghjklInterface",
    "AsdfghjklGGN",
    "AsdfghjklEF",
    "AsdfghjklHessian",
]
