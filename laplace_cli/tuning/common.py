"""What tuning reports besides its result: `TuningWarning`, attributed to the caller's code, and
short renderings of tensors for messages.

Split out of `laplace_cli.tuning.api` (which re-exports `TuningWarning`) so that the marglik and grid
search modules share them.
"""

from __future__ import annotations

import sys
import warnings

from torch import Tensor

from laplace_cli.core.errors import LaplaceWarning


class TuningWarning(LaplaceWarning):
    """A tuning result to look at: optimum on the grid's edge, no convergence, a loss that cannot choose."""


def warn(message: str) -> None:
    """A TuningWarning attributed to the caller's code (the first frame outside laplace_cli)."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2: the frame that called warn
    while frame is not None and frame.f_globals.get("__name__", "").startswith("laplace_cli"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, TuningWarning, stacklevel=level)


def short_tensor(t: Tensor) -> str:
    flat = t.reshape(-1)
    if flat.numel() <= 4:
        return "[" + ", ".join(f"{float(v):.4g}" for v in flat) + "]"
    return f"[{float(flat.min()):.4g} .. {float(flat.max()):.4g}] ({flat.numel()} values)"
