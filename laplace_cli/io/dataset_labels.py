"""Targets as labels: the checks of classification labels (one per row, or per-position label
maps of a dense-output model) and the conversion of a split's targets for its task.

Split out of :mod:`laplace_cli.io.datasets` (which re-exports these names) so that the loaders
and the label rules read apart. Loaded targets: classification labels int64 of shape (N,);
regression and binary targets float32, (N,) taken as (N, 1) (docs/data-spec.md).
"""

from __future__ import annotations

import torch

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.tabular import check_finite


class LabelError(BadInputError):
    """Targets that are not valid class labels (exit 2, as any bad input).

    A separate class so that a caller that *assumed* classification (a spec without `task:`)
    can add the fix, `task: regression`, to the message.
    """


def check_labels(y: torch.Tensor, n_classes: int | None, source: str) -> torch.Tensor:
    """Check classification labels and return them as int64 of shape (N,).

    Labels must be finite whole numbers ≥ 0 (floats such as ``2.0``, as CSV gives, are
    accepted) and, when ``n_classes`` is known, below it. A trailing axis of size 1 is dropped.

    Args:
        y: Labels, shape (N,) or (N, 1).
        n_classes: Number of classes (model outputs), or None to skip the upper bound.
        source: File / split name for messages.

    Returns:
        int64 labels of shape (N,).

    Raises:
        LabelError: Naming the first offending row and its value (a `BadInputError`).
    """
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1:
        raise LabelError(
            f"{source}: targets: expected one integer class label per row, got shape {tuple(y.shape)} "
            "(one-hot or multi-label targets need task: binary; per-position label maps of a "
            "model with dense outputs need fit --output-positions independent)"
        )
    if y.dtype == torch.bool:
        y = y.to(torch.int64)
    if y.is_floating_point():
        check_finite(y, source, "labels")
        frac = y != torch.round(y)
        if bool(frac.any()):
            i = int(frac.nonzero()[0])
            raise LabelError(
                f"{source}: row {i}: expected an integer class label, got {y[i].item()}"
            )
    elif y.is_complex():
        raise LabelError(f"{source}: targets: expected integer class labels, got {y.dtype}")
    labels = y.to(torch.int64)
    if len(labels):
        neg = labels < 0
        if bool(neg.any()):
            i = int(neg.nonzero()[0])
            raise LabelError(
                f"{source}: row {i}: expected a class label ≥ 0, got {labels[i].item()}"
            )
        if n_classes is not None:
            big = labels >= n_classes
            if bool(big.any()):
                i = int(big.nonzero()[0])
                raise LabelError(
                    f"{source}: row {i}: class label {labels[i].item()} out of range for "
                    f"{n_classes} classes (expected 0..{n_classes - 1})"
                )
    return labels


def check_label_maps(
    y: torch.Tensor, n_classes: int | None, source: str, ignore_index: int
) -> torch.Tensor:
    """Check per-position class labels (N, *S) of a model with dense outputs; int64.

    As `check_labels` per position, except that `ignore_index` (a masked position) is
    accepted wherever it occurs. Messages name the input row and the position.
    """
    if y.dim() < 2:
        raise LabelError(
            f"{source}: targets: per-position labels must be (rows, *positions), e.g. "
            f"(N, H, W) label maps, got shape {tuple(y.shape)}; one label per row needs a model "
            "with (batch, classes) outputs (drop --output-positions)"
        )
    if y.dtype == torch.bool:
        y = y.to(torch.int64)
    if y.is_complex():
        raise LabelError(f"{source}: targets: expected integer class labels, got {y.dtype}")
    if y.is_floating_point():
        check_finite(y, source, "labels")
        _first_bad(y != torch.round(y), y, source, "expected an integer class label")
    labels = y.to(torch.int64)
    valid = labels != ignore_index
    _first_bad(valid & (labels < 0), labels, source, "expected a class label ≥ 0 (or ignore_index)")
    if n_classes is not None:
        _first_bad(
            valid & (labels >= n_classes),
            labels,
            source,
            f"class label out of range for {n_classes} classes (expected 0..{n_classes - 1} "
            f"or ignore_index {ignore_index})",
        )
    return labels


def _first_bad(bad: torch.Tensor, y: torch.Tensor, source: str, what: str) -> None:
    """Raise a `LabelError` naming the first (row, position) where `bad` holds."""
    if not bool(bad.any()):
        return
    where = [int(v) for v in bad.nonzero()[0]]
    value = y[tuple(where)].item()
    raise LabelError(f"{source}: row {where[0]}, position {tuple(where[1:])}: {what}, got {value}")


def convert_targets(
    y: torch.Tensor,
    task: Likelihood | None,
    n_classes: int | None,
    source: str,
    ignore_index: int | None = None,
) -> torch.Tensor:
    if task == Likelihood.CLASSIFICATION and ignore_index is not None:
        return check_label_maps(y, n_classes, source, ignore_index)
    if task == Likelihood.CLASSIFICATION:
        return check_labels(y, n_classes, source)
    if task is None and not (y.is_floating_point() or y.dtype == torch.bool):
        y = y.to(torch.int64)  # no task known: integer targets stay integers
    else:
        y = y.to(torch.float32)
    check_finite(y, source, "targets")
    if task is None:
        return y
    if y.dim() == 1:
        y = y[:, None]  # (N,) -> (N, 1), as laplace-torch takes regression targets
    if task == Likelihood.BINARY:
        outside = (y < 0) | (y > 1)
        if bool(outside.any()):
            i = int(outside.reshape(len(y), -1).any(1).nonzero()[0])
            raise BadInputError(
                f"{source}: row {i}: binary targets must lie in [0, 1], got "
                f"{y[i].reshape(-1)[outside[i].reshape(-1)][0].item()}"
            )
    return y
