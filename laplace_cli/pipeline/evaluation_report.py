"""The evaluation's result and its outputs: the JSON report (its layout versioned), the
reliability / coverage plot and the HTML page."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laplace_cli.core.enums import Likelihood

__all__ = [
    "IDENTITY_KEYS",
    "REPORT_SCHEMA_VERSION",
    "EvaluationResult",
    "add_identity",
    "jsonable",
    "save_evaluation_outputs",
]


#: Version of the report's JSON layout (`schema_version`; docs/report.schema.json). Bump it when
#: a key is renamed or removed or a value changes meaning; adding a key keeps it.
REPORT_SCHEMA_VERSION = 1


@dataclass
class EvaluationResult:
    rows: dict[str, dict[str, float]]
    settings: dict[str, Any]
    gates: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    plot_inputs: dict[str, Any] = field(default_factory=dict)
    #: What was evaluated: data spec, split(s), time and versions from `evaluate`; the
    #: posterior file, model reference and fingerprint added by `save_evaluation_outputs`.
    identity: dict[str, Any] = field(default_factory=dict)
    #: The comparison with `--baseline` (source, mismatches, deltas); empty without one.
    baseline: dict[str, Any] = field(default_factory=dict)
    #: The selective / conformal / OOD / per-label tables (`pipeline.uncertainty_tables`):
    #: `{table: {"row score": {metric: value}}}`; only the tables that apply.
    tables: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    #: Risk–coverage curves ("row score" → `metrics.selective.RiskCoverage`) for the plot.
    curves: dict[str, Any] = field(default_factory=dict)
    #: Bootstrap intervals (`evaluate(bootstrap_settings=...)`): `{row: {metric: {"lower",
    #: "upper", "diff_vs_<other>": {"estimate", "lower", "upper"}}}}`; empty without them.
    intervals: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(g["failed"] for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema_version": REPORT_SCHEMA_VERSION,
            "identity": self.identity,
            "rows": self.rows,
            "settings": self.settings,
            "gates": self.gates,
            "timings": self.timings,
        }
        if self.baseline:
            out["baseline"] = self.baseline
        if self.tables:
            out["tables"] = self.tables
        if self.intervals:
            out["intervals"] = self.intervals
        return out


IDENTITY_KEYS = ("posterior", "model", "fingerprint", "recipe")
"""Keys of `save_evaluation_outputs`'s `extra` copied into the report's identity block."""


def add_identity(result: EvaluationResult, extra: dict[str, Any] | None) -> dict[str, Any]:
    """Put the posterior / model / fingerprint / recipe of `extra` first in `result.identity`."""
    head = {k: (extra or {}).get(k) for k in IDENTITY_KEYS if (extra or {}).get(k) is not None}
    if "posterior" in head:
        head["posterior"] = str(Path(head["posterior"]).resolve())
    rest = {k: v for k, v in result.identity.items() if k not in head}
    result.identity = {**head, **rest}
    return result.identity


def save_evaluation_outputs(
    result: EvaluationResult,
    likelihood: Likelihood,
    *,
    report: str | Path | None = None,
    plot: str | Path | None = None,
    html: str | Path | None = None,
    extra: dict[str, Any] | None = None,
    history: str | Path | None = None,
) -> dict[str, str]:
    """Write the JSON report, the reliability / coverage plot and the HTML page that were asked for.

    With `history` (a run history file) the HTML page also shows its trend plot.

    The HTML page embeds the plot; without `plot` it draws one into a temporary file first.
    Returns the paths written, by kind.
    """
    import json

    from laplace_cli.io.atomic import atomic_write_bytes

    written: dict[str, str] = {}
    add_identity(result, extra)  # the JSON report, the HTML page and --json all show it
    payload = {**result.to_dict(), **(extra or {})}
    if report is not None:
        atomic_write_bytes(report, (json.dumps(_jsonable(payload), indent=2) + "\n").encode())
        written["report"] = str(report)

    n_bins = result.settings.get("n_bins", 15)  # the bins of the report's ece (equal-width)

    def draw(path: str | Path) -> None:
        _draw_plot(result, likelihood, path, n_bins)

    if plot is not None:
        draw(plot)
        written["plot"] = str(plot)
    if html is not None:
        _write_evaluation_html(result, html, plot, draw, extra, history)
        written["html"] = str(html)
    return written


def _draw_plot(
    result: EvaluationResult, likelihood: Likelihood, path: str | Path, n_bins: int
) -> None:
    """The coverage plot (regression) or the reliability diagram (classification) at `path`."""
    from laplace_cli.pipeline.report import plot_coverage, plot_reliability

    if likelihood == Likelihood.REGRESSION:
        plot_coverage(result.plot_inputs, path, title="coverage of central intervals")
    elif likelihood == Likelihood.CLASSIFICATION:
        plot_reliability(result.plot_inputs, path, n_bins=n_bins, title="reliability")
    else:  # binary / multi-label: each label a two-class problem, all labels pooled
        plot_reliability(
            result.plot_inputs, path, n_bins=n_bins, title="reliability (labels pooled)"
        )


def _write_evaluation_html(
    result: EvaluationResult,
    html: str | Path,
    plot: str | Path | None,
    draw: Callable[[str | Path], None],
    extra: dict[str, Any] | None,
    history: str | Path | None,
) -> None:
    """The HTML page; the images it embeds are drawn into a temporary folder that it outlives."""
    import tempfile
    from types import SimpleNamespace

    from laplace_cli.pipeline.report import write_html_report

    images: list[str | Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        if plot is not None:
            images.append(plot)
        else:
            img = Path(tmp) / "plot.png"
            draw(img)
            images.append(img)
        if result.curves:
            from laplace_cli.pipeline.report import plot_risk_coverage

            images.append(plot_risk_coverage(result.curves, Path(tmp) / "risk_coverage.png"))
        if history is not None:
            from laplace_cli.io.history import read_runs
            from laplace_cli.pipeline.run_history import plot_trend

            images.append(plot_trend(read_runs(history), Path(tmp) / "trend.png"))
        settings = {**result.settings, **(extra or {}).get("posterior_info", {})}
        gates = [SimpleNamespace(text=g["gate"], **g) for g in result.gates]
        write_html_report(
            html,
            "laplace evaluate",
            result.rows,
            settings,
            images,
            gates=gates,
            identity=result.identity,
            baseline=result.baseline or None,
            tables=result.tables,
            intervals=result.intervals or None,
        )


def _jsonable(obj: Any) -> Any:
    import math

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def jsonable(obj: Any) -> Any:
    """`obj` as the JSON report writes it: non-finite floats as None, paths as strings."""
    return _jsonable(obj)
