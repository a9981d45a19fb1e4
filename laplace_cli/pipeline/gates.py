"""Evaluation gates: ``--fail-if`` expressions checked against the rows of ``laplace evaluate``.

Grammar (whitespace between tokens is ignored)::

    gate    := operand OP rhs
    rhs     := number | [number "*"] operand [("+" | "-") number]
    operand := [["baseline" "."] row "."] metric ["." "diff_vs_" row] ["." bound]
                                                   (row defaults to "laplace")
    bound   := "lower" | "upper"                   (needs evaluate --bootstrap B)
    OP      := ">" | ">=" | "<" | "<=" | "==" | "!="
    number  := ["+" | "-"] digits ["." digits] [("e" | "E") ["+" | "-"] digits]
    row, metric := identifier ([A-Za-z_][A-Za-z0-9_]*)

Examples: ``ece>0.05``, ``laplace.ece >= 0.03``, ``acc<0.9``, ``nll>map.nll``,
``nll > 1.05*map.nll``, ``laplace.ece > baseline.laplace.ece + 0.01`` (``baseline.<row>`` rows
come from ``evaluate --baseline``: a previous report's metrics). A gate *fails* when its expression is true (``--fail-if``), and also
when either side is NaN, since then the condition cannot be shown to hold. ``==`` and ``!=``
compare floats exactly.

Noise-aware operands (:func:`gate_table` adds them to the rows): ``nll.diff_vs_map`` is
``laplace.nll − map.nll``; with bootstrap intervals (``evaluate --bootstrap B``),
``ece.upper`` / ``ece.lower`` are the bounds of the interval of ``laplace.ece`` and
``nll.diff_vs_map.lower`` the lower bound of the paired difference's interval, e.g.
``laplace.ece.upper > 0.05`` or ``laplace.nll.diff_vs_map.lower > 0``.

Expressions are parsed by a small tokenizer and a hand-written parser (never ``eval``):
:mod:`laplace_cli.pipeline.gate_parsing`, re-exported here.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from laplace_cli.core.errors import BadInputError, GateFailed

# Parsing lives in its own module; its names stay importable from here.
from laplace_cli.pipeline.gate_parsing import (
    BOUNDS,
    DEFAULT_ROW,
    GRAMMAR,
    Gate,
    MetricRef,
    needs_intervals,
    parse_gate,
    parse_gates,
)

__all__ = [
    "BOUNDS",
    "DEFAULT_ROW",
    "GRAMMAR",
    "Gate",
    "GateResult",
    "MetricRef",
    "check_intervals_available",
    "evaluate_gates",
    "gate_table",
    "needs_intervals",
    "parse_gate",
    "parse_gates",
    "raise_for_failures",
]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate.

    Attributes:
        text: the gate expression.
        value: the left metric's value.
        threshold: the right-hand side's value.
        failed: whether the gate failed (its expression is true, or a side is NaN).
        message: one line for people, e.g.
            ``gate 'ece>0.05' failed: laplace.ece = 0.071 > 0.05``.
    """

    text: str
    value: float
    threshold: float
    failed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the ``gates`` list of ``evaluate --json``."""
        return {
            "gate": self.text,
            "value": self.value,
            "threshold": self.threshold,
            "failed": self.failed,
            "message": self.message,
        }


def check_intervals_available(gates: Iterable[Gate], bootstrap: bool) -> None:
    """Refuse, before any work, gates on interval bounds when no intervals will be computed.

    Raises:
        BadInputError: one line naming the gates and the flag that computes intervals.
    """
    bounded = needs_intervals(gates)
    if bounded and not bootstrap:
        names = ", ".join(repr(g.text) for g in bounded)
        raise BadInputError(
            f"gate {names} reads an interval bound (.lower/.upper), which needs bootstrap "
            "intervals: pass --bootstrap B (e.g. --bootstrap 1000), or gate on the metric itself"
        )


def gate_table(
    rows: Mapping[str, Mapping[str, Any]],
    intervals: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The rows with the noise-aware columns gates can name, ready for :func:`evaluate_gates`.

    Adds ``<metric>.diff_vs_<other>`` (this row's value minus the other's, for the metrics
    both have) and, from ``intervals`` (``{row: {metric: {"lower", "upper", "diff_vs_<other>":
    {"estimate", "lower", "upper"}}}}``, as ``metrics.bootstrap.intervals_from_distributions``
    returns), ``<metric>.lower/upper`` and ``<metric>.diff_vs_<other>.lower/upper``. Rows whose
    name holds a dot (``baseline.laplace``) get no differences.
    """
    table: dict[str, dict[str, Any]] = {name: dict(metrics) for name, metrics in rows.items()}
    plain = [name for name in rows if "." not in name]
    for name in plain:
        for other in plain:
            if other == name:
                continue
            for metric, value in rows[name].items():
                other_value = rows[other].get(metric)
                if isinstance(value, (int, float)) and isinstance(other_value, (int, float)):
                    table[name][f"{metric}.diff_vs_{other}"] = float(value) - float(other_value)
    for name, metrics in (intervals or {}).items():
        for metric, entry in metrics.items():
            for key, value in entry.items():
                if isinstance(value, Mapping):  # a paired difference's estimate and bounds
                    for bound in BOUNDS:
                        table[name][f"{metric}.{key}.{bound}"] = value[bound]
                else:
                    table[name][f"{metric}.{key}"] = value
    return table


