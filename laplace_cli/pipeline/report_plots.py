"""Evaluation report plots (PNG): reliability diagrams, interval coverage, risk–coverage curves.

matplotlib is an optional dependency (the ``plot`` extra) and is imported only when a plot is
drawn. Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, so
pyplot's global state and the user's interactive backend are never touched. Files are written
atomically (:mod:`laplace_cli.io.atomic`); the folder must exist. Re-exported by
:mod:`laplace_cli.pipeline.report`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.atomic import atomic_write_bytes
from laplace_cli.metrics.classification import (
    CoverageCurve,
    ReliabilityBins,
    coverage_curve,
    reliability_bins,
)

__all__ = ["figure_class", "plot_coverage", "plot_reliability", "plot_risk_coverage"]

_PLOT_EXTRA = "pip install 'laplace-cli[plot]'"


def figure_class() -> Any:
    """Import matplotlib lazily; a missing install is bad input with the fix in the message."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise BadInputError(
            f"plotting needs matplotlib, which is not installed: {_PLOT_EXTRA}"
        ) from exc

    def make(**kwargs: Any) -> Any:
        fig = Figure(**kwargs)
        FigureCanvasAgg(fig)  # render with Agg whatever backend the user has selected
        return fig

    return make


def _save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    # atomically: temporary file + fsync + os.replace
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _check_rows(rows: Mapping[str, Any], what: str) -> None:
    if not isinstance(rows, Mapping) or not rows:
        raise BadInputError(
            f"{what}: expected a non-empty mapping of row name to data, got {rows!r}"
        )


def _as_bins(name: str, value: Any, n_bins: int) -> ReliabilityBins:
    if isinstance(value, ReliabilityBins):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return reliability_bins(value[0], value[1], n_bins)
    raise BadInputError(
        f"plot_reliability: row {name!r}: expected (probs, labels) or ReliabilityBins, got "
        f"{type(value).__name__}"
    )


def plot_reliability(
    rows: Mapping[str, tuple[Tensor, Tensor] | ReliabilityBins],
    path: str | os.PathLike[str],
    *,
    n_bins: int = 15,
    title: str | None = None,
) -> Path:
    """Draw top-label reliability diagrams of several rows side by side into one PNG.

    Each panel shows per-bin accuracy (bars) against the diagonal of perfect calibration, the
    gap to the mean confidence of each bin (hatched), the ECE in the title, and below it the
    number of samples per bin. Empty bins are left blank.

    Args:
        rows: row name (``map``, ``temperature``, ``laplace``) to ``(probs, labels)`` or
            precomputed :class:`~laplace_cli.metrics.classification.ReliabilityBins`.
        path: PNG file to write (atomically).
        n_bins: number of equal-width bins when computing from probabilities.
        title: optional figure title.

    Returns:
        The path written.

    Raises:
        BadInputError: matplotlib is missing (naming the ``plot`` extra) or a row is malformed.
    """
    figure_cls = figure_class()
    _check_rows(rows, "plot_reliability")
    bins = {name: _as_bins(name, value, n_bins) for name, value in rows.items()}

    n = len(bins)
    # Fixed margins in inches instead of bbox_inches="tight", which renders the figure twice.
    width, height = 4.0 * n + 0.9, 5.0 + (0.3 if title else 0.0)
    fig = figure_cls(figsize=(width, height))
    grid = fig.add_gridspec(
        2,
        n,
        height_ratios=(3, 1),
        hspace=0.08,
        wspace=0.12,
        left=0.75 / width,
        right=1.0 - 0.15 / width,
        bottom=0.55 / height,
        top=1.0 - (0.75 if title else 0.4) / height,
    )
    first_count = None
    for col, (name, b) in enumerate(bins.items()):
        ax = fig.add_subplot(grid[0, col])
        # Count panels share one y scale so rows of different sizes compare at a glance.
        ax_count = fig.add_subplot(grid[1, col], sharex=ax, sharey=first_count)
        first_count = first_count or ax_count
        _draw_reliability_panel(ax, ax_count, name, b, first=col == 0)
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


