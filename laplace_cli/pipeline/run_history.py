"""The run history's logic: what a run record holds, baseline selectors, export and trend plots.

Storage (SQLite, append-only, schema versions) is :mod:`laplace_cli.io.history`. A run is keyed
by the checkpoint fingerprint, the data hash (:func:`data_hash`), the settings hash
(:func:`settings_hash`: the evaluation settings without the tuned hyperparameters) and the time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.history import HistoryRecord, append_run, read_runs

__all__ = [
    "HYPERPARAMETER_KEYS",
    "comparable_settings",
    "data_hash",
    "export_csv",
    "export_json",
    "filter_metrics",
    "plot_trend",
    "record_run",
    "resolve_selector",
    "settings_hash",
]

#: Settings that are tuned or fitted per checkpoint (stored as hyperparameters, not compared).
HYPERPARAMETER_KEYS = (
    "prior_precision",
    "sigma_noise",
    "temperature_la",
    "temperature",
    "variance_scale",
)
#: Settings that describe the outcome rather than how it was computed (not compared).
_NOT_SETTINGS = ("n_test", "temperature_warning")

#: `--baseline best` picks the run with the lowest value of this metric.
BEST_METRIC = ("laplace", "nll")

SELECTORS = "a report.json, 'last', 'best' or an ISO date (2026-01-31 or 2026-01-31T02:00:00Z)"


def comparable_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings two runs must share for their metrics to be comparable."""
    drop = (*HYPERPARAMETER_KEYS, *_NOT_SETTINGS)
    return {k: v for k, v in sorted(settings.items()) if k not in drop}


def settings_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of :func:`comparable_settings` as canonical JSON."""
    text = json.dumps(comparable_settings(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_hash(data_path: str | os.PathLike[str], split: str) -> str:
    """SHA-256 (first 16 hex digits) of the evaluated split's content.

    A file split hashes its data file(s); a callable split hashes the callable's name, its
    keyword arguments and, for a ``file.py:function`` callable, that file. The split's name and
    the spec's other keys (batch size, ...) do not count: the same rows give the same hash.
    """
    from laplace_cli.io.datasets import load_dataset_spec

    spec = load_dataset_spec(data_path).split(split)
    h = hashlib.sha256()
    files: list[Path] = []
    if spec.callable is not None:
        h.update(spec.callable.encode())
        h.update(json.dumps(spec.kwargs, sort_keys=True, default=str).encode())
        file_part = spec.callable.split(":")[0]
        if file_part.endswith(".py"):
            path = Path(file_part)
            files.append(path if path.is_absolute() else Path(data_path).parent / path)
    else:
        if spec.path is not None:
            files.append(spec.path)
        if isinstance(spec.y, Path):
            files.append(spec.y)
        h.update(json.dumps([spec.x, str(spec.y), spec.text], default=str).encode())
    for path in files:
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def record_run(history: str | os.PathLike[str], report: Mapping[str, Any]) -> int:
    """Append an evaluation report (the `report.json` dict) to the history; return its id."""
    identity = report.get("identity", {})
    settings = report.get("settings", {})
    record = HistoryRecord(
        created=str(identity.get("created") or _now()),
        fingerprint=identity.get("fingerprint"),
        data_hash=identity.get("data_hash"),
        settings_hash=settings_hash(settings),
        split=identity.get("split"),
        n_test=settings.get("n_test"),
        posterior=identity.get("posterior"),
        failed=any(g.get("failed") for g in report.get("gates", [])),
        report=report,
        metrics=report.get("rows", {}),
        hyperparameters={k: settings[k] for k in HYPERPARAMETER_KEYS if k in settings},
        timings=report.get("timings", {}),
        gates=report.get("gates", []),
    )
    return append_run(history, record)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_date(text: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def iso_utc(text: str, what: str) -> str:
    """An ISO date or time as the history's UTC string (`--since 2026-01-31`)."""
    when = _parse_date(text)
    if when is None:
        raise BadInputError(f"{what} {text!r}: expected an ISO date such as 2026-01-31")
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def resolve_selector(history: str | os.PathLike[str] | None, selector: str) -> dict[str, Any]:
    """The history run that ``--baseline last|best|DATE`` names (with its report).

    ``last``: the newest run. ``best``: the run with the lowest ``laplace.nll``. A date: the
    newest run created on that day (``2026-01-31``) or at or before that time
    (``2026-01-31T02:00:00Z``).

    Raises:
        BadInputError: no ``--history``, an empty history, or no run matching.
    """
    if history is None:
        raise BadInputError(f"--baseline {selector}: needs --history DB (or give a report.json)")
    runs = read_runs(history, with_report=True)
    if not runs:
        raise BadInputError(f"--baseline {selector}: the history {history} has no runs yet")
    if selector == "last":
        return runs[-1]
    if selector == "best":
        row, metric = BEST_METRIC
        scored = [r for r in runs if r["metrics"].get(row, {}).get(metric) is not None]
        if not scored:
            raise BadInputError(f"--baseline best: no run in {history} has {row}.{metric}")
        return min(scored, key=lambda r: r["metrics"][row][metric])
    when = _parse_date(selector)
    if when is None:
        raise BadInputError(f"--baseline {selector!r}: expected {SELECTORS}")
    if len(selector) == 10:  # a day: the newest run of that day
        end = when + timedelta(days=1)
        pick = [r for r in runs if when <= (_parse_date(r["created"]) or when) < end]
    else:
        pick = [r for r in runs if (_parse_date(r["created"]) or when) <= when]
    if not pick:
        raise BadInputError(f"--baseline {selector}: no run in {history} on or before that date")
    return pick[-1]


