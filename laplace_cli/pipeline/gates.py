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

Expressions are parsed by a small tokenizer and a hand-written parser (never ``eval``).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from laplace_cli.core.errors import BadInputError, GateFailed

__all__ = [
    "DEFAULT_ROW",
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

DEFAULT_ROW = "laplace"

GRAMMAR = (
    "[row.]metric OP (number | [number*][row.]metric [+ number]) with OP one of > >= < <= == !="
)

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(
    rf"""
    (?P<space>\s+)
  | (?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ref>(?:baseline\.)?{_IDENT}(?:\.{_IDENT})?(?:\.diff_vs_{_IDENT})?(?:\.(?:lower|upper))?)
  | (?P<op>>=|<=|==|!=|>|<)
  | (?P<star>\*)
  | (?P<sign>[+-])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class MetricRef:
    """A metric of one row of the evaluation table, e.g. ``map.nll`` (row ``baseline.map``
    for ``baseline.map.nll``)."""

    row: str
    metric: str

    def __str__(self) -> str:
        return f"{self.row}.{self.metric}"


@dataclass(frozen=True)
class Gate:
    """A parsed gate ``left OP coef * right`` (or ``left OP coef`` when ``right`` is None).

    Attributes:
        text: the expression as the user wrote it (stripped).
        left: the metric compared.
        op: one of ``> >= < <= == !=``.
        coef: the number on the right, or the factor of ``right`` (1.0 for a bare metric).
        right: the metric on the right, if any.
    """

    text: str
    left: MetricRef
    op: str
    coef: float
    right: MetricRef | None = None
    offset: float = 0.0

    def refs(self) -> list[MetricRef]:
        """The metrics the gate reads, left first."""
        return [self.left] + ([self.right] if self.right is not None else [])

    def rhs_text(self) -> str:
        """The right-hand side in canonical form: ``0.05``, ``map.nll``, ``1.05*map.nll``."""
        if self.right is None:
            return f"{self.coef:.6g}"
        text = str(self.right) if self.coef == 1.0 else f"{self.coef:.6g}*{self.right}"
        if self.offset:
            text += f" {'-' if self.offset < 0 else '+'} {abs(self.offset):.6g}"
        return text


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


def _error(text: str, what: str) -> BadInputError:
    return BadInputError(f"gate {text!r}: {what}; expected {GRAMMAR}")


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            bad = text[pos]
            hint = " (use '==')" if bad == "=" else ""
            raise _error(text, f"unexpected character {bad!r} at position {pos}{hint}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group(), pos))
        pos = match.end()
    return tokens


BOUNDS = ("lower", "upper")
"""Suffixes naming an interval bound: ``ece.upper``."""


def _ref(token: str, default_row: str) -> MetricRef:
    # A bound and a paired difference are suffixes of the metric (`nll.diff_vs_map.lower` is
    # metric `nll.diff_vs_map.lower` of row laplace), so `gate_table` can hold them as columns.
    parts = token.split(".")
    suffix: list[str] = []
    if len(parts) > 1 and parts[-1] in BOUNDS:
        suffix.insert(0, parts.pop())
    if len(parts) > 1 and parts[-1].startswith("diff_vs_"):
        suffix.insert(0, parts.pop())
    metric = parts.pop()
    if any(p.startswith("diff_vs_") or p in BOUNDS for p in [*parts, metric]):
        raise BadInputError(
            f"gate operand {token!r}: expected [row.]metric[.diff_vs_ROW][.lower|.upper]"
        )
    return MetricRef(".".join(parts) or default_row, ".".join([metric, *suffix]))


def needs_intervals(gates: Iterable[Gate]) -> list[Gate]:
    """The gates that read an interval bound (``.lower`` / ``.upper``)."""
    return [
        g
        for g in gates
        if any(r.metric.rpartition(".")[2] in BOUNDS and "." in r.metric for r in g.refs())
    ]


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


def parse_gate(text: str, *, default_row: str = DEFAULT_ROW) -> Gate:
    """Parse one gate expression (grammar in the module docstring).

    Args:
        text: e.g. ``"ece>0.05"`` or ``"nll > 1.05*map.nll"``.
        default_row: row of metrics written without ``row.``.

    Raises:
        BadInputError: malformed expression; the message quotes it, says what is wrong and
            shows the grammar.
    """
    if not isinstance(text, str):
        raise BadInputError(f"gate: expected a string like 'ece>0.05', got {text!r}")
    stripped = text.strip()
    if not stripped:
        raise _error(stripped, "empty expression")
    tokens = _tokenize(stripped)
    kinds = [kind for kind, _, _ in tokens]

    def describe(i: int) -> str:
        return f"{tokens[i][1]!r} at position {tokens[i][2]}" if i < len(tokens) else "the end"

    if kinds[0] != "ref":
        raise _error(stripped, f"expected a metric first, got {describe(0)}")
    left = _ref(tokens[0][1], default_row)
    if len(tokens) < 2 or kinds[1] != "op":
        raise _error(stripped, f"expected a comparison after {tokens[0][1]!r}, got {describe(1)}")
    op = tokens[1][1]
    i = 2
    right: MetricRef | None = None
    if i < len(tokens) and kinds[i] == "number":
        coef = float(tokens[i][1])
        i += 1
        if i < len(tokens) and kinds[i] == "star":
            i += 1
            if i >= len(tokens) or kinds[i] != "ref":
                raise _error(stripped, f"expected a metric after '*', got {describe(i)}")
            right = _ref(tokens[i][1], default_row)
            i += 1
    elif i < len(tokens) and kinds[i] == "ref":
        coef = 1.0
        right = _ref(tokens[i][1], default_row)
        i += 1
    else:
        raise _error(stripped, f"expected a number or a metric after {op!r}, got {describe(i)}")
    offset = 0.0
    if right is not None and i < len(tokens):
        # `metric + 0.01` tokenizes as sign, number; `metric+0.01` as one signed number.
        if kinds[i] == "sign" and i + 1 < len(tokens) and kinds[i + 1] == "number":
            if tokens[i + 1][1][0] in "+-":
                raise _error(stripped, f"unexpected {describe(i + 1)}")
            offset = float(tokens[i + 1][1]) * (-1.0 if tokens[i][1] == "-" else 1.0)
            i += 2
        elif kinds[i] == "number" and tokens[i][1][0] in "+-":
            offset = float(tokens[i][1])
            i += 1
    if i != len(tokens):
        raise _error(stripped, f"unexpected {describe(i)}")
    if not math.isfinite(coef):
        raise _error(stripped, f"expected a finite number, got {tokens[2][1]!r}")
    if not math.isfinite(offset):
        raise _error(stripped, f"expected a finite number, got {offset!r}")
    return Gate(text=stripped, left=left, op=op, coef=coef, right=right, offset=offset)


def parse_gates(texts: Iterable[str], *, default_row: str = DEFAULT_ROW) -> list[Gate]:
    """Parse several gates, reporting every malformed one in a single error.

    Raises:
        BadInputError: one line per malformed gate.
    """
    gates: list[Gate] = []
    errors: list[str] = []
    for text in texts:
        try:
            gates.append(parse_gate(text, default_row=default_row))
        except BadInputError as exc:
            errors.append(str(exc))
    if errors:
        raise BadInputError("\n".join(errors))
    return gates


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
