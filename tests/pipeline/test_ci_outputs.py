"""JUnit XML and the Markdown summary: one test case per gate, failures with their values."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from laplace_cli.pipeline.ci_outputs import junit_xml, summary_markdown, write_ci_outputs

REPORT = {
    "schema_version": 1,
    "identity": {"posterior": "/p.st", "data": "/d.yaml", "split": "test", "created": "T"},
    "rows": {"map": {"ece": 0.02, "nll": 0.3}, "laplace": {"ece": 0.05, "nll": 0.25}},
    "settings": {"n_test": 360},
    "gates": [
        {
            "gate": "ece > 0.04",
            "value": 0.05,
            "threshold": 0.04,
            "failed": True,
            "message": "gate 'ece > 0.04' failed: laplace.ece = 0.05 > 0.04",
        },
        {
            "gate": "nll>map.nll",
            "value": 0.25,
            "threshold": 0.3,
            "failed": False,
            "message": "gate 'nll>map.nll' passed",
        },
    ],  # fmt: skip
    "timings": {"predict_test": 1.5},
    "baseline": {
        "source": "last",
        "mismatches": ["other data (x)"],
        "deltas": {"laplace": {"ece": 0.01}},
    },  # fmt: skip
}


def test_junit_one_case_per_gate() -> None:
    root = ET.fromstring(junit_xml(REPORT))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["ece > 0.04", "nll>map.nll"]
    failure = cases[0].find("failure")
    assert failure is not None and "laplace.ece = 0.05 > 0.04" in failure.get("message", "")
    assert "expression: ece > 0.04" in failure.text and "threshold: 0.04" in failure.text
    assert cases[1].find("failure") is None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["laplace.ece"] == "0.05"


def test_markdown_names_failed_gate_and_deltas() -> None:
    md = summary_markdown(REPORT)
    assert "❌ 1 of 2 gate(s) failed" in md
    assert "| `ece > 0.04` | ❌ failed | 0.05 | 0.04 |" in md
    assert "0.05 (+0.01)" in md  # laplace.ece with its delta vs the baseline
    assert "not comparable: other data" in md


def test_github_step_summary_appended(tmp_path: Path) -> None:
    step = tmp_path / "step.md"
    step.write_text("earlier step\n")
    written = write_ci_outputs(
        REPORT, junit=tmp_path / "j.xml", environ={"GITHUB_STEP_SUMMARY": str(step)}
    )
    assert set(written) == {"junit", "github_step_summary"}
    text = step.read_text()
    assert text.startswith("earlier step\n") and "ece > 0.04" in text
    assert write_ci_outputs(REPORT, environ={}) == {}
