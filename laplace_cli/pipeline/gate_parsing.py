"""Parsing ``--fail-if`` gate expressions into :class:`Gate` objects (never ``eval``).

The grammar and the meaning of each operand are in :mod:`laplace_cli.pipeline.gates`, which
evaluates the parsed gates and re-exports these names. A small regex tokenizer and a
hand-written parser; every malformed expression is bad input whose message shows the grammar.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from laplace_cli.core.errors import BadInputError

__all__ = [
    "BOUNDS",
    "DEFAULT_ROW",
    "GRAMMAR",
    "Gate",
    "MetricRef",
    "needs_intervals",
    "parse_gate",
    "parse_gates",
]

DEFAULT_ROW = "laplace"

GRAMMAR = (
    "[row.]metric OP (number | [number*][row.]metric [+ number]) with OP one of > >= < <= == !="
)

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


def parse_gate(text: str, *, default_row: str = DEFAULT_ROW) -> Gate:
    """Parse one gate expression (grammar: :mod:`laplace_cli.pipeline.gates`).

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
