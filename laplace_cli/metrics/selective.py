"""Selective prediction: risk–coverage curves, AURC and risk at a fixed coverage, as pure functions.

A selective predictor answers only on the inputs it is most sure of. Given a *confidence* per
row (higher = more sure: max probability, or minus an entropy / mutual information / variance)
and a *loss* per row (0/1 error for classification, squared error for regression), keeping the
rows with confidence ≥ t gives a coverage (the share kept) and a selective risk (their mean
loss). Sweeping t over the distinct confidences gives the risk–coverage curve.

Ties: rows with equal confidence are kept or dropped together, so every number here is
independent of the row order. The curve has one point per distinct confidence (from the most
confident down), and

    AURC = Σ_j (c_j − c_{j−1}) · r_j

is the area under that step function (c_0 = 0). Without ties it equals the mean over k = 1..N of
the risk of the k most confident rows (Geifman et al., 2019). `risk_at_coverage` keeps exactly
k = ⌈c·N⌉ rows; when k cuts through a group of tied rows, the rows taken from that group count
with the group's mean loss (the expectation over the order of the tied rows).

All computation is in float64; aggregates are Python floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.checks import as_tensor, check_finite

__all__ = [
    "RiskCoverage",
    "aurc",
    "risk_at_coverage",
    "risk_coverage_curve",
    "selective_metrics",
]


@dataclass(frozen=True)
class RiskCoverage:
    """A risk–coverage curve: one point per distinct confidence, most confident first.

    Attributes:
        coverage: (M,) share of rows kept, increasing to 1.
        risk: (M,) mean loss of the kept rows.
        threshold: (M,) the confidence threshold t of each point (rows with confidence ≥ t kept).
    """

    coverage: Tensor
    risk: Tensor
    threshold: Tensor

    def area(self) -> float:
        """AURC: Σ_j (c_j − c_{j−1}) r_j with c_0 = 0."""
        widths = torch.diff(self.coverage, prepend=self.coverage.new_zeros(1))
        return float((widths * self.risk).sum())


def _check(confidence: Any, loss: Any) -> tuple[Tensor, Tensor]:
    c = as_tensor(confidence, "confidence").to(torch.float64).reshape(-1)
    l_ = as_tensor(loss, "loss").to(torch.float64).reshape(-1)
    if c.shape != l_.shape:
        raise BadInputError(
            f"confidence and loss must have one value per row: got {c.numel()} and {l_.numel()}"
        )
    if c.numel() == 0:
        raise BadInputError("selective prediction needs at least one row, got none")
    check_finite(c, "confidence")
    check_finite(l_, "loss")
    return c, l_


def risk_coverage_curve(confidence: Tensor, loss: Tensor) -> RiskCoverage:
    """The risk–coverage curve of `loss` when rows are kept by decreasing `confidence`.

    Args:
        confidence: (N,) higher = more sure.
        loss: (N,) per-row loss (e.g. 1 − correct, or a squared error).
    """
    c, l_ = _check(confidence, loss)
    order = torch.argsort(c, descending=True, stable=True)
    c_sorted, l_sorted = c[order], l_[order]
    n = c.numel()
    cum_loss = torch.cumsum(l_sorted, 0)
    # The last index of each run of equal confidences: ties are kept or dropped together.
    last = torch.ones(n, dtype=torch.bool)
    last[:-1] = c_sorted[1:] != c_sorted[:-1]
    kept = torch.arange(1, n + 1, dtype=torch.float64)[last]
    return RiskCoverage(coverage=kept / n, risk=cum_loss[last] / kept, threshold=c_sorted[last])


def aurc(confidence: Tensor, loss: Tensor) -> float:
    """Area under the risk–coverage curve (lower is better); see the module docstring."""
    return risk_coverage_curve(confidence, loss).area()


def risk_at_coverage(confidence: Tensor, loss: Tensor, coverage: float) -> float:
    """Mean loss of the ⌈coverage·N⌉ most confident rows (a tie group cut by the boundary
    contributes its mean loss per row taken, so the result does not depend on row order).

    Args:
        confidence: (N,) higher = more sure.
        loss: (N,) per-row loss.
        coverage: share of rows kept, in (0, 1].
    """
    c, l_ = _check(confidence, loss)
    if not (isinstance(coverage, (int, float)) and 0 < coverage <= 1):
        raise BadInputError(f"coverage must lie in (0, 1], got {coverage!r}")
    k = max(1, math.ceil(round(coverage * c.numel(), 9)))  # 0.9 * 100 must give 90, not 91
    t = torch.sort(c, descending=True).values[k - 1]  # the confidence of the k-th row
    above = c > t
    tied = c == t
    n_above = int(above.sum())
    total = l_[above].sum() + (k - n_above) * l_[tied].mean()
    return float(total / k)


#: Coverages at which `selective_metrics` reports the risk (as percentages in the key).
COVERAGES = (0.8, 0.9)


def selective_metrics(
    confidence: Tensor, loss: Tensor, *, risk_name: str = "risk", accuracy: bool = False
) -> dict[str, float]:
    """`{"aurc", "<risk_name>_at_80", "<risk_name>_at_90"}`; with `accuracy` (0/1 loss) the
    fixed-coverage entries are accuracies `acc_at_80`, `acc_at_90` (1 − risk) instead."""
    out = {"aurc": aurc(confidence, loss)}
    for cov in COVERAGES:
        risk = risk_at_coverage(confidence, loss, cov)
        key = f"{'acc' if accuracy else risk_name}_at_{round(cov * 100)}"
        out[key] = 1.0 - risk if accuracy else risk
    return out
