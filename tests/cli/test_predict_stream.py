"""`laplace predict` as a stream: one row per input in order, formats, columns, stdin, pipes.

A digits_mlp last-layer K-FAC posterior and a diabetes_mlp last-layer diag posterior are fitted
once (through the CLI) and reused. Rows are checked against `laplace predict --data` on the
same test split, against each other across formats, and, for regression, against the
definitions of the interval columns.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from laplace_cli.cli import console as console_mod
from laplace_cli.cli.app import app
from laplace_cli.io.posterior_file import read_posterior

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"
N_TEST = 360
CLASS_COLUMNS = (
    ["id", "pred"]
    + [f"prob_{k}" for k in range(10)]
    + [f"var_{k}" for k in range(10)]
    + ["entropy", "max_prob", "mutual_info"]
)


pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(args: list[Any], **kwargs: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def write_csv(path: Path, x: np.ndarray, *, multiple: int = 1, ids: list[str] | None = None,
              label: np.ndarray | None = None) -> None:  # fmt: skip
    """Features f0.. (plus an id column first and a label column last, if given)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            (["id"] if ids else []) + [f"f{i}" for i in range(x.shape[1])]
            + (["label"] if label is not None else [])
        )  # fmt: skip
        n = 0
        for _ in range(multiple):
            for i, row in enumerate(x):
                lead = [ids[n]] if ids else []
                tail = [int(label[i])] if label is not None else []
                w.writerow(lead + [repr(float(v)) for v in row] + tail)
                n += 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("stream")
    out: dict[str, Any] = {"root": root}
    for name, structure in (("digits_mlp", "kron"), ("diabetes_mlp", "diag")):
        post = root / f"{name}.st"
        fit = invoke(
            [
                "fit", SAMPLES / name / "model.pt2", "--data", SAMPLES / name / "data.yaml",
                "--subset", "last_layer", "--structure", structure, "-o", post, "--quiet",
            ]
        )  # fmt: skip
        assert fit.exit_code == 0, fit.stderr
        out[name] = post
    test = np.load(SAMPLES / "digits_mlp" / "test.npz")
    out["x"], out["y"] = test["x"], test["y"]
    # The reference rows: the test split through --data (the DataLoader path).
    spec = SAMPLES / "digits_mlp" / "data.yaml"
    ref = invoke(["predict", "-p", out["digits_mlp"], "--data", spec])
    assert ref.exit_code == 0, ref.stderr
    # stderr: only the row count (no bar: not a terminal).
    assert ref.stderr == (
        f"predict: {N_TEST} rows read from {spec}: split 'test', {N_TEST} written to <stdout>\n"
    )
    out["ref"] = jsonl(ref.stdout)
    big = root / "x3.csv"
    write_csv(big, test["x"], multiple=3, label=np.tile(test["y"], 3))
    out["x3"] = big
    return out


