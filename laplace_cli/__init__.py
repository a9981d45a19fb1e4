"""laplace-cli: post-hoc Laplace approximations for PyTorch models, as a library and a CLI."""

from __future__ import annotations

__version__ = "0.1.0"
