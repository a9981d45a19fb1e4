"""The `Laplace` class and its state (fit, posterior quantities, prediction, serialisation)."""

from __future__ import annotations

from laplace_cli.laplace.approximation import (  # the old module's public names
    SUPPORTED,
    Laplace,
    PosteriorMixin,
    PredictiveMixin,
)

__all__ = [
    "PosteriorMixin",
    "PredictiveMixin",
    "SUPPORTED",
    "Laplace",
]
