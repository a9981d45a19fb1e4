"""Tests of the ``--fail-if`` gate grammar and its evaluation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from laplace_cli.core.errors import BadInputError, GateFailed
from laplace_cli.pipeline.gates import (
    Gate,
    MetricRef,
    evaluate_gates,
    parse_gate,
    parse_gates,
    raise_for_failures,
)

ROWS = {
    "map": {"acc": 0.91, "nll": 0.50, "ece": 0.080},
    "temperature": {"acc": 0.91, "nll": 0.45, "ece": 0.020},
    "laplace": {"acc": 0.90, "nll": 0.52, "ece": 0.071, "coverage_95": 0.93},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ece>0.05", Gate("ece>0.05", MetricRef("laplace", "ece"), ">", 0.05)),
        ("laplace.ece>=0.03", Gate("laplace.ece>=0.03", MetricRef("laplace", "ece"), ">=", 0.03)),
        ("acc<0.9", Gate("acc<0.9", MetricRef("laplace", "acc"), "<", 0.9)),
        (
            "nll>map.nll",
            Gate("nll>map.nll", MetricRef("laplace", "nll"), ">", 1.0, MetricRef("map", "nll")),
        ),
        (
            "  nll > 1.05 * map.nll ",
            Gate(
                "nll > 1.05 * map.nll",
                MetricRef("laplace", "nll"),
                ">",
                1.05,
                MetricRef("map", "nll"),
            ),
        ),
        ("map.ece != -1e-3", Gate("map.ece != -1e-3", MetricRef("map", "ece"), "!=", -0.001)),
        (
            "coverage_95<=.9",
            Gate("coverage_95<=.9", MetricRef("laplace", "coverage_95"), "<=", 0.9),
        ),
        ("ece==0", Gate("ece==0", MetricRef("laplace", "ece"), "==", 0.0)),
    ],
)
def test_parse_valid(text: str, expected: Gate) -> None:
    assert parse_gate(text) == expected


def test_default_row_can_be_changed() -> None:
    gate = parse_gate("ece>0.1", default_row="map")
    assert gate.left == MetricRef("map", "ece")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("ece", "expected a comparison after 'ece', got the end"),
        ("ece>", "expected a number or a metric after '>', got the end"),
        ("ece>>0.05", "expected a number or a metric after '>', got '>' at position 4"),
        ("ece=0.05", r"unexpected character '=' at position 3 \(use '=='\)"),
        ("ece=>0.05", "unexpected character '='"),
        ("0.05<ece", "expected a metric first, got '0.05'"),
        ("ece>0.05 and acc<0.9", "unexpected 'and' at position 9"),
        ("ece>1*", "expected a metric after '\\*', got the end"),
        ("ece>map.nll*2", "unexpected '\\*'"),
        ("ece>1e999", "expected a finite number, got '1e999'"),
        ("ece>map..nll", "unexpected character '.'"),
        ("a.b.c>1", "unexpected character '.'"),
        ("ece>0.05; import os", "unexpected character ';'"),
        ("__import__('os')>1", "unexpected character '\\('"),
    ],
)
def test_parse_malformed(text: str, match: str) -> None:
    with pytest.raises(BadInputError, match=match) as info:
        parse_gate(text)
    message = str(info.value)
    assert message.startswith(f"gate {text.strip()!r}:")
    assert "expected [row.]metric OP" in message  # the grammar is always shown


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(BadInputError, match="expected a string"):
        parse_gate(0.05)  # type: ignore[arg-type]


def test_parse_gates_reports_every_error() -> None:
    with pytest.raises(BadInputError) as info:
        parse_gates(["ece>0.05", "ece>>1", "acc<", "nll<2"])
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and "'ece>>1'" in lines[0] and "'acc<'" in lines[1]
    assert len(parse_gates(["ece>0.05", "acc<0.5"])) == 2


def test_evaluate_messages_and_outcomes() -> None:
    results = evaluate_gates(
        ["ece>0.05", "nll > 1.05*map.nll", "nll>map.nll", "map.ece<=0.08", "acc<0.9"], ROWS
    )
    assert [r.failed for r in results] == [True, False, True, True, False]
    assert results[0].message == "gate 'ece>0.05' failed: laplace.ece = 0.071 > 0.05"
    assert results[0].value == 0.071 and results[0].threshold == 0.05
    assert results[1].threshold == pytest.approx(0.525)
    assert results[1].message == (
        "gate 'nll > 1.05*map.nll' passed: laplace.nll = 0.52 (fails when > 1.05*map.nll = 0.525)"
    )
    assert results[2].message == "gate 'nll>map.nll' failed: laplace.nll = 0.52 > map.nll = 0.5"
    assert results[3].message == "gate 'map.ece<=0.08' failed: map.ece = 0.08 <= 0.08"
    assert results[4].message == "gate 'acc<0.9' passed: laplace.acc = 0.9 (fails when < 0.9)"
    assert results[0].to_dict() == {
        "gate": "ece>0.05",
        "value": 0.071,
        "threshold": 0.05,
        "failed": True,
        "message": results[0].message,
    }


@pytest.mark.parametrize(
    ("op", "expected"),
    [(">", False), (">=", True), ("<", False), ("<=", True), ("==", True), ("!=", False)],
)
def test_each_operator(op: str, expected: bool) -> None:
    (result,) = evaluate_gates([f"ece{op}0.071"], ROWS)
    assert result.failed is expected


def test_nan_fails_the_gate() -> None:
    rows = {"laplace": {"ece": math.nan}, "map": {"ece": 0.1}}
    (a, b) = evaluate_gates(["ece>0.05", "map.ece<laplace.ece"], rows)
    assert a.failed and "laplace.ece is NaN" in a.message
    assert b.failed and "laplace.ece is NaN" in b.message


def test_unknown_row_and_metric_list_what_is_available() -> None:
    with pytest.raises(BadInputError) as info:
        evaluate_gates(["lapalce.ece>0.1", "nlll>1", "ece>tempreature.ece"], ROWS)
    lines = str(info.value).splitlines()
    assert lines == [
        "gate 'lapalce.ece>0.1': unknown row 'lapalce'; available rows: map, temperature, laplace",
        "gate 'nlll>1': unknown metric 'nlll' in row 'laplace'; "
        "available: acc, nll, ece, coverage_95",
        "gate 'ece>tempreature.ece': unknown row 'tempreature'; "
        "available rows: map, temperature, laplace",
    ]


def test_raise_for_failures() -> None:
    raise_for_failures(evaluate_gates(["ece>0.5"], ROWS))  # passes: nothing raised
    with pytest.raises(GateFailed) as info:
        raise_for_failures(evaluate_gates(["ece>0.05", "acc<0.95", "nll>9"], ROWS))
    assert info.value.exit_code == 1
    assert str(info.value).splitlines() == [
        "gate 'ece>0.05' failed: laplace.ece = 0.071 > 0.05",
        "gate 'acc<0.95' failed: laplace.acc = 0.9 < 0.95",
    ]


@settings(max_examples=100, deadline=None)
@given(
    value=st.floats(-1e6, 1e6),
    threshold=st.floats(-1e6, 1e6),
    op=st.sampled_from([">", ">=", "<", "<=", "==", "!="]),
    spaces=st.booleans(),
)
def test_round_trip_matches_python_comparison(
    value: float, threshold: float, op: str, spaces: bool
) -> None:
    sep = " " if spaces else ""
    text = f"m.x{sep}{op}{sep}{threshold!r}"
    gate = parse_gate(text)
    assert gate.coef == threshold
    (result,) = evaluate_gates([gate], {"m": {"x": value}})
    expected = {
        ">": value > threshold,
        ">=": value >= threshold,
        "<": value < threshold,
        "<=": value <= threshold,
        "==": value == threshold,
        "!=": value != threshold,
    }[op]
    assert result.failed is expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_parse_never_crashes_with_anything_but_bad_input(text: str) -> None:
    try:
        parse_gate(text)
    except BadInputError:
        pass
