"""The model a posterior names: paths relative to the posterior file, so a moved folder works.

A posterior records `model.path` (and a file-style factory) relative to its own folder, plus
the absolute paths at write time; posteriors written with absolute paths still read. A model
that is nowhere to be found is exit 2 with `--model` named as the fix.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.io.posterior_file import read_posterior, write_posterior

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """proj/ with the sample MLP as .pt2 and as safetensors + models.py, small data, and two
    posteriors in proj/run/ fitted from inside proj/ with relative arguments."""
    proj = tmp_path / "proj"
    (proj / "run").mkdir(parents=True)
    shutil.copy(SAMPLES / "digits_mlp" / "model.pt2", proj)
    shutil.copy(SAMPLES / "digits_mlp" / "model.safetensors", proj)
    shutil.copy(SAMPLES / "models.py", proj)
    lines = ["task: classification", "batch_size: 64", "splits:"]
    for split, n in {"train": 80, "val": 40, "test": 30}.items():
        d = np.load(SAMPLES / "digits_mlp" / f"{split}.npz")
        np.savez(proj / f"{split}.npz", x=d["x"][:n], y=d["y"][:n])
        lines.append(f"  {split}: {{path: {split}.npz, x: x, y: y}}")
    (proj / "data.yaml").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(proj)
    opts = ["--data", "data.yaml", "--structure", "diag", "-q"]
    assert invoke("fit", "model.pt2", *opts, "-o", "run/export.st").exit_code == 0
    fit = invoke(
        "fit", "model.safetensors", "--model-factory", "models.py:digits_mlp", *opts,
        "-o", "run/weights.st",
    )  # fmt: skip
    assert fit.exit_code == 0, fit.output
    monkeypatch.chdir(tmp_path)
    return proj


def test_the_posterior_records_model_paths_relative_to_itself(project: Path) -> None:
    export = read_posterior(project / "run" / "export.st").metadata["model"]
    assert export["path"] == "../model.pt2"
    assert export["absolute_path"] == str((project / "model.pt2").resolve())
    weights = read_posterior(project / "run" / "weights.st").metadata["model"]
    assert weights["path"] == "../model.safetensors"
    assert weights["factory"] == "../models.py:digits_mlp"


def test_a_moved_project_folder_still_finds_its_models(project: Path, tmp_path: Path) -> None:
    moved = project.rename(tmp_path / "elsewhere")  # the absolute paths are gone now
    for name in ("export.st", "weights.st"):
        post = moved / "run" / name
        result = invoke("evaluate", "-p", post, "--data", moved / "data.yaml", "--json")
        assert result.exit_code == 0, (name, result.output)
        assert json.loads(result.stdout)["rows"]["laplace"]["acc"] > 0.5
        # Tuning rewrites the file: still relative, still found after another move.
        assert invoke("tune", "-p", post, "-q").exit_code == 0
        assert read_posterior(post).metadata["model"]["path"].startswith("../")
    again = moved.rename(tmp_path / "third")
    assert (
        invoke("marglik", again / "run" / "export.st", again / "run" / "weights.st").exit_code == 0
    )


def test_a_posterior_moved_alone_falls_back_to_the_absolute_path(
    project: Path, tmp_path: Path
) -> None:
    (tmp_path / "archive").mkdir()
    post = shutil.copy(project / "run" / "export.st", tmp_path / "archive" / "deep.st")
    result = invoke("marglik", post)
    assert result.exit_code == 0, result.output


def test_a_missing_model_names_the_model_option(project: Path, tmp_path: Path) -> None:
    moved = project.rename(tmp_path / "elsewhere")
    shutil.move(moved / "model.pt2", tmp_path / "model-now-here.pt2")
    post = moved / "run" / "export.st"
    result = invoke("evaluate", "-p", post, "--data", moved / "data.yaml")
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "'../model.pt2'" in message
    assert "--model PATH" in message
    assert "internal error" not in message
    fixed = invoke(
        "evaluate", "-p", post, "--data", moved / "data.yaml",
        "--model", tmp_path / "model-now-here.pt2", "-q",
    )  # fmt: skip
    assert fixed.exit_code == 0, fixed.output
    # A moved factory file is reported the same way, with both options.
    (moved / "models.py").unlink()
    result = invoke("marglik", moved / "run" / "weights.st")
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "--model CHECKPOINT --model-factory" in message


@pytest.mark.parametrize("legacy", ["absolute", "relative-to-cwd"])
def test_posteriors_with_old_style_paths_still_read(
    project: Path, monkeypatch: pytest.MonkeyPatch, legacy: str
) -> None:
    """Written before paths were relative: an absolute path, or (Python API) one relative to
    the working directory."""
    post = project / "run" / "export.st"
    pf = read_posterior(post)
    meta = dict(pf.metadata)
    model = {k: v for k, v in meta["model"].items() if k != "absolute_path"}
    if legacy == "absolute":
        model["path"] = str((project / "model.pt2").resolve())
    else:
        model["path"] = "model.pt2"
        monkeypatch.chdir(project)
    meta["model"] = model
    write_posterior(post, dict(pf.tensors), meta)
    result = invoke("marglik", post, "--json")
    assert result.exit_code == 0, result.output
