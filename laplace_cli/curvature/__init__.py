"""Curvature: the Monte-Carlo Fisher (mc_fisher), the optional ASDL path (asdl), and
laplace-torch's backend class names (backends), which select this project's curvature."""

from laplace_cli.curvature import backends
from laplace_cli.curvature.backends import *  # noqa: F403 - laplace-torch's backend names

__all__ = list(backends.__all__)
