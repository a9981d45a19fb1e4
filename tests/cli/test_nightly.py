"""A nightly CI job in three nights: history, baseline gates, JUnit, Markdown, trend, schema.

Night 1 evaluates a good checkpoint, night 2 the same one against `--baseline last` (passes),
night 3 a checkpoint with noised weights (its baseline gate fails: exit 1, shown in the JUnit
file and the Markdown summary). The report validates against docs/report.schema.json.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from laplace_cli.cli.app import app

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_models" / "digits_mlp"
FACTORY = f"{REPO / 'sample_models' / 'models.py'}:digits_mlp"
GATE = "laplace.nll > baseline.laplace.nll + 0.05"

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: object, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def _fit(checkpoint: Path, out: Path) -> None:
    result = invoke(
        "fit", checkpoint, "--model-factory", FACTORY, "--data", SAMPLE / "data.yaml",
        "--subset", "last_layer", "--structure", "diag", "-o", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("nightly")
    state = torch.load(SAMPLE / "model.pt")
    g = torch.Generator().manual_seed(0)
    noised = {k: v + 0.6 * v.std() * torch.randn(v.shape, generator=g) for k, v in state.items()}
    torch.save(noised, tmp / "noised.pt")
    _fit(SAMPLE / "model.pt", tmp / "good.st")
    _fit(tmp / "noised.pt", tmp / "bad.st")
    db = tmp / "runs.db"
    out: dict[Any, Any] = {"tmp": tmp, "db": db}
    for night, post in ((1, "good.st"), (2, "good.st"), (3, "bad.st")):
        args = ["evaluate", "-p", tmp / post, "--data", SAMPLE / "data.yaml", "--history", db,
                "--report", tmp / f"report{night}.json", "--junit", tmp / f"junit{night}.xml",
                "--summary-md", tmp / f"summary{night}.md", "--quiet"]  # fmt: skip
        if night > 1:
            args += ["--baseline", "last", "--fail-if", GATE, "--html", tmp / f"night{night}.html"]
        env = {"GITHUB_STEP_SUMMARY": str(tmp / "step.md")} if night == 3 else None
        out[night] = invoke(*args, env=env)
    return out


def test_three_nights(nights: dict[str, Any]) -> None:
    tmp, db = nights["tmp"], nights["db"]
    assert nights[1].exit_code == 0, nights[1].output
    assert nights[2].exit_code == 0, nights[2].output
    assert nights[3].exit_code == 1, nights[3].output
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 3
    assert [f for (f,) in conn.execute("SELECT failed FROM runs ORDER BY id")] == [0, 0, 1]
    night2 = json.loads((tmp / "report2.json").read_text())
    # the same checkpoint on the same data: deltas exactly 0, comparable
    assert night2["baseline"]["comparable"] is True
    assert all(v == 0.0 for row in night2["baseline"]["deltas"].values() for v in row.values())
    night3 = json.loads((tmp / "report3.json").read_text())
    d = night3["baseline"]["deltas"]["laplace"]["nll"]
    assert d == pytest.approx(night3["rows"]["laplace"]["nll"] - night2["rows"]["laplace"]["nll"])
    assert d > 0.05
    suite = ET.parse(tmp / "junit3.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    [case] = suite.findall("testcase")
    assert case.get("name") == GATE and case.find("failure") is not None
    assert ET.parse(tmp / "junit2.xml").getroot().find("testsuite/testcase/failure") is None
    summary = (tmp / "summary3.md").read_text()
    assert f"| `{GATE}` | ❌ failed |" in summary
    assert (tmp / "step.md").read_text().strip() == summary.strip()
    assert "❌" not in (tmp / "summary2.md").read_text()
    page = (tmp / "night3.html").read_text()
    assert "Change since the baseline" in page and page.count("data:image/png;base64") >= 2


def test_history_command(nights: dict[str, Any]) -> None:
    pytest.importorskip("matplotlib")
    tmp, db = nights["tmp"], nights["db"]
    result = invoke("history", db, "--json", "--metric", "laplace.nll")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)
    assert [r["failed"] for r in runs] == [False, False, True]
    reports = [json.loads((tmp / f"report{i}.json").read_text()) for i in (1, 2, 3)]
    assert [r["metrics"]["laplace.nll"] for r in runs] == [
        rep["rows"]["laplace"]["nll"] for rep in reports
    ]
    fp = reports[2]["identity"]["fingerprint"]
    result = invoke("history", db, "--checkpoint", fp[:12], "--csv", tmp / "h.csv", "--plot",
                    tmp / "trend.png")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = (tmp / "h.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("3,")
    assert (tmp / "trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = invoke("history", db, "--metric", "laplace.nope")
    assert result.exit_code == 2 and "laplace.nope" in result.output


def test_bad_inputs_exit_2_with_one_line(nights: dict[str, Any]) -> None:
    tmp = nights["tmp"]
    old = tmp / "old_report.json"
    old.write_text(
        json.dumps({**json.loads((tmp / "report1.json").read_text()), "schema_version": 0})
    )
    not_db = tmp / "notes.db"
    not_db.write_text("not a database\n")
    base = ["evaluate", "-p", tmp / "good.st", "--data", SAMPLE / "data.yaml", "--quiet"]
    cases = [
        (["--baseline", old], "schema_version 0 is not supported"),
        (["--history", not_db], "not an SQLite database"),
        (["--baseline", tmp / "report1.json", "--fail-if", "ece > baseline.laplace.nope"],
         "no metric 'nope'"),
        (["--fail-if", "ece > baseline.laplace.ece"], "give --baseline"),
        (["--split", "val", "--baseline", tmp / "report1.json", "--strict-baseline"],
         "not comparable: other data"),
        (["--log", "mlflow"], "pip install 'laplace-cli[mlflow]'"),
    ]  # fmt: skip
    for extra, needle in cases:
        if "mlflow" in extra and importlib.util.find_spec("mlflow") is not None:
            continue  # installed: nothing to refuse
        result = invoke(*base, *extra)
        assert result.exit_code == 2, (extra, result.output)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0], (extra, result.output)
    result = invoke("history", not_db)
    assert result.exit_code == 2 and "not an SQLite database" in result.output


def _validate(instance: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """A small JSON Schema checker for the keywords docs/report.schema.json uses."""
    errors: list[str] = []
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}")
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} not in {schema['enum']}")
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]

        def ok(t: str) -> bool:
            if t in ("number", "integer"):
                num = isinstance(instance, (int, float)) and not isinstance(instance, bool)
                return num and (t == "number" or float(instance).is_integer())
            return isinstance(instance, types[t])

        if not any(ok(t) for t in allowed):
            return errors + [f"{path}: {type(instance).__name__} is not {allowed}"]
    if isinstance(instance, dict):
        errors += [
            f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in instance
        ]
        props = schema.get("properties", {})
        for k, v in instance.items():
            if k in props:
                errors += _validate(v, props[k], f"{path}.{k}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _validate(v, schema["additionalProperties"], f"{path}.{k}")
    if isinstance(instance, list) and "items" in schema:
        for i, v in enumerate(instance):
            errors += _validate(v, schema["items"], f"{path}[{i}]")
    return errors


def test_report_matches_published_schema(nights: dict[str, Any]) -> None:
    schema = json.loads((REPO / "docs" / "report.schema.json").read_text())
    for night in (1, 3):
        report = json.loads((nights["tmp"] / f"report{night}.json").read_text())
        assert _validate(report, schema) == []
    # the checker is not vacuous: a broken report is caught
    broken = json.loads((nights["tmp"] / "report3.json").read_text())
    broken["schema_version"] = 2
    broken["gates"][0]["failed"] = "yes"
    del broken["rows"]
    errors = _validate(broken, schema)
    assert len(errors) == 3, errors


def test_recipe_mirrors_the_evaluate_options(tmp_path: Path) -> None:
    """`evaluate:` in a recipe takes history / baseline / junit / summary_md like the CLI."""
    recipe = tmp_path / "nightly.yaml"
    recipe.write_text(
        f"model: {{path: {SAMPLE / 'model.pt2'}}}\n"
        f"data: {SAMPLE / 'data.yaml'}\n"
        "stages: [fit, evaluate]\n"
        "fit: {subset: last_layer, structure: diag}\n"
        "evaluate: {history: runs.db, junit: gates.xml, summary_md: summary.md}\n"
    )
    first = invoke("run", recipe, "--output", tmp_path / "n1", "--quiet")
    assert first.exit_code == 0, first.output
    gate = "evaluate.fail_if=[laplace.nll > baseline.laplace.nll - 1]"  # 1 nat better: fails
    second = invoke("run", recipe, "--output", tmp_path / "n2", "--quiet",
                    "--set", "evaluate.baseline=last", "--set", gate)  # fmt: skip
    assert second.exit_code == 1, second.output
    assert sqlite3.connect(tmp_path / "runs.db").execute(
        "SELECT count(*) FROM runs"
    ).fetchone() == (2,)
    report = json.loads((tmp_path / "n2" / "report.json").read_text())
    assert report["baseline"]["comparable"] and report["gates"][0]["failed"]
    assert "❌ failed" in (tmp_path / "n2" / "summary.md").read_text()
    assert (
        ET.parse(tmp_path / "n2" / "gates.xml").getroot().find("testsuite/testcase/failure")
        is not None
    )
    bad = invoke("run", recipe, "--output", tmp_path / "n3", "--quiet",
                 "--set", "evaluate.baseline=last", "--set", "evaluate.fail_if=[ece > baseline.laplace.nope]")  # fmt: skip
    assert bad.exit_code == 2 and "no metric 'nope'" in bad.output
    assert not (tmp_path / "n3" / "posterior.safetensors").exists()  # refused before the fit


def test_history_plot_without_matplotlib(
    nights: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    out = nights["tmp"] / "no-mpl.png"
    result = invoke("history", nights["db"], "--plot", out)
    assert result.exit_code == 2 and "pip install 'laplace-cli[plot]'" in result.output
    assert not out.exists()
