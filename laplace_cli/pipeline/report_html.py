"""The evaluation report as one self-contained HTML page.

Identity, metrics (with bootstrap intervals), the named uncertainty tables, the baseline's
deltas, gates, settings, embedded figures and the glossary
(:mod:`laplace_cli.pipeline.report_glossary`). Written atomically
(:mod:`laplace_cli.io.atomic`); re-exported by :mod:`laplace_cli.pipeline.report`.
"""

from __future__ import annotations

import base64
import html
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
from laplace_cli.pipeline.report_glossary import glossary_html

__all__ = ["TABLE_HEADINGS", "TABLE_TITLES", "write_html_report"]


_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


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
    glossary = glossary_html([str(t) for t in terms])
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
        + glossary
        + "</body></html>\n"
    )
    # atomically: temporary file + fsync + os.replace
    atomic_write_bytes(path, page.encode("utf-8"))
    return Path(path)


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
    "(target: the conformal level) and mean set size / interval width, per row and score; "
    "band_lower / band_upper: the 95 % range of the test coverage of a correct procedure at "
    "these split sizes; resplit_coverage ± resplit_sd: mean and sd of the test coverage over "
    "random re-splits (1000 in evaluate) of the pooled validation + test rows (one split is "
    "noisy; the mean checks the procedure and should be close to the level)",
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
