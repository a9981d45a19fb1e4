"""Baselines: compare an evaluation with a previous one (``evaluate --baseline``).

A baseline is a previous ``report.json`` or a run of the history (``last``, ``best``, a date).
Its rows become ``baseline.<row>`` for the gates (``laplace.ece > baseline.laplace.ece +
0.01``); the report gets a ``baseline`` block with the deltas (this run minus the baseline) and
the ways the two runs are not comparable (other data, another split size, other settings),
which are warnings, or an error with ``strict``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laplace_cli.core.errors import BadInputError, LaplaceWarning
from laplace_cli.pipeline.evaluation import REPORT_SCHEMA_VERSION
from laplace_cli.pipeline.gates import Gate
from laplace_cli.pipeline.run_history import SELECTORS, comparable_settings, resolve_selector

__all__ = [
    "BASELINE_ROW_PREFIX",
    "Baseline",
    "BaselineWarning",
    "check_baseline_gates",
    "compare_with_baseline",
    "load_baseline",
]

BASELINE_ROW_PREFIX = "baseline."


class BaselineWarning(LaplaceWarning):
    """The baseline was computed on other data, another split size or other settings."""


@dataclass
class Baseline:
    """A previous evaluation: where it came from and its report."""

    source: str
    report: dict[str, Any]

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        return self.report.get("rows", {})

    def gate_rows(self) -> dict[str, dict[str, Any]]:
        """The rows as the gates see them: ``baseline.laplace``, ``baseline.map``, ..."""
        return {BASELINE_ROW_PREFIX + row: dict(m) for row, m in self.rows.items()}


def _check_report(report: Any, source: str) -> dict[str, Any]:
    if not isinstance(report, dict) or not isinstance(report.get("rows"), dict):
        raise BadInputError(f"--baseline {source}: not an evaluate report (no 'rows')")
    version = report.get("schema_version")
    if version != REPORT_SCHEMA_VERSION:
        raise BadInputError(
            f"--baseline {source}: report schema_version {version!r} is not supported "
            f"(this laplace-cli reads {REPORT_SCHEMA_VERSION}); re-run evaluate on the baseline "
            "checkpoint to write a current report"
        )
    return report


def load_baseline(spec: str, history: str | os.PathLike[str] | None = None) -> Baseline:
    """Read ``--baseline``: a report.json path, or ``last`` / ``best`` / an ISO date of `history`.

    Raises:
        BadInputError: unreadable or foreign file, another report schema version, no such run.
    """
    path = Path(spec)
    if path.is_file():
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInputError(f"--baseline {spec}: not a JSON report ({exc})") from exc
        return Baseline(source=str(path), report=_check_report(report, spec))
    looks_like_file = spec.endswith(".json") or os.sep in spec
    if looks_like_file:
        raise BadInputError(f"--baseline {spec}: file not found; expected {SELECTORS}")
    run = resolve_selector(history, spec)
    source = f"{spec} (history run {run['id']}, {run['created']})"
    return Baseline(source=source, report=_check_report(run["report"], source))


def check_baseline_gates(gates: Iterable[Gate], baseline: Baseline | None) -> None:
    """Refuse, before any work, gates that read a baseline that is absent or lacks the metric."""
    errors = []
    for gate in gates:
        for ref in gate.refs():
            if not ref.row.startswith(BASELINE_ROW_PREFIX):
                continue
            if baseline is None:
                errors.append(
                    f"gate {gate.text!r} reads {ref}: give --baseline REPORT.json|last|best|DATE"
                )
                continue
            rows = baseline.gate_rows()
            if ref.row not in rows:
                have = ", ".join(rows) or "none"
                errors.append(f"gate {gate.text!r}: the baseline has no row {ref.row!r} ({have})")
            elif rows[ref.row].get(ref.metric) is None:
                have = ", ".join(k for k, v in rows[ref.row].items() if v is not None)
                errors.append(
                    f"gate {gate.text!r}: the baseline has no metric {ref.metric!r} in row "
                    f"{ref.row!r}; available: {have}"
                )
    if errors:
        raise BadInputError("; ".join(errors))


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def deltas(
    rows: Mapping[str, Mapping[str, Any]], base_rows: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, float]]:
    """This run minus the baseline, for every numeric metric both have in the same row."""
    out: dict[str, dict[str, float]] = {}
    for row, metrics in rows.items():
        for metric, value in metrics.items():
            a, b = _number(value), _number(base_rows.get(row, {}).get(metric))
            if a is not None and b is not None:
                out.setdefault(row, {})[metric] = a - b
    return out


def mismatches(current: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    """How the baseline's evaluation differs from this one (data, split size, settings)."""
    out = []
    cur_id, base_id = current.get("identity", {}), base.get("identity", {})
    a, b = cur_id.get("data_hash"), base_id.get("data_hash")
    if a != b:
        out.append(f"other data (data hash {b} vs {a})")
    a, b = current.get("settings", {}).get("n_test"), base.get("settings", {}).get("n_test")
    if a != b:
        out.append(f"another split size (n_test {b} vs {a})")
    a = comparable_settings(current.get("settings", {}))
    b = comparable_settings(base.get("settings", {}))
    diff = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
    if diff:
        shown = ", ".join(f"{k}: {b.get(k)!r} vs {a.get(k)!r}" for k in diff)
        out.append(f"other settings ({shown})")
    return out


def compare_with_baseline(
    current: Mapping[str, Any], baseline: Baseline, *, strict: bool = False
) -> dict[str, Any]:
    """The report's ``baseline`` block; warns (or, `strict`, refuses) when not comparable.

    Args:
        current: this run's report dict (``identity`` with ``data_hash``, ``settings``, ``rows``).

    Raises:
        BadInputError: `strict` and the baseline is not comparable.
    """
    problems = mismatches(current, baseline.report)
    if problems and strict:
        raise BadInputError(
            f"--strict-baseline: the baseline {baseline.source} is not comparable: "
            + "; ".join(problems)
        )
    for problem in problems:
        warnings.warn(f"baseline {baseline.source}: {problem}", BaselineWarning, stacklevel=2)
    base_id = baseline.report.get("identity", {})
    return {
        "source": baseline.source,
        "created": base_id.get("created"),
        "fingerprint": base_id.get("fingerprint"),
        "data_hash": base_id.get("data_hash"),
        "comparable": not problems,
        "mismatches": problems,
        "rows": baseline.rows,
        "deltas": deltas(current.get("rows", {}), baseline.rows),
    }


def refuse_other_data(baseline: Baseline, data_path: str | os.PathLike[str], split: str) -> None:
    """`--strict-baseline`, before any work: refuse a baseline whose data hash differs from
    that of `split` of `data_path` (split size and settings are compared after the run).

    Raises:
        BadInputError: the baseline was computed on other data.
    """
    from laplace_cli.pipeline.run_history import data_hash

    theirs = baseline.report.get("identity", {}).get("data_hash")
    ours = data_hash(data_path, split)
    if theirs != ours:
        raise BadInputError(
            f"--strict-baseline: the baseline {baseline.source} is not comparable: other data "
            f"(data hash {theirs} vs {ours})"
        )