def filter_metrics(runs: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[str]:
    """Check ``row.metric`` names (a bare metric means ``laplace.<metric>``); return them whole.

    Raises:
        BadInputError: a name no run has (the message lists those that exist).
    """
    have = sorted({f"{r}.{m}" for run in runs for r, ms in run["metrics"].items() for m in ms})
    out = []
    for name in metrics:
        full = name if "." in name else f"laplace.{name}"
        if runs and full not in have:
            raise BadInputError(f"--metric {name}: no run has it; available: {', '.join(have)}")
        out.append(full)
    return out


def _columns(runs: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None) -> list[str]:
    if metrics:
        return list(metrics)
    cols: list[str] = []
    for run in runs:
        for row, ms in run["metrics"].items():
            cols.extend(f"{row}.{m}" for m in ms if f"{row}.{m}" not in cols)
    return cols


def _value(run: Mapping[str, Any], name: str) -> Any:
    row, _, metric = name.rpartition(".")
    return run["metrics"].get(row, {}).get(metric)


_KEYS = ("id", "created", "fingerprint", "data_hash", "settings_hash", "split", "n_test", "failed")


def export_csv(runs: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None) -> str:
    """One line per run: its keys, then one column per ``row.metric`` (blank where missing)."""
    cols = _columns(runs, metrics)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*_KEYS, *cols])
    for run in runs:
        values = [_value(run, c) for c in cols]
        writer.writerow([run[k] for k in _KEYS] + ["" if v is None else repr(v) for v in values])
    return buf.getvalue()


def export_json(
    runs: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None
) -> list[dict]:
    """The runs as JSON-ready dicts (metrics restricted to ``metrics`` when given)."""
    out = []
    for run in runs:
        item = {k: run[k] for k in run if k != "report"}
        if metrics:
            item["metrics"] = {m: _value(run, m) for m in metrics}
        out.append(item)
    return out


def plot_trend(
    runs: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    metrics: Sequence[str] | None = None,
) -> Path:
    """A PNG with one panel per metric: its value per run in time order, failed runs marked.

    Default metrics: ``laplace.nll``, ``laplace.ece`` and ``laplace.acc`` (classification) or
    ``laplace.rmse`` and ``laplace.crps`` (regression), those that the runs have.
    """
    from laplace_cli.io.atomic import atomic_write_bytes
    from laplace_cli.pipeline.report import figure_class

    make = figure_class()
    if not runs:
        raise BadInputError("trend plot: the history has no runs")
    if not metrics:
        wanted = ("laplace.nll", "laplace.ece", "laplace.acc", "laplace.rmse", "laplace.crps")
        metrics = [m for m in wanted if any(_value(r, m) is not None for r in runs)]
        metrics = metrics or _columns(runs, None)[:3]
    fig = make(figsize=(7, 2.2 * len(metrics)), constrained_layout=True)
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    x = list(range(1, len(runs) + 1))
    labels = [f"#{r['id']} {str(r['created'])[:19].replace('T', ' ')}" for r in runs]
    for ax, name in zip(axes, metrics):
        ys = [_value(r, name) for r in runs]
        ys = [float("nan") if v is None else v for v in ys]
        ax.plot(x, ys, marker="o", color="C0")
        bad = [(xi, yi) for xi, yi, r in zip(x, ys, runs) if r["failed"]]
        if bad:
            ax.scatter(*zip(*bad), color="C3", zorder=3, s=60, label="a gate failed")
            if ax is axes[0]:
                ax.legend(loc="best", fontsize="small")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.set_xticks(x)
        ax.set_xticklabels(labels if ax is axes[-1] else [], rotation=30, ha="right", fontsize=7)
    axes[0].set_title(f"history: {len(runs)} runs")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def select_runs(
    history: str | os.PathLike[str],
    *,
    checkpoint: str | None = None,
    since: str | None = None,
    until: str | None = None,
    metrics: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], list[str]]:
    """`(runs, metric columns)` of `laplace history`: the runs kept by the filters, oldest
    first, and the ``row.metric`` names asked for (checked against the runs)."""
    runs = read_runs(
        history,
        fingerprint=checkpoint,
        since=iso_utc(since, "--since") if since else None,
        until=iso_utc(until, "--until") if until else None,
    )
    return runs, filter_metrics(runs, metrics)
