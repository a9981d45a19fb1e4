"""Splits without targets (out-of-distribution data, predict) and specs without `task:`.

An OOD spec needs no dummy labels; `predict --data` reads a split without targets; a spec with
no `task:` (and no `--likelihood`) is fitted as classification *with a note*, and real-valued
targets under that assumption are refused with the fix (`task: regression`) in the message.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from laplace_cli.cli.app import app

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "sample_models" / "digits_mlp"
DIABETES = REPO / "sample_models" / "diabetes_mlp"

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def _spec(path: Path, folder: Path, task: str | None, **splits: dict) -> Path:
    """A spec pointing at the sample arrays by absolute path (optionally without `task:`)."""
    data: dict = {"splits": splits}
    if task is not None:
        data["task"] = task
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("unlabeled")
    rng = np.random.default_rng(0)
    ood = tmp / "noise.npz"
    np.savez(ood, x=rng.uniform(0, 1, (40, 64)).astype("float32"))  # features only, no `y`
    ood_spec = _spec(tmp / "ood.yaml", tmp, None, test={"path": str(ood)})
    post = tmp / "post.st"
    result = invoke(
        "fit", DIGITS / "model.pt2", "--data", DIGITS / "data.yaml",
        "--subset", "last_layer", "--structure", "diag", "-o", post, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"tmp": tmp, "post": post, "ood_spec": ood_spec}


def test_ood_data_needs_no_targets(digits: dict[str, Path]) -> None:
    report = digits["tmp"] / "report.json"
    result = invoke(
        "evaluate", "-p", digits["post"], "--data", DIGITS / "data.yaml",
        "--ood-data", digits["ood_spec"], "--report", report, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())["rows"]
    auroc = [k for k in rows["laplace"] if "auroc" in k]
    assert auroc, rows["laplace"]
    # Uniform noise is far from digits: the Laplace row separates it better than chance.
    assert rows["laplace"][auroc[0]] > 0.5


def test_predict_reads_a_split_without_targets(digits: dict[str, Path]) -> None:
    out = digits["tmp"] / "preds.csv"
    result = invoke(
        "predict", "-p", digits["post"], "--data", digits["ood_spec"], "--split", "test",
        "-o", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = out.read_text().strip().splitlines()
    assert len(lines) == 1 + 40  # header + one row per input


def test_fit_and_evaluate_still_require_targets(digits: dict[str, Path]) -> None:
    result = invoke(
        "evaluate", "-p", digits["post"], "--data", digits["ood_spec"], "--split", "test",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "has no targets" in result.output


def test_no_task_is_classification_with_a_note(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "data.yaml", tmp_path, None, train={"path": str(DIGITS / "train.npz")})
    result = invoke(
        "fit", DIGITS / "model.pt2", "--data", spec, "--structure", "diag",
        "-o", tmp_path / "p.st", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "classification (assumed" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["likelihood"] == "classification"
    assert any("task: regression" in note for note in summary["notes"])


def test_explicit_task_gives_no_note(tmp_path: Path) -> None:
    result = invoke(
        "fit", DIGITS / "model.pt2", "--data", DIGITS / "data.yaml", "--structure", "diag",
        "-o", tmp_path / "p.st", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "assumed" not in result.stderr
    assert "notes" not in json.loads(result.stdout)


def test_real_valued_targets_without_task_are_refused_with_the_fix(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path / "data.yaml", tmp_path, None, train={"path": str(DIABETES / "train.npz")}
    )
    result = invoke(
        "fit", DIABETES / "model.pt2", "--data", spec, "--structure", "diag",
        "-o", tmp_path / "p.st",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "expected an integer class label" in result.output
    assert "task: regression" in result.output
    assert "Traceback" not in result.output
    # The same data with the fix the message names fits.
    _spec(spec, tmp_path, "regression", train={"path": str(DIABETES / "train.npz")})
    result = invoke(
        "fit", DIABETES / "model.pt2", "--data", spec, "--structure", "diag",
        "-o", tmp_path / "p.st", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