def _draw_reliability_panel(ax: Any, ax_count: Any, name: str, b: Any, *, first: bool) -> None:
    """One row's panel: accuracy bars and their gap to confidence, and the counts below."""
    edges = b.edges.detach().cpu().double()
    lefts = edges[:-1].tolist()
    widths = (edges[1:] - edges[:-1]).tolist()
    nonempty = (b.count > 0).cpu().tolist()
    acc = [a if ok else 0.0 for a, ok in zip(b.accuracy.cpu().tolist(), nonempty, strict=True)]
    conf = [c if ok else 0.0 for c, ok in zip(b.confidence.cpu().tolist(), nonempty, strict=True)]
    keep = [i for i, ok in enumerate(nonempty) if ok]

    ax.bar(
        [lefts[i] for i in keep],
        [acc[i] for i in keep],
        width=[widths[i] for i in keep],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    # The gap bar spans from accuracy to confidence: red hatching shows miscalibration.
    ax.bar(
        [lefts[i] for i in keep],
        [conf[i] - acc[i] for i in keep],
        bottom=[acc[i] for i in keep],
        width=[widths[i] for i in keep],
        align="edge",
        color="tab:red",
        alpha=0.3,
        hatch="//",
        edgecolor="tab:red",
        linewidth=0.5,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{name}  (ECE {b.ece():.4f}, N={b.n_samples})")
    ax.tick_params(labelbottom=False)
    if first:
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left", fontsize="small")
    else:
        ax.tick_params(labelleft=False)

    ax_count.bar(lefts, b.count.cpu().tolist(), width=widths, align="edge", color="gray")
    ax_count.set_xlabel("confidence")
    if first:
        ax_count.set_ylabel("count")
    else:
        ax_count.tick_params(labelleft=False)


def _as_curve(name: str, value: Any, levels: Sequence[float] | None) -> CoverageCurve:
    if isinstance(value, CoverageCurve):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return coverage_curve(value[0], value[1], value[2], levels)
    raise BadInputError(
        f"plot_coverage: row {name!r}: expected (mean, var, y) or CoverageCurve, got "
        f"{type(value).__name__}"
    )


def plot_coverage(
    rows: Mapping[str, tuple[Tensor, Tensor, Tensor] | CoverageCurve],
    path: str | os.PathLike[str],
    *,
    levels: Sequence[float] | None = None,
    title: str | None = None,
) -> Path:
    """Plot nominal versus empirical coverage of central intervals, one line per row, to PNG.

    A calibrated regressor follows the diagonal; curves below it are over-confident (intervals
    too narrow), above it under-confident.

    Args:
        rows: row name to ``(mean, var, y)`` (total predictive variance) or a precomputed
            :class:`~laplace_cli.metrics.classification.CoverageCurve`.
        path: PNG file to write (atomically).
        levels: nominal levels when computing from predictions (default 0.05 ... 0.95, 0.99).
        title: optional figure title.

    Returns:
        The path written.

    Raises:
        BadInputError: matplotlib is missing (naming the ``plot`` extra) or a row is malformed.
    """
    figure_cls = figure_class()
    _check_rows(rows, "plot_coverage")
    curves = {name: _as_curve(name, value, levels) for name, value in rows.items()}

    fig = figure_cls(figsize=(5.0, 5.0))
    fig.subplots_adjust(left=0.14, right=0.96, bottom=0.11, top=0.92)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect")
    for name, curve in curves.items():
        ax.plot(
            curve.nominal.cpu().tolist(), curve.empirical.cpu().tolist(), marker="o", label=name
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage")
    ax.set_aspect("equal")
    ax.legend(loc="upper left")
    ax.set_title(title or "interval coverage")
    return _save_figure(fig, path)


def plot_risk_coverage(
    curves: Mapping[str, Any], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Risk–coverage curves (`metrics.selective.RiskCoverage`), one line per "row score", to PNG.

    A lower curve is a better selective predictor; its area is the AURC of the legend."""
    figure_cls = figure_class()
    _check_rows(curves, "plot_risk_coverage")
    fig = figure_cls(figsize=(9.0, 4.5))
    fig.subplots_adjust(left=0.09, right=0.6, bottom=0.12, top=0.9)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        risk = curve.risk.cpu().tolist()
        # Risk r_j holds over (c_{j-1}, c_j], from coverage 0 (the area is the AURC); rows that
        # all tie (a constant-variance MAP) give one flat step.
        ax.step(
            [0.0, *curve.coverage.cpu().tolist()],
            [risk[0], *risk],
            where="pre",
            label=f"{name} ({curve.area():.3g})",
        )
    ax.set_xlim(0, 1)
    ax.set_xlabel("coverage (share of rows kept, most confident first)")
    ax.set_ylabel("selective risk (error rate; regression: MSE)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="AURC")
    ax.set_title(title or "risk–coverage")
    return _save_figure(fig, path)
