"""laplace-torch's `laplace.curvature` path: its backend class names (`CurvlinopsGGN`, `AsdlEF`,
`GGNInterface`, ...), which select this project's curvature, and its submodule paths (asdl,
backpack, curvlinops, asdfghjkl). The classes live in laplace_cli/laplace/backends.py, above the
engine their instances compute with; this package sits with the other laplace-torch paths, a
layer above that. The engine's own curvature code is laplace_cli/fisher/."""

from laplace_cli.laplace import backends
from laplace_cli.laplace.backends import *  # noqa: F403 - laplace-torch's backend names

__all__ = list(backends.__all__)