def assert_rows_match(rows: list[dict[str, Any]], ref: list[dict[str, Any]]) -> None:
    """Deterministic fields equal (mutual_info: Monte Carlo, seeded per row; tested elsewhere)."""
    assert len(rows) == len(ref)
    for a, b in zip(rows, ref):
        assert a["pred"] == b["pred"]
        np.testing.assert_allclose(a["probs"], b["probs"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a["var"], b["var"], rtol=1e-6)


# --- one row per input, in order ----------------------------------------------------------------
def test_three_times_the_test_split_gives_one_row_per_input_in_order(
    setup: dict[str, Any],
) -> None:
    out = setup["root"] / "x3.jsonl"
    # 100-row chunks do not divide 360: rows of one copy straddle chunk boundaries.
    result = invoke(
        ["predict", "-p", setup["digits_mlp"], "--input", setup["x3"], "-o", out,
         "--batch-size", "100"]
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        f"predict: {3 * N_TEST} rows read from {setup['x3']} (header row of 65 columns), "
        f"{3 * N_TEST} written to {out}\n"
    )
    rows = jsonl(out.read_text())
    assert len(rows) == 3 * N_TEST
    assert [r["id"] for r in rows] == list(range(3 * N_TEST))
    for copy in range(3):  # each copy of the inputs predicts as the test split does
        assert_rows_match(rows[copy * N_TEST : (copy + 1) * N_TEST], setup["ref"])


def test_id_column_is_kept_in_order(setup: dict[str, Any], tmp_path: Path) -> None:
    ids = [f"img-{i:03d}" for i in range(40)][::-1]
    path = tmp_path / "with_ids.csv"
    write_csv(path, setup["x"][:40], ids=ids)
    result = invoke(["predict", "-p", setup["digits_mlp"], "--input", path, "--batch-size", "7"])
    assert result.exit_code == 0, result.stderr
    rows = jsonl(result.stdout)
    assert [r["id"] for r in rows] == ids
    assert_rows_match(rows, setup["ref"][:40])


def test_stdin_input(setup: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    write_csv(path, setup["x"][:25], label=setup["y"][:25])  # the label column is ignored
    result = invoke(["predict", "-p", setup["digits_mlp"], "--input", "-"], input=path.read_text())
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        "predict: 25 rows read from <stdin> (header row of 65 columns), 25 written to <stdout>\n"
    )
    rows = jsonl(result.stdout)
    assert [r["id"] for r in rows] == list(range(25))
    assert_rows_match(rows, setup["ref"][:25])


def test_npz_input_and_x_key(setup: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, features=setup["x"][:10])
    result = invoke(["predict", "-p", setup["digits_mlp"], "--input", path, "--x-key", "features"])
    assert result.exit_code == 0, result.stderr
    assert_rows_match(jsonl(result.stdout), setup["ref"][:10])
    missing = invoke(["predict", "-p", setup["digits_mlp"], "--input", path])
    assert missing.exit_code == 2 and missing.stdout == ""
    assert missing.stderr == f"error: {path}: no feature key 'x'; keys: features\n"


def test_non_finite_input_row_is_bad_input(setup: dict[str, Any], tmp_path: Path) -> None:
    x = setup["x"][:12].copy()
    x[9, 3] = np.nan
    path = tmp_path / "nan.csv"
    write_csv(path, x)
    result = invoke(["predict", "-p", setup["digits_mlp"], "--input", path, "--batch-size", "5"])
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}: row 9 (line 11): non-finite value nan in features\n"
    # The chunk before the bad one was streamed whole; nothing from the bad chunk on.
    assert [r["id"] for r in jsonl(result.stdout)] == list(range(5))


