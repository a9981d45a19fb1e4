"""What `laplace predict` reads and how it accounts for it.

* A CSV without a header keeps every row: a first line of numbers is data, not a header
  (`--header` / `--no-header` decide it explicitly), from a file or stdin.
* With neither `--input` nor `--data`, rows come from stdin when it is a pipe or a file; on a
  terminal, one line says what to give (exit 2).
* The rows read and written are counted on stderr and in the `--json` summary.
* Single-output regression writes numbers in JSONL, as CSV does.
* A row's Monte Carlo scores (`mutual_info`) do not depend on `--batch-size`.

Posteriors: digits_mlp last-layer K-FAC and diabetes_mlp last-layer diag, fitted once.
"""

from __future__ import annotations

import csv
import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from laplace_cli.cli.app import app

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(args: list[Any], **kwargs: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def numbers_csv(path: Path, x: np.ndarray, header: list[str] | None = None) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        if header is not None:
            w.writerow(header)
        w.writerows([[repr(float(v)) for v in row] for row in x])
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("predict_input")
    out: dict[str, Any] = {"root": root}
    for name, structure in (("digits_mlp", "kron"), ("diabetes_mlp", "diag")):
        post = root / f"{name}.st"
        fit = invoke(
            ["fit", SAMPLES / name / "model.pt2", "--data", SAMPLES / name / "data.yaml",
             "--subset", "last_layer", "--structure", structure, "-o", post, "--quiet"]
        )  # fmt: skip
        assert fit.exit_code == 0, fit.stderr
        out[name] = post
        out[f"{name}.x"] = np.load(SAMPLES / name / "test.npz")["x"]
    # Reference rows for the first rows of each test split, from an .npz (no header question).
    for name in ("digits_mlp", "diabetes_mlp"):
        npz = root / f"{name}.npz"
        np.savez(npz, x=out[f"{name}.x"][:5])
        ref = invoke(["predict", "-p", out[name], "--input", npz, "--quiet"])
        assert ref.exit_code == 0, ref.stderr
        out[f"{name}.ref"] = jsonl(ref.stdout)
    return out


def same_rows(rows: list[dict[str, Any]], ref: list[dict[str, Any]], field: str) -> None:
    assert [r["id"] for r in rows] == [r["id"] for r in ref]
    np.testing.assert_allclose(
        [r[field] for r in rows], [r[field] for r in ref], rtol=1e-5, atol=1e-7
    )


# --- a CSV without a header ----------------------------------------------------------------------
@pytest.mark.parametrize("name,field", [("diabetes_mlp", "mean"), ("digits_mlp", "probs")])
def test_a_csv_without_a_header_keeps_its_first_row(
    setup: dict[str, Any], tmp_path: Path, name: str, field: str
) -> None:
    path = numbers_csv(tmp_path / "three.csv", setup[f"{name}.x"][:3])
    result = invoke(["predict", "-p", setup[name], "--input", path])
    assert result.exit_code == 0, result.stderr
    rows = jsonl(result.stdout)
    # diabetes: was 2 rows, exit 0 (the first row became the header and ids shifted);
    # digits: was exit 2 (repeated pixel values made duplicate column names).
    assert len(rows) == 3
    same_rows(rows, setup[f"{name}.ref"][:3], field)
    assert result.stderr == (
        f"predict: 3 rows read from {path} (no header row: its first line is all numbers), "
        "3 written to <stdout>\n"
    )


def test_headerless_csv_on_stdin_and_a_one_row_file(setup: dict[str, Any], tmp_path: Path) -> None:
    path = numbers_csv(tmp_path / "five.csv", setup["digits_mlp.x"])
    text = "".join(path.read_text().splitlines(keepends=True)[:5])
    result = invoke(["predict", "-p", setup["digits_mlp"], "--input", "-", "-q"], input=text)
    assert result.exit_code == 0, result.stderr
    same_rows(jsonl(result.stdout), setup["digits_mlp.ref"], "probs")
    one = tmp_path / "one.csv"
    one.write_text(text.splitlines(keepends=True)[0])
    result = invoke(["predict", "-p", setup["digits_mlp"], "--input", one, "-q"])
    assert result.exit_code == 0, result.stderr
    same_rows(jsonl(result.stdout), setup["digits_mlp.ref"][:1], "probs")


def test_header_flags_decide_the_first_line(setup: dict[str, Any], tmp_path: Path) -> None:
    x = setup["diabetes_mlp.x"][:3]
    # A header whose names are numbers reads as data unless --header says otherwise.
    years = numbers_csv(tmp_path / "years.csv", x, header=[str(2010 + i) for i in range(10)])
    auto = invoke(["predict", "-p", setup["diabetes_mlp"], "--input", years, "-q"])
    assert auto.exit_code == 0 and len(jsonl(auto.stdout)) == 4
    told = invoke(["predict", "-p", setup["diabetes_mlp"], "--input", years, "--header"])
    assert told.exit_code == 0, told.stderr
    same_rows(jsonl(told.stdout), setup["diabetes_mlp.ref"][:3], "mean")
    assert "3 rows read" in told.stderr and "(header row of 10 columns)" in told.stderr
    # --no-header on a file with a header: the names are not numbers, a clear exit 2.
    named = numbers_csv(tmp_path / "named.csv", x, header=[f"f{i}" for i in range(10)])
    bad = invoke(["predict", "-p", setup["diabetes_mlp"], "--input", named, "--no-header"])
    assert bad.exit_code == 2
    assert bad.stderr.startswith(f"error: {named}: no numeric feature columns (columns: 0, 1,")
    assert "(no header row, as asked: the first line is data" in bad.stderr
    # --header / --no-header are for CSV; a data spec says header: on its split.
    npz = setup["root"] / "diabetes_mlp.npz"
    refused = invoke(["predict", "-p", setup["diabetes_mlp"], "--input", npz, "--no-header"])
    assert refused.exit_code == 2 and "--no-header applies to CSV / TSV input" in refused.stderr
    spec = SAMPLES / "diabetes_mlp" / "data.yaml"
    refused = invoke(["predict", "-p", setup["diabetes_mlp"], "--data", spec, "--header"])
    assert refused.exit_code == 2 and "set header: on the split" in refused.stderr


def test_a_header_with_numeric_names_is_a_warning(setup: dict[str, Any], tmp_path: Path) -> None:
    """`a,0.5,...`: a first data row with a text id is taken as a header, and said so."""
    path = tmp_path / "ids.csv"
    rows = setup["diabetes_mlp.x"][:3]
    lines = [f"r{i}," + ",".join(repr(float(v)) for v in r) + "\n" for i, r in enumerate(rows)]
    path.write_text("".join(lines))
    result = invoke(["predict", "-p", setup["diabetes_mlp"], "--input", path, "-q"])
    assert result.exit_code == 0
    assert result.stderr.startswith(f"warning: {path}: the header row has numeric names (")
    assert "pass --no-header" in result.stderr


# --- stdin without --input ------------------------------------------------------------------------
def test_piped_rows_need_no_input_flag(setup: dict[str, Any], tmp_path: Path) -> None:
    path = numbers_csv(tmp_path / "x.csv", setup["digits_mlp.x"][:5], [f"f{i}" for i in range(64)])
    result = invoke(["predict", "--posterior", setup["digits_mlp"]], input=path.read_text())
    assert result.exit_code == 0, result.stderr
    same_rows(jsonl(result.stdout), setup["digits_mlp.ref"], "probs")
    assert "5 rows read from <stdin>" in result.stderr
    # JSONL is told apart by its first line.
    lines = "".join(json.dumps({"x": r.tolist()}) + "\n" for r in setup["digits_mlp.x"][:5])
    result = invoke(["predict", "--posterior", setup["digits_mlp"], "-q"], input=lines)
    assert result.exit_code == 0, result.stderr
    same_rows(jsonl(result.stdout), setup["digits_mlp.ref"], "probs")


def test_no_input_on_a_terminal_says_what_to_give(setup: dict[str, Any]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("LAPLACE_DEBUG", None)
    leader, follower = pty.openpty()  # stdin is a terminal, as typed at a prompt
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "laplace_cli", "predict", "-p", str(setup["digits_mlp"])],
            stdin=follower, capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: no input: pipe rows in (cat rows.csv | laplace predict")
    assert "--input FILE|- or --data SPEC" in proc.stderr and proc.stderr.count("\n") == 1


# --- row accounting ----------------------------------------------------------------------------------
def test_json_summary_counts_rows(setup: dict[str, Any], tmp_path: Path) -> None:
    path = numbers_csv(tmp_path / "x.csv", setup["digits_mlp.x"][:7])
    out = tmp_path / "rows.csv"
    result = invoke(
        ["predict", "-p", setup["digits_mlp"], "--input", path, "-o", out, "--json",
         "--batch-size", "3"]
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert result.stderr == ""  # --json: no human output
    assert summary == {
        "input": str(path),
        "output": str(out),
        "format": "csv",
        "rows_read": 7,
        "rows_written": 7,
        "input_format": "csv",
        "header": None,
    }
    assert len(out.read_text().splitlines()) == 1 + 7
    spec = SAMPLES / "digits_mlp" / "data.yaml"
    result = invoke(["predict", "-p", setup["digits_mlp"], "--data", spec, "-o", out, "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rows_read"] == 360
    assert json.loads(result.stdout)["rows_written"] == 360
    no_file = invoke(["predict", "-p", setup["digits_mlp"], "--input", path, "--json"])
    assert no_file.exit_code == 2 and "give -o FILE for the rows" in no_file.stderr


# --- output format ------------------------------------------------------------------------------------
def test_single_output_regression_jsonl_has_numbers(setup: dict[str, Any], tmp_path: Path) -> None:
    npz = setup["root"] / "diabetes_mlp.npz"
    out = tmp_path / "rows.csv"
    as_csv = invoke(["predict", "-p", setup["diabetes_mlp"], "--input", npz, "-o", out, "-q"])
    assert as_csv.exit_code == 0, as_csv.stderr
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    rows = setup["diabetes_mlp.ref"]
    assert list(rows[0]) == ["id", "mean", "var", "var_total", "lower", "upper"]
    for row, flat in zip(rows, table, strict=True):
        for key in ("mean", "var", "var_total", "lower", "upper"):
            assert isinstance(row[key], float), (key, row[key])  # was [x]
            assert row[key] == pytest.approx(float(flat[key]), rel=1e-12)


# --- Monte Carlo per row ----------------------------------------------------------------------------
def test_mutual_info_does_not_depend_on_the_batch_size(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    npz = tmp_path / "x.npz"
    np.savez(npz, x=setup["digits_mlp.x"][:10])
    got = {}
    for batch in (1, 3, 7):
        result = invoke(
            ["predict", "-p", setup["digits_mlp"], "--input", npz, "--batch-size", batch,
             "--dtype", "float64", "--columns", "mutual_info", "-q"]
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        got[batch] = [r["mutual_info"] for r in jsonl(result.stdout)]
    np.testing.assert_allclose(got[3], got[1], rtol=1e-12)
    np.testing.assert_allclose(got[7], got[1], rtol=1e-12)
