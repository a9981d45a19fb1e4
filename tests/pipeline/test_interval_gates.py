"""Gates on bootstrap bounds and paired differences: `ece.upper`, `nll.diff_vs_map.lower`."""

from __future__ import annotations

from pathlib import Path

import pytest

from laplace_cli.core.errors import BadInputError
from laplace_cli.pipeline.gates import (
    MetricRef,
    check_intervals_available,
    evaluate_gates,
    gate_table,
    needs_intervals,
    parse_gate,
    parse_gates,
)

ROWS = {
    "map": {"nll": 0.50, "ece": 0.080},
    "laplace": {"nll": 0.52, "ece": 0.071},
}
INTERVALS = {
    "map": {
        "nll": {
            "lower": 0.4,
            "upper": 0.6,
            "diff_vs_laplace": {"estimate": -0.02, "lower": -0.05, "upper": 0.01},
        },
        "ece": {
            "lower": 0.05,
            "upper": 0.11,
            "diff_vs_laplace": {"estimate": 0.009, "lower": -0.01, "upper": 0.03},
        },
    },
    "laplace": {
        "nll": {
            "lower": 0.45,
            "upper": 0.61,
            "diff_vs_map": {"estimate": 0.02, "lower": 0.004, "upper": 0.05},
        },
        "ece": {
            "lower": 0.04,
            "upper": 0.09,
            "diff_vs_map": {"estimate": -0.009, "lower": -0.03, "upper": 0.01},
        },
    },
}


@pytest.mark.parametrize(
    ("text", "left"),
    [
        ("ece.upper > 0.05", MetricRef("laplace", "ece.upper")),
        ("map.ece.lower>0.05", MetricRef("map", "ece.lower")),
        ("laplace.nll.diff_vs_map.lower > 0", MetricRef("laplace", "nll.diff_vs_map.lower")),
        ("nll.diff_vs_map.upper < 0", MetricRef("laplace", "nll.diff_vs_map.upper")),
        ("nll.diff_vs_map > 0", MetricRef("laplace", "nll.diff_vs_map")),
        ("baseline.laplace.ece > 0", MetricRef("baseline.laplace", "ece")),
    ],
)
def test_parse_bounds_and_differences(text: str, left: MetricRef) -> None:
    assert parse_gate(text).left == left


@pytest.mark.parametrize(
    "text", ["a.b.c>1", "ece.diff_vs_map.diff_vs_x>1", "ece.lower.upper.lower>1"]
)
def test_other_dotted_names_are_refused(text: str) -> None:
    with pytest.raises(BadInputError, match="unexpected|expected .row.]metric"):
        parse_gate(text)


def test_gates_read_bounds_and_differences() -> None:
    table = gate_table(ROWS, INTERVALS)
    gates = [
        "laplace.ece.upper > 0.05",  # 0.09 > 0.05: fails
        "laplace.nll.diff_vs_map.lower > 0",  # 0.004 > 0: fails
        "ece.diff_vs_map.upper > 0.02",  # 0.01: passes
        "nll.diff_vs_map > 0.03",  # point difference 0.02: passes
        "map.ece.lower > laplace.ece.upper",  # 0.05 > 0.09: passes
    ]
    results = evaluate_gates(parse_gates(gates), table)
    assert [r.failed for r in results] == [True, True, False, False, False]
    assert [r.value for r in results] == [0.09, 0.004, 0.01, pytest.approx(0.02), 0.05]
    assert results[4].threshold == 0.09
    # Differences are computed both ways from the rows, with or without intervals.
    plain = gate_table(ROWS)
    assert plain["map"]["ece.diff_vs_laplace"] == pytest.approx(0.009)
    assert "ece.upper" not in plain["laplace"]


def test_a_bound_without_intervals_is_refused_with_the_flag_to_use() -> None:
    gates = parse_gates(["ece.upper > 0.05", "acc < 0.9", "nll.diff_vs_map > 0"])
    assert [g.text for g in needs_intervals(gates)] == ["ece.upper > 0.05"]
    check_intervals_available(gates, bootstrap=True)
    check_intervals_available(parse_gates(["nll.diff_vs_map > 0"]), bootstrap=False)
    with pytest.raises(BadInputError, match=r"--bootstrap B"):
        check_intervals_available(gates, bootstrap=False)
    # At evaluation time too (a bound of a metric without an interval, e.g. fpr95).
    with pytest.raises(BadInputError, match="no interval for laplace.ece.upper"):
        evaluate_gates(parse_gates(["ece.upper > 0.05"]), gate_table(ROWS))


def test_recipes_take_the_bootstrap_settings(tmp_path) -> None:
    from laplace_cli.pipeline.recipes import _bootstrap_settings, validate_recipe

    digits = Path(__file__).resolve().parents[2] / "sample_models" / "digits_mlp"
    raw = {
        "model": {"path": str(digits / "model.pt2")},
        "data": str(digits / "data.yaml"),
        "stages": ["fit", "evaluate"],
        "evaluate": {
            "bootstrap": 500,
            "confidence": 0.9,
            "interval_method": "prediction",
            "bins": 10,
            "binning": "equal-mass",
            "fail_if": ["ece.upper > 0.05"],
        },
    }
    recipe = validate_recipe(raw, "r.yaml", tmp_path)
    settings = _bootstrap_settings(recipe.section("evaluate"), 3)
    assert settings.to_dict() == {
        "n_resamples": 500,
        "confidence": 0.9,
        "seed": 3,
        "method": "prediction",
    }
    raw["evaluate"]["binning"] = "quantile"
    with pytest.raises(BadInputError, match="evaluate.binning"):
        validate_recipe(raw, "r.yaml", tmp_path)
    raw["evaluate"]["binning"] = "equal-width"
    del raw["evaluate"]["bootstrap"]
    with pytest.raises(BadInputError, match=r"evaluate.fail_if: .*needs bootstrap intervals"):
        validate_recipe(raw, "r.yaml", tmp_path)
