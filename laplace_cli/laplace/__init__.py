"""The `Laplace` class and its state (fit, posterior quantities, prediction, serialisation), and
laplace-torch's flavour classes over it (flavours*.py; `Laplace(...)` builds the matching one)."""

from __future__ import annotations

from laplace_cli.curvature.backends import set_backend_engine
from laplace_cli.laplace import backend_objects, flavour_table
from laplace_cli.laplace.approximation import (  # the old module's public names
    SUPPORTED,
    Laplace,
    PosteriorMixin,
    PredictiveMixin,
    set_flavour_resolver,
)

set_flavour_resolver(flavour_table.flavour_for)
# backend instances (laplace_cli.curvature) compute with this package's engine
set_backend_engine(backend_objects)

__all__ = [
    "PosteriorMixin",
    "PredictiveMixin",
    "SUPPORTED",
    "Laplace",
]
