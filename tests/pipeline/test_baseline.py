"""Baselines: gates reading baseline.<row>.<metric>, deltas, comparability, bad baselines."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from laplace_cli.core.errors import BadInputError
from laplace_cli.pipeline.baseline import (
    Baseline,
    BaselineWarning,
    check_baseline_gates,
    compare_with_baseline,
    deltas,
    load_baseline,
)
from laplace_cli.pipeline.evaluation import REPORT_SCHEMA_VERSION
from laplace_cli.pipeline.gates import evaluate_gates, parse_gate, parse_gates
from laplace_cli.pipeline.run_history import record_run, resolve_selector


def _report(ece: float, nll: float, *, n_test: int = 100, data_hash: str = "d0", **settings):
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "identity": {"data_hash": data_hash, "created": "2026-01-01T02:00:00Z", "split": "test"},
        "rows": {"map": {"ece": ece + 0.1, "nll": nll}, "laplace": {"ece": ece, "nll": nll}},
        "settings": {
            "split": "test",
            "pred_type": "glm",
            "n_test": n_test,
            "prior_precision": [1.0],
            **settings,
        },  # fmt: skip
        "gates": [],
        "timings": {},
    }


def test_gate_with_offset_against_baseline_rows() -> None:
    base = Baseline("b.json", _report(0.03, 0.5))
    rows = {**_report(0.045, 0.5)["rows"], **base.gate_rows()}
    gate = "laplace.ece > baseline.laplace.ece + 0.01"
    [r] = evaluate_gates([gate], rows)
    assert r.failed and r.threshold == pytest.approx(0.04)
    [r] = evaluate_gates(["laplace.ece > baseline.laplace.ece + 0.02"], rows)
    assert not r.failed and r.threshold == pytest.approx(0.05)
    [r] = evaluate_gates(["ece >= 2*baseline.map.ece - 0.2"], rows)  # 2 * 0.13 - 0.2 = 0.06
    assert not r.failed and r.threshold == pytest.approx(0.06)
    g = parse_gate("ece>baseline.laplace.ece+0.01")  # no spaces: '+0.01' is one signed number
    assert g.offset == 0.01 and g.right is not None and g.right.row == "baseline.laplace"


def test_gate_refs_checked_before_work() -> None:
    gates = parse_gates(["laplace.ece > baseline.laplace.ecee + 0.01"])
    with pytest.raises(BadInputError, match="no metric 'ecee' in row 'baseline.laplace'"):
        check_baseline_gates(gates, Baseline("b.json", _report(0.03, 0.5)))
    with pytest.raises(BadInputError, match="give --baseline"):
        check_baseline_gates(gates, None)
    with pytest.raises(BadInputError, match="no row 'baseline.temperature'"):
        check_baseline_gates(
            parse_gates(["ece > baseline.temperature.ece"]), Baseline("b", _report(0.1, 1))
        )
    check_baseline_gates(parse_gates(["ece > map.ece"]), None)  # no baseline needed


def test_deltas_and_comparability() -> None:
    cur, base = _report(0.05, 0.7), _report(0.03, 0.5)
    d = deltas(cur["rows"], base["rows"])
    for row in ("map", "laplace"):
        for m in ("ece", "nll"):
            assert d[row][m] == pytest.approx(cur["rows"][row][m] - base["rows"][row][m])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        block = compare_with_baseline(cur, Baseline("b", base))
    assert block["comparable"] and block["mismatches"] == []
    other = _report(0.03, 0.5, n_test=90, data_hash="d1", pred_type="nn")
    with pytest.warns(BaselineWarning) as caught:
        block = compare_with_baseline(cur, Baseline("b", other))
    text = " ".join(str(w.message) for w in caught)
    assert "other data" in text and "another split size" in text and "pred_type" in text
    assert not block["comparable"] and len(block["mismatches"]) == 3
    # tuned hyperparameters differ from checkpoint to checkpoint: not a mismatch
    assert compare_with_baseline(cur, Baseline("b", _report(0.0, 0.0, prior_precision=[9.0])))[
        "comparable"
    ]
    with pytest.raises(BadInputError, match="--strict-baseline.*other data"):
        compare_with_baseline(cur, Baseline("b", other), strict=True)


def test_bad_baseline_files(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**_report(0.1, 1.0), "schema_version": 0}))
    with pytest.raises(BadInputError, match="schema_version 0 is not supported"):
        load_baseline(str(old))
    unversioned = tmp_path / "unversioned.json"
    unversioned.write_text(
        json.dumps({k: v for k, v in _report(0.1, 1).items() if k != "schema_version"})
    )
    with pytest.raises(BadInputError, match="schema_version None"):
        load_baseline(str(unversioned))
    with pytest.raises(BadInputError, match="file not found"):
        load_baseline(str(tmp_path / "absent.json"))
    with pytest.raises(BadInputError, match="needs --history"):
        load_baseline("last")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_report(0.1, 1.0)))
    assert load_baseline(str(good)).rows["laplace"]["ece"] == 0.1


def test_history_selectors(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    nights = [
        ("2026-01-01T02:00:00Z", 0.6),
        ("2026-01-02T02:00:00Z", 0.4),
        ("2026-01-03T02:00:00Z", 0.9),
    ]
    for created, nll in nights:
        rep = _report(0.02, nll)
        rep["identity"]["created"] = created
        record_run(db, rep)
    assert resolve_selector(db, "last")["id"] == 3
    assert resolve_selector(db, "best")["id"] == 2  # lowest laplace.nll
    assert resolve_selector(db, "2026-01-01")["id"] == 1
    assert resolve_selector(db, "2026-01-02T12:00:00Z")["id"] == 2
    assert load_baseline("best", db).rows["laplace"]["nll"] == 0.4
    with pytest.raises(BadInputError, match="no run"):
        resolve_selector(db, "2025-12-31")
    with pytest.raises(BadInputError, match="expected a report.json, 'last'"):
        resolve_selector(db, "yesterday")
