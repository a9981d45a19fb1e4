"""Evaluation metrics as pure functions on tensors, and temperature scaling."""

from __future__ import annotations

from laplace_cli.metrics import classification
from laplace_cli.metrics.classification import *  # noqa: F403 - the old module's public names

__all__ = list(classification.__all__)