# --- formats and columns -------------------------------------------------------------------------
def test_format_follows_the_output_file_name(setup: dict[str, Any], tmp_path: Path) -> None:
    x = tmp_path / "x.csv"
    write_csv(x, setup["x"][:30])
    for name in ("rows.csv", "rows.jsonl"):
        result = invoke(["predict", "-p", setup["digits_mlp"], "--input", x, "-o", tmp_path / name])
        assert result.exit_code == 0, result.stderr
        assert result.stdout == "" and result.stderr.startswith("predict: 30 rows read from ")
    with open(tmp_path / "rows.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == CLASS_COLUMNS
    rows = jsonl((tmp_path / "rows.jsonl").read_text())
    assert len(table) == len(rows) == 30
    for flat, row in zip(table, rows):
        assert int(flat["id"]) == row["id"] and int(flat["pred"]) == row["pred"]
        assert [float(flat[f"prob_{k}"]) for k in range(10)] == row["probs"]
        assert [float(flat[f"var_{k}"]) for k in range(10)] == row["var"]
        assert float(flat["entropy"]) == row["entropy"]
    # --format overrides the name; stdout defaults to JSONL.
    forced = invoke(["predict", "-p", setup["digits_mlp"], "--input", x, "--format", "csv"])
    assert forced.exit_code == 0
    assert forced.stdout.splitlines()[0] == ",".join(CLASS_COLUMNS)
    assert len(forced.stdout.splitlines()) == 31


def test_columns_selection(setup: dict[str, Any], tmp_path: Path) -> None:
    x = tmp_path / "x.csv"
    write_csv(x, setup["x"][:8])
    post = setup["digits_mlp"]
    picked = invoke(["predict", "-p", post, "--input", x, "--columns", "pred, max_prob"])
    assert picked.exit_code == 0, picked.stderr
    rows = jsonl(picked.stdout)
    assert [list(r) for r in rows] == [["id", "pred", "max_prob"]] * 8
    assert [r["max_prob"] for r in rows] == [r["max_prob"] for r in setup["ref"][:8]]
    out = tmp_path / "cols.csv"
    flat = invoke(["predict", "-p", post, "--input", x, "-o", out, "--columns", "prob_3,entropy"])
    assert flat.exit_code == 0, flat.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "id,prob_3,entropy" and len(lines) == 9
    assert float(lines[1].split(",")[1]) == setup["ref"][0]["probs"][3]
    bad = invoke(["predict", "-p", post, "--input", x, "--columns", "pred,bogus"])
    assert bad.exit_code == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: --columns: unknown field(s) bogus; available: id, pred")


def test_a_failure_before_the_first_row_creates_no_output_file(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """--columns (and whatever else fails on the first chunk: --x-key, the input itself) is
    checked before -o is opened: no empty file is left behind."""
    x = tmp_path / "x.csv"
    write_csv(x, setup["x"][:8])
    npz = tmp_path / "x.npz"
    np.savez(npz, features=setup["x"][:8])
    nan = setup["x"][:8].copy()
    nan[0, 0] = np.nan
    bad_row = tmp_path / "nan.csv"
    write_csv(bad_row, nan)
    post = setup["digits_mlp"]
    cases = {
        "cols.csv": (["--input", x, "--columns", "bogus"], "--columns: unknown field(s) bogus"),
        "cols.jsonl": (["--input", x, "--columns", "prob_3"], "--columns: unknown field(s)"),
        "key.csv": (["--input", npz, "--x-key", "nope"], "no feature key 'nope'"),
        "nan.jsonl": (["--input", bad_row], "non-finite value nan"),
    }
    for name, (args, message) in cases.items():
        out = tmp_path / name
        result = invoke(["predict", "-p", post, *args, "-o", out])
        assert result.exit_code == 2 and message in result.stderr, (name, result.stderr)
        assert not out.exists(), name
    # An existing file is left as it was.
    kept = tmp_path / "kept.csv"
    kept.write_text("before\n")
    result = invoke(["predict", "-p", post, "--input", x, "-o", kept, "--columns", "bogus"])
    assert result.exit_code == 2 and kept.read_text() == "before\n"


def test_regression_columns(setup: dict[str, Any], tmp_path: Path) -> None:
    post = setup["diabetes_mlp"]
    sigma = read_posterior(post).metadata["sigma_noise"][0]
    data = SAMPLES / "diabetes_mlp" / "data.yaml"
    for level, z in ((0.95, 1.959963984540054), (0.9, 1.6448536269514722)):
        out = tmp_path / f"reg{level}.csv"
        result = invoke(
            ["predict", "-p", post, "--data", data, "-o", out, "--interval", str(level)]
        )
        assert result.exit_code == 0, result.stderr
        with open(out, newline="") as fh:
            table = list(csv.DictReader(fh))
        # One output: the `_<k>` suffix is dropped.
        assert list(table[0]) == ["id", "mean", "var", "var_total", "lower", "upper"]
        assert len(table) == 89
        for row in table:
            mean, var, total = float(row["mean"]), float(row["var"]), float(row["var_total"])
            assert var > 0
            assert total == pytest.approx(var + sigma**2, rel=1e-6)
            half = z * math.sqrt(total)
            assert float(row["lower"]) == pytest.approx(mean - half, rel=1e-5, abs=1e-6)
            assert float(row["upper"]) == pytest.approx(mean + half, rel=1e-5, abs=1e-6)


# --- stdout is data ------------------------------------------------------------------------------
def test_stdout_carries_only_rows_with_a_progress_bar(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    bar = io.StringIO()
    monkeypatch.setattr(
        console_mod, "stderr_console", Console(file=bar, force_terminal=True, width=100)
    )
    result = invoke(
        ["predict", "-p", setup["digits_mlp"], "--data", SAMPLES / "digits_mlp" / "data.yaml",
         "--batch-size", "64"]
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = jsonl(result.stdout)  # every line parses: no bar, no message in between
    assert [r["id"] for r in rows] == list(range(N_TEST))
    assert_rows_match(rows, setup["ref"])
    drawn = bar.getvalue()
    assert "predict" in drawn and "6/6" in drawn  # the bar ran, on the (fake) terminal
    assert '"id"' not in drawn


def test_closed_stdout_exits_0_quietly(setup: dict[str, Any]) -> None:
    """`laplace predict ... | head -2`: the reader leaves after two rows."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("LAPLACE_DEBUG", None)
    env["OMP_NUM_THREADS"] = "1"  # as `_one_thread` does in this process
    proc = subprocess.Popen(
        [sys.executable, "-m", "laplace_cli", "predict", "-p", str(setup["digits_mlp"]),
         "--input", str(setup["x3"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    first = [proc.stdout.readline(), proc.stdout.readline()]
    proc.stdout.close()  # like `head -2` exiting: the next write gets EPIPE
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == 0
    assert stderr == b""  # no traceback, no "Exception ignored ... BrokenPipeError"
    assert [json.loads(line)["id"] for line in first] == [0, 1]
