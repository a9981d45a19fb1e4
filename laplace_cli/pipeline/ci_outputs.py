"""Outputs CI systems read: a JUnit XML file (one test case per gate) and a Markdown summary.

The Markdown summary is also appended to ``$GITHUB_STEP_SUMMARY`` when that variable is set
(GitHub Actions shows it on the run's page). Both are built from the report dict alone.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from laplace_cli.io.atomic import atomic_write_bytes

__all__ = ["junit_xml", "summary_markdown", "write_ci_outputs"]

_SUITE = "laplace evaluate"


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "" if v is None else str(v)
    return "NaN" if isinstance(v, float) and math.isnan(v) else f"{v:.6g}"


def junit_xml(report: Mapping[str, Any]) -> bytes:
    """JUnit XML: one ``<testcase>`` per gate, a ``<failure>`` with the expression and values
    for each failed gate; the metrics go in the suite's ``<properties>``."""
    gates = list(report.get("gates", []))
    failures = sum(bool(g.get("failed")) for g in gates)
    timings = report.get("timings", {})
    total = sum(v for v in timings.values() if isinstance(v, (int, float)))
    suites = ET.Element("testsuites", name=_SUITE, tests=str(len(gates)), failures=str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=_SUITE,
        tests=str(len(gates)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{total:.3f}",
        timestamp=str(report.get("identity", {}).get("created", "")),
    )
    props = ET.SubElement(suite, "properties")
    for key in ("posterior", "fingerprint", "data", "data_hash", "split"):
        value = report.get("identity", {}).get(key)
        if value is not None:
            ET.SubElement(props, "property", name=key, value=str(value))
    for row, metrics in report.get("rows", {}).items():
        for metric, value in metrics.items():
            ET.SubElement(props, "property", name=f"{row}.{metric}", value=_num(value))
    for gate in gates:
        case = ET.SubElement(suite, "testcase", classname="laplace.gates", name=str(gate["gate"]))
        if gate.get("failed"):
            failure = ET.SubElement(
                case, "failure", message=str(gate.get("message", "")), type="GateFailed"
            )
            failure.text = (
                f"expression: {gate['gate']}\n"
                f"value: {_num(gate.get('value'))}\n"
                f"threshold: {_num(gate.get('threshold'))}\n"
                f"{gate.get('message', '')}"
            )
        else:
            ET.SubElement(case, "system-out").text = str(gate.get("message", ""))
    ET.indent(suites)
    text = ET.tostring(suites, encoding="unicode")  # no declaration: written once below
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n").encode("utf-8")


def _md(text: Any) -> str:
    """A table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_markdown(report: Mapping[str, Any]) -> str:
    """A Markdown summary: verdict, gates, metrics (with deltas vs the baseline), baseline notes."""
    gates = list(report.get("gates", []))
    failed = [g for g in gates if g.get("failed")]
    identity = report.get("identity", {})
    lines = ["## laplace evaluate", ""]
    if failed:
        lines.append(f"**❌ {len(failed)} of {len(gates)} gate(s) failed**")
    elif gates:
        lines.append(f"**✅ all {len(gates)} gate(s) passed**")
    else:
        lines.append("No gates were checked.")
    lines.append("")
    what = [f"`{identity[k]}`" for k in ("posterior", "data") if identity.get(k)]
    if what:
        lines += [
            f"Evaluated {' on '.join(what)} (split `{identity.get('split', '?')}`, "
            f"n = {report.get('settings', {}).get('n_test', '?')}).",
            "",
        ]
    if gates:
        lines += ["| gate | result | value | threshold |", "|---|---|---|---|"]
        for g in gates:
            verdict = "❌ failed" if g.get("failed") else "✅ passed"
            lines.append(
                f"| `{_md(g['gate'])}` | {verdict} | {_num(g.get('value'))} "
                f"| {_num(g.get('threshold'))} |"
            )
        lines.append("")
    base = report.get("baseline") or {}
    deltas = base.get("deltas", {})
    rows = report.get("rows", {})
    columns: list[str] = []
    for metrics in rows.values():
        columns.extend(m for m in metrics if m not in columns)
    if rows:
        lines += ["| row | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for row, metrics in rows.items():
            cells = []
            for c in columns:
                cell = _num(metrics.get(c))
                d = deltas.get(row, {}).get(c)
                if d is not None:
                    cell += f" ({d:+.3g})"
                cells.append(cell)
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    if base:
        lines.append(f"Deltas in brackets: this run minus the baseline {base.get('source')}.")
        for problem in base.get("mismatches", []):
            lines.append(f"- ⚠️ the baseline is not comparable: {problem}")
        lines.append("")
    return "\n".join(lines)


def write_ci_outputs(
    report: Mapping[str, Any],
    *,
    junit: str | os.PathLike[str] | None = None,
    summary_md: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Write the JUnit file and the Markdown summary asked for; append the summary to
    ``$GITHUB_STEP_SUMMARY`` when set. Returns the paths written, by kind."""
    environ = os.environ if environ is None else environ
    written: dict[str, str] = {}
    if junit is not None:
        atomic_write_bytes(junit, junit_xml(report))
        written["junit"] = str(junit)
    step_summary = environ.get("GITHUB_STEP_SUMMARY")
    if summary_md is None and not step_summary:
        return written
    text = summary_markdown(report)
    if summary_md is not None:
        atomic_write_bytes(summary_md, text.encode("utf-8"))
        written["summary_md"] = str(summary_md)
    if step_summary:
        # GitHub's file collects every step's summary: append, never replace.
        with open(Path(step_summary), "a", encoding="utf-8") as f:
            f.write(text + "\n")
        written["github_step_summary"] = step_summary
    return written
