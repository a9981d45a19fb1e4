"""Grid search on dense outputs (B, C, *S): predictions and targets as one row per position.

The validation losses of `tuning.grid` are defined on rows (N, C); a dense model's positions
become those rows, and positions whose classification target is the model's `ignore_index`
are dropped, so a grid point's loss is the mean over the unmasked positions (pixel-level NLL,
Brier, ECE), whatever `output_positions` says about the training loss.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from laplace_cli.core.enums import Likelihood


def _rows(t: Tensor, n_cls: int) -> Tensor:
    """(B, C, *S) or (B, C·|S|) as (B·|S|, C)."""
    return t.reshape(t.shape[0], n_cls, -1).transpose(1, 2).reshape(-1, n_cls)


def prediction_rows(
    la: Any, out: Tensor | tuple[Tensor, Tensor], y: Tensor
) -> tuple[Tensor | tuple[Tensor, Tensor], Tensor]:
    """Probabilities (B, C, *S) — or regression (mean, variance), each (B, C, *S), or MAP
    outputs (B, C·|S|) — and prepared targets, as rows over the unmasked positions."""
    n_cls = la.output_shape[0]
    if la.likelihood == Likelihood.CLASSIFICATION:
        y_rows = y.reshape(-1)
        keep = y_rows != la.ignore_index
        y_rows = y_rows[keep]
    else:
        y_rows = _rows(y, n_cls)
        keep = None
    if isinstance(out, tuple):
        rows: Any = tuple(_rows(t, n_cls) for t in out)
        return (rows if keep is None else tuple(r[keep] for r in rows)), y_rows
    r = _rows(out, n_cls)
    return (r if keep is None else r[keep]), y_rows
