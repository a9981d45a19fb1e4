"""Evaluation reports: reliability and coverage plots (PNG) and a self-contained HTML page.

matplotlib is an optional dependency (the ``plot`` extra) and is imported only when a plot is
drawn. Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, so
pyplot's global state and the user's interactive backend are never touched. Every file is
written atomically (:mod:`laplace_cli.io.atomic`: a temporary file in the destination folder,
then ``os.replace``); the folder must exist.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
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

__all__ = [
    "GLOSSARY",
    "glossary_entry",
    "plot_coverage",
    "plot_reliability",
    "write_html_report",
]

_PLOT_EXTRA = "pip install 'laplace-cli[plot]'"

_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


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


def _write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write atomically with the project's helper (temporary file + fsync + ``os.replace``)."""
    atomic_write_bytes(path, data)
    return Path(path)


def _save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return _write(path, buf.getvalue())


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


def _fmt(value: Any) -> str:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or value is None:
        return html.escape(str(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):  # float, numpy floats
        value = float(value)
        return "NaN" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, str):
        return html.escape(value)
    try:
        return html.escape(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return html.escape(str(value))


def _image_tag(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise BadInputError(
            f"{path}: expected an image ending in {', '.join(sorted(_MIME))}, got {path.suffix!r}"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read the image: {exc.strerror or exc}") from exc
    encoded = base64.b64encode(data).decode("ascii")
    alt = html.escape(path.stem)
    return f'<figure><img src="data:{mime};base64,{encoded}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


GLOSSARY: dict[str, str] = {
    # Rows of the metrics table.
    "map": "Row: the trained network as it is (MAP weights): softmax / sigmoid of its outputs; "
    "for regression its outputs with the observation noise σ² as the variance.",
    "temperature": "Row: the temperature-scaling baseline, fitted on the validation split "
    "(classification: MAP logits divided by one temperature T chosen by NLL; regression: the MAP "
    "noise variance σ² multiplied by `variance_scale`). Absent without a validation split. As a "
    "setting: that baseline's fitted T.",
    "laplace": "Row: the Laplace posterior's predictive (see pred_type and link_approx).",
    # Metrics.
    "acc": "Accuracy: fraction of rows whose most probable class is the label (binary: outputs "
    "with p > 0.5 that match the target). Higher is better.",
    "nll": "Negative log-likelihood of the targets, mean per example (regression: Gaussian with "
    "the row's variance). Lower is better.",
    "ece": "Expected calibration error: over n_bins bins of top-label confidence (binning: "
    "equal-width by default), the |accuracy − confidence| gap weighted by the bin's share of "
    "rows. Lower is better.",
    "mce": "Maximum calibration error: the largest |accuracy − confidence| gap of a non-empty "
    "bin (of the bins used by ece).",
    "aece": "Adaptive ECE: ece with n_bins equal-count bins instead of equal-width ones.",
    "brier": "Brier score: squared distance between the predicted probabilities and the one-hot "
    "label, summed over classes, mean per example (binary: mean over outputs). Lower is better.",
    "rmse": "Root mean squared error of the predictive mean, in target units.",
    "mae": "Mean absolute error of the predictive mean, in target units.",
    "crps": "Continuous ranked probability score of the Gaussian predictive, mean per example, in "
    "target units. Lower is better.",
    "coverage_": "coverage_P: fraction of targets inside the central P % interval of the Gaussian "
    "predictive; P % is calibrated, less is over-confident, more under-confident.",
    "auroc": "Area under the ROC curve telling the --ood-data rows from the scored split by an "
    "uncertainty score (classification: 1 − max probability; regression: predictive variance, "
    "which the MAP row lacks, so 0.5 there). 0.5 is chance, 1 perfect.",
    "fpr95": "Fraction of in-distribution rows flagged as out-of-distribution at the threshold "
    "that flags 95 % of the --ood-data rows. Lower is better.",
    "aurc": "Area under the risk–coverage curve: rows kept from the most confident down "
    "(classification: by max probability, risk = error rate; regression: by predictive "
    "variance, risk = squared error), the mean risk over all coverages. Lower is better; the "
    "selective table has it for every score.",
    "auroc_": "auroc_NAME / fpr95_NAME: auroc / fpr95 against the OOD set NAME (--ood-data "
    "NAME=SPEC); the OOD table has AUPR-in / AUPR-out and every score.",
    "fpr95_": "fpr95_NAME: fpr95 against the OOD set NAME (--ood-data NAME=SPEC).",
    "conformal_level": "The coverage the split conformal sets / intervals were calibrated for "
    "on the validation split (--conformal-level).",
    # Settings.
    "split": "The dataset-spec split scored (the rows of the metrics table).",
    "val_split": "The split the temperature-scaling baseline was fitted on (none: no baseline).",
    "ood_split": "The split of the --ood-data spec used for auroc / fpr95.",
    "pred_type": "Laplace predictive: glm (the network linearised around the MAP weights, a "
    "Gaussian over the outputs) or nn (Monte Carlo over sampled weights).",
    "link_approx": "How the glm predictive's Gaussian over logits becomes probabilities (probit, "
    "bridge, bridge_norm, or mc sampling). Classification and binary only: regression has no "
    "link function, so none is used (n/a).",
    "n_samples": "Monte Carlo samples drawn per row (link_approx mc or pred_type nn; unused "
    "otherwise).",
    "likelihood": "classification (softmax), regression (Gaussian noise) or binary (independent "
    "sigmoids).",
    "structure": "Structure of the posterior covariance: diag, kron (K-FAC), full or lowrank.",
    "subset": "The weights with a posterior: all, last_layer or subnetwork (the others stay at "
    "their MAP values).",
    "prior_precision": "δ, the precision of the Gaussian prior on the weights (one value, or one "
    "per layer / parameter), as fitted or tuned. Larger δ: narrower posterior.",
    "sigma_noise": "σ, the observation-noise standard deviation of the regression likelihood, in "
    "target units (1 and unused for classification and binary).",
    "temperature_la": "The posterior's temperature T set at fit (--temperature): the curvature "
    "is scaled by 1/T, so T < 1 narrows and T > 1 widens the Laplace posterior. 1 is the "
    "plain Bayesian posterior. Not the baseline's temperature.",
    "variance_scale": "Regression baseline: the factor s on the MAP noise variance σ² fitted on "
    "the validation split (the temperature row uses variance s·σ²; s > 1: the MAP noise was too "
    "small).",
    "n_test": "Rows in the scored split.",
    "n_bins": "Number of calibration bins of ece, mce and aece (--bins).",
    "binning": "Bins of ece and mce: equal-width (k/B, (k+1)/B] or equal-mass (equal counts).",
    "bootstrap": "Bootstrap intervals (--bootstrap B): resamples, confidence level, seed, "
    "interval method (percentile, basic, prediction) and the stratification (by label for "
    "classification); the intervals are in the JSON report's intervals section.",
    # Identity.
    "posterior": "The posterior file evaluated.",
    "model": "The model checkpoint the posterior names (form, path, factory).",
    "fingerprint": "SHA-256 over the model's parameters; the posterior is refused for a model "
    "with another fingerprint.",
    "data": "The dataset spec the splits come from.",
    "ood_data": "The dataset spec of the out-of-distribution inputs (for auroc / fpr95).",
    "recipe": "The recipe that ran this evaluation.",
    "created": "When this report was written (UTC).",
    "data_hash": "SHA-256 (16 hex digits) of the evaluated split's data files: two runs with "
    "the same hash scored the same rows (compared with --baseline).",
    "laplace_cli": "The laplace-cli version that wrote this report.",
    "torch": "The PyTorch version used.",
}
"""What each row, metric, setting and identity field of an evaluation report means; the HTML
page shows the entries of the terms it contains. A key ending in ``_`` covers a family
(``coverage_`` for ``coverage_50``, ``coverage_95``, ...)."""


def glossary_entry(term: str) -> str | None:
    """The glossary text of a row, metric, setting or identity field, or None if it has none."""
    if term in GLOSSARY:
        return GLOSSARY[term]
    for key, text in GLOSSARY.items():
        if key.endswith("_") and term.startswith(key):
            return text
    return None


def _glossary_html(terms: Sequence[str]) -> str:
    seen: dict[str, str] = {}
    for term in terms:
        text = glossary_entry(term)
        if text is not None and text not in seen.values():
            label = "coverage_P" if term.startswith("coverage_") else term
            seen[label] = text
    if not seen:
        return ""
    items = "".join(
        f"<dt><code>{html.escape(t)}</code></dt><dd>{html.escape(d)}</dd>" for t, d in seen.items()
    )
    return f"<h2>Glossary</h2><dl>{items}</dl>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
img { max-width: 100%; }
figure { margin: 1em 0; }
.failed { color: #b00020; font-weight: bold; }
dt { font-weight: bold; margin-top: 0.4em; }
dd { margin-left: 1.5em; }
.passed { color: #1b7f3b; }
"""


def write_html_report(
    path: str | os.PathLike[str],
    title: str,
    rows_table: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
    images: Sequence[str | os.PathLike[str]] = (),
    *,
    gates: Sequence[Any] = (),
    identity: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
    tables: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    intervals: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> Path:
    """Write one self-contained HTML page: identity, metrics, gates, settings, images, glossary.

    `tables` are more named tables shown after the metrics (`{name: {"row score": {metric:
    value}}}`: the selective, conformal and OOD tables of `pipeline.uncertainty_tables`).

    Images are embedded as base64 ``data:`` URIs, so the page has no external references.

    Args:
        path: HTML file to write (atomically).
        title: page title.
        rows_table: ``{row: {metric: value}}``; columns are the union of metric names in
            first-seen order, blank where a row lacks a metric.
        settings: evaluation settings (values shown as text, structured ones as JSON).
        images: PNG/SVG/JPEG files to embed, in order.
        gates: optional :class:`~laplace_cli.pipeline.gates.GateResult` objects (anything with
            ``message`` and ``failed``), shown with their outcome.
        identity: what was evaluated (posterior file, model, fingerprint, data spec, split,
            time, versions), shown first. A setting whose value is None is shown as "n/a".
        baseline: the report's ``baseline`` block (``evaluate --baseline``): its deltas are
            shown as a table after the metrics, with the ways it is not comparable.
        intervals: the report's bootstrap ``intervals`` (``evaluate --bootstrap``,
            ``{row: {metric: {"lower", "upper", "diff_vs_<other>": {...}}}}``): each metric
            that has one is shown as ``value [lower, upper]``, and the paired differences
            between rows in a table of their own.

    Returns:
        The path written.

    Raises:
        BadInputError: an image is missing or of an unknown type.
    """
    image_tags = [_image_tag(Path(p)) for p in images]  # a bad image fails before any work
    columns = _metric_columns(rows_table)
    metrics_html = _metrics_section_html(rows_table, columns, settings, intervals)
    settings_html = _settings_html(settings)
    identity_html = _identity_html(identity)
    terms = [*(identity or {}), *rows_table, *columns, *settings]
    glossary_html = _glossary_html([str(t) for t in terms])
    gates_html = _gates_html(gates)

    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Written by laplace-cli on {created}.</p>"
        f"{identity_html}"
        f"<h2>Metrics</h2>{metrics_html}"
        f"{_named_tables_html(tables)}"
        f"{_baseline_html(baseline)}"
        f"{gates_html}"
        f"<h2>Settings</h2><table><tbody>{settings_html}</tbody></table>"
        + (f"<h2>Figures</h2>{''.join(image_tags)}" if image_tags else "")
        + glossary_html
        + "</body></html>\n"
    )
    return _write(path, page.encode("utf-8"))


def _metrics_section_html(
    rows_table: Mapping[str, Mapping[str, Any]],
    columns: list[str],
    settings: Mapping[str, Any],
    intervals: Mapping[str, Mapping[str, Mapping[str, Any]]] | None,
) -> str:
    """The metrics table; with bootstrap intervals also what they are and the differences table."""
    metrics_html = _metrics_html(rows_table, columns, intervals)
    if intervals:
        # The confidence level is read from the settings so the note says what was computed.
        level = (settings.get("bootstrap") or {}).get("confidence")
        metrics_html += (
            "<p>[lower, upper]: bootstrap "
            + (f"{_fmt(100 * level)} % " if isinstance(level, numbers.Real) else "")
            + "interval of the test split (settings: bootstrap).</p>"
            + _differences_html(intervals)
        )
    return metrics_html


def _settings_html(settings: Mapping[str, Any]) -> str:
    """The settings table's rows; None shows as "n/a" (a setting that does not apply)."""
    return "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{'n/a' if v is None else _fmt(v)}</td></tr>"
        for k, v in settings.items()
    )


def _gates_html(gates: Sequence[Any]) -> str:
    """The gates section, each gate coloured by outcome; empty without gates."""
    if not gates:
        return ""
    items = "".join(
        f'<li class="{"failed" if g.failed else "passed"}">{html.escape(g.message)}</li>'
        for g in gates
    )
    return f"<h2>Gates</h2><ul>{items}</ul>"


def _metric_columns(rows_table: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The union of the rows' metric names, in first-seen order."""
    columns: list[str] = []
    for metrics in rows_table.values():
        for key in metrics:
            if key not in columns:
                columns.append(key)
    return columns


def _with_interval(value: Any, bounds: Any) -> str:
    """`value [lower, upper]` when `bounds` has both bounds as numbers, else `value`."""
    text = _fmt(value)
    if isinstance(bounds, Mapping):
        lo, hi = bounds.get("lower"), bounds.get("upper")
        if all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in (lo, hi)):
            text += f" [{_fmt(lo)}, {_fmt(hi)}]"
    return text


def _metrics_html(
    rows_table: Mapping[str, Mapping[str, Any]],
    columns: list[str],
    intervals: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The metrics table: one row per row, blank where a row lacks a metric; a metric with a
    bootstrap interval in `intervals` (``{row: {metric: {"lower", "upper"}}}``) shows it."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body_rows = []
    for name, metrics in rows_table.items():
        bounds = (intervals or {}).get(name) or {}
        cells = "".join(
            f'<td class="num">{_with_interval(metrics[c], bounds.get(c)) if c in metrics else ""}'
            "</td>"
            for c in columns
        )
        body_rows.append(f"<tr><th>{html.escape(str(name))}</th>{cells}</tr>")
    return (
        f"<table><thead><tr><th>row</th>{head}</tr></thead>"
        f"<tbody>{''.join(body_rows)}</tbody></table>"
    )


def _differences_html(intervals: Mapping[str, Mapping[str, Any]]) -> str:
    """Paired bootstrap differences ``row − other`` (estimate [lower, upper]) per metric."""
    diffs: dict[str, dict[str, Any]] = {}
    for row, metrics in intervals.items():
        for metric, entry in metrics.items():
            for key, diff in entry.items() if isinstance(entry, Mapping) else ():
                if key.startswith("diff_vs_") and isinstance(diff, Mapping):
                    label = f"{row} − {key[len('diff_vs_') :]}"
                    diffs.setdefault(label, {})[metric] = diff
    if not diffs:
        return ""
    columns = _metric_columns(diffs)
    point = {
        label: {m: d.get("estimate") for m, d in cells.items()} for label, cells in diffs.items()
    }
    return "<h3>Paired differences (bootstrap, same resamples)</h3>" + _metrics_html(
        point, columns, diffs
    )


def _identity_html(identity: Mapping[str, Any] | None) -> str:
    """What was evaluated, as a table (empty without an identity); None values are left out."""
    if not identity:
        return ""
    identity_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td><code>{_fmt(v)}</code></td></tr>"
        for k, v in identity.items()
        if v is not None
    )
    return f"<h2>What was evaluated</h2><table><tbody>{identity_rows}</tbody></table>"


def _baseline_html(baseline: Mapping[str, Any] | None) -> str:
    """The deltas against ``--baseline`` (this run minus the baseline), with its warnings."""
    if not baseline:
        return ""
    deltas = baseline.get("deltas", {})
    table = (
        _metrics_html(deltas, _metric_columns(deltas)) if deltas else "<p>No common metrics.</p>"
    )
    notes = "".join(
        f'<li class="failed">not comparable: {html.escape(str(m))}</li>'
        for m in baseline.get("mismatches", [])
    )
    source = html.escape(str(baseline.get("source", "")))
    return (
        f"<h2>Change since the baseline</h2><p>This run minus <code>{source}</code>.</p>"
        f"{table}" + (f"<ul>{notes}</ul>" if notes else "")
    )


#: Headings of the named tables of `write_html_report`.
TABLE_HEADINGS = {
    "selective": "Selective prediction",
    "conformal": "Conformal prediction",
    "ood": "Out-of-distribution detection",
    "ece_per_label": "ECE per label",
    "conformal_per_label": "Conformal prediction per label",
}

#: What the rows and columns of each named table are (shown below its heading).
TABLE_TITLES = {
    "selective": "Selective prediction: AURC (area under the risk–coverage curve, lower is "
    "better) and accuracy (regression: MSE) of the most confident 80 % / 90 % of rows, per row "
    "and confidence score",
    "conformal": "Split conformal prediction, calibrated on the validation split: test coverage "
    "(target: the conformal level) and mean set size / interval width, per row and score",
    "ood": "Out-of-distribution detection per OOD set, row and score: AUROC, AUPR with the "
    "in-distribution (aupr_in) or OOD (aupr_out) rows as positives, FPR at 95 % TPR",
    "ece_per_label": "ECE of each label (two-class top-label ECE), per row",
    "conformal_per_label": "Per-label split conformal (LAC, sets over {0, 1}) of each label k: "
    "test coverage_k, mean set size_k (0–2) and threshold_k, per row",
}


def _named_tables_html(tables: Mapping[str, Mapping[str, Mapping[str, Any]]] | None) -> str:
    """Each named table under a heading (its `TABLE_TITLES` text below it)."""
    parts = []
    for name, table in (tables or {}).items():
        if not table:
            continue
        caption = TABLE_TITLES.get(name)
        heading = TABLE_HEADINGS.get(name, name.replace("_", " ").capitalize())
        parts.append(
            f"<h2>{html.escape(heading)}</h2>"
            + (f"<p>{html.escape(caption)}</p>" if caption else "")
            + _metrics_html(table, _metric_columns(table))
        )
    return "".join(parts)


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
