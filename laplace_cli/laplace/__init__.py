"""The `Laplace` class and its state (fit, posterior quantities, prediction, serialisation), and
laplace-torch's flavour classes over it (flavours*.py; `Laplace(...)` builds the matching one)."""

from __future__ import annotations

from laplace_cli.laplace import flavour_table
from laplace_cli.laplace.approximation import (  # the old module's public names
    SUPPORTED,
    Laplace,
    PosteriorMixin,
    PredictiveMixin,
    set_flavour_resolver,
)

set_flavour_resolver(flavour_table.flavour_for)

__all__ = [
    "PosteriorMixin",
    "PredictiveMixin",
    "SUPPORTED",
    "Laplace",
]