def _lookup(
    gate: Gate, ref: MetricRef, rows: Mapping[str, Mapping[str, Any]], errors: list[str]
) -> float:
    if ref.row not in rows:
        available = ", ".join(rows) or "none"
        errors.append(f"gate {gate.text!r}: unknown row {ref.row!r}; available rows: {available}")
        return math.nan
    row = rows[ref.row]
    if ref.metric not in row or row[ref.metric] is None:
        # Noise-aware columns (`ece.upper`, `nll.diff_vs_map`) are not listed: the grammar names them.
        available = ", ".join(k for k, v in row.items() if v is not None and "." not in k) or "none"
        if ref.metric.rpartition(".")[2] in BOUNDS and "." in ref.metric:
            errors.append(
                f"gate {gate.text!r}: no interval for {ref}: bounds need evaluate --bootstrap B "
                f"and exist for the metrics {available}"
            )
            return math.nan
        errors.append(
            f"gate {gate.text!r}: unknown metric {ref.metric!r} in row {ref.row!r}; "
            f"available: {available}"
        )
        return math.nan
    try:
        return float(row[ref.metric])
    except (TypeError, ValueError):
        errors.append(f"gate {gate.text!r}: {ref} is not a number: {row[ref.metric]!r}")
        return math.nan


def evaluate_gates(
    gates: Sequence[Gate | str], rows: Mapping[str, Mapping[str, Any]]
) -> list[GateResult]:
    """Evaluate gates against a table of metrics; a gate fails when its expression is true.

    Args:
        gates: parsed gates, or expressions to parse (with the default row ``laplace``).
        rows: ``{row: {metric: value}}``, e.g. ``{"map": {...}, "laplace": {...}}``.

    Returns:
        One :class:`GateResult` per gate, in order.

    Raises:
        BadInputError: a gate names a row or metric that is not in ``rows`` (all such problems
            reported at once, listing what is available).
    """
    parsed = [g if isinstance(g, Gate) else parse_gate(g) for g in gates]
    errors: list[str] = []
    values: list[tuple[float, float]] = []
    for gate in parsed:
        value = _lookup(gate, gate.left, rows, errors)
        if gate.right is None:
            threshold = gate.coef
        else:
            threshold = gate.coef * _lookup(gate, gate.right, rows, errors) + gate.offset
        values.append((value, threshold))
    if errors:
        raise BadInputError("\n".join(errors))

    results = []
    for gate, (value, threshold) in zip(parsed, values, strict=True):
        lhs = f"{gate.left} = {value:.6g}"
        rhs = gate.rhs_text()
        if gate.right is not None:
            rhs += f" = {threshold:.6g}"
        if math.isnan(value) or math.isnan(threshold):
            failed = True
            nan_side = str(gate.left) if math.isnan(value) else gate.rhs_text()
            message = f"gate {gate.text!r} failed: {nan_side} is NaN ({lhs}, {rhs})"
        elif _OPS[gate.op](value, threshold):
            failed = True
            message = f"gate {gate.text!r} failed: {lhs} {gate.op} {rhs}"
        else:
            failed = False
            message = f"gate {gate.text!r} passed: {lhs} (fails when {gate.op} {rhs})"
        results.append(
            GateResult(
                text=gate.text, value=value, threshold=threshold, failed=failed, message=message
            )
        )
    return results


def raise_for_failures(results: Iterable[GateResult]) -> None:
    """Raise :class:`~laplace_cli.core.errors.GateFailed` (exit 1) listing every failed gate, if any."""
    failed = [r.message for r in results if r.failed]
    if failed:
        raise GateFailed("\n".join(failed))
