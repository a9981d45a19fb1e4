"""Subnetwork masks that need a fitted Laplace approximation (a layer above `laplace`)."""

from __future__ import annotations

from laplace_cli.masks.variance import largest_variance_indices

__all__ = ["largest_variance_indices"]
