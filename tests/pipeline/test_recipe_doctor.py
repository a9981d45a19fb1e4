"""The doctor stage of a recipe: `stages: [fit, tune, evaluate, doctor]` runs `laplace doctor` on
the run's posterior, writes its findings to the output folder and, with `doctor.fail_on:
warning`, makes the run exit 1 on a warning (after every file is written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.core.errors import BadInputError
from laplace_cli.pipeline import doctor
from laplace_cli.pipeline.recipes import validate_recipe

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(folder: Path, **sections) -> Path:
    raw = {
        "model": {"path": str(SAMPLES / "digits_mlp" / "model.pt2")},
        "data": str(SAMPLES / "digits_mlp" / "data.yaml"),
        "stages": ["fit", "tune", "evaluate", "doctor"],
        "fit": {"subset": "all", "structure": "kron"},
        "tune": {"method": "gridsearch"},
        **sections,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(recipe: Path, out: Path) -> object:
    return CliRunner().invoke(app, ["run", str(recipe), "--output", str(out), "--json", "-q"])


def test_doctor_stage_on_the_tuned_sample_finds_nothing_as_laplace_doctor(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _run(_recipe(tmp_path, doctor={"fail_on": "warning"}), out)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    doc = json.loads((out / "doctor.json").read_text())
    assert summary["doctor"] == doc and summary["files"]["doctor"] == str(out / "doctor.json")
    assert doc["split"] == "val" and doc["fail_on"] == "warning" and doc["failed"] is False
    assert doc["worst"] == "ok" and len(doc["findings"]) == 7
    assert (out / "report.json").is_file()
    # The same findings as `laplace doctor` on the posterior file the run wrote.
    res = CliRunner().invoke(app, ["doctor", str(out / "posterior.safetensors"), "--data",
                                   str(SAMPLES / "digits_mlp" / "data.yaml"), "--json", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    alone = json.loads(res.stdout)
    assert [(f["check"], f["severity"]) for f in alone["findings"]] == [
        (f["check"], f["severity"]) for f in doc["findings"]
    ]
    for a, b in zip(alone["findings"], doc["findings"], strict=True):
        for key, value in a["measured"].items():
            if isinstance(value, float):
                assert b["measured"][key] == pytest.approx(value, rel=1e-4, abs=1e-8), key


def test_a_warning_fails_the_run_with_fail_on_warning(tmp_path: Path) -> None:
    # digits_mlp's best prior precision is ~200: a grid 1e-4..1e-1 ends below it (its edge).
    tune = {"method": "gridsearch", "grid_min": -4, "grid_max": -1, "grid_size": 7}
    out = tmp_path / "run"
    res = _run(_recipe(tmp_path, tune=tune, doctor={"fail_on": "warning", "output": "d.json"}), out)
    assert res.exit_code == 1, res.output
    assert "doctor: a finding of severity warning" in res.output
    doc = json.loads((out / "d.json").read_text())
    edge = {f["check"]: f for f in doc["findings"]}["prior_grid_edge"]
    assert edge["severity"] == "warning" and doc["failed"] is True
    assert (out / "report.json").is_file() and (out / "posterior.safetensors").is_file()


def test_fail_on_levels() -> None:
    assert not doctor.fails("error", "never") and not doctor.fails("warning", None)
    assert doctor.fails("warning", "warning") and doctor.fails("error", "warning")
    assert not doctor.fails("warning", "error") and not doctor.fails("info", "warning")
    with pytest.raises(BadInputError, match="never, warning or error"):
        doctor.fails("ok", "sometimes")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"fail_on": "always"}, "doctor.fail_on: expected one of never, warning, error"),
        ({"split": "train"}, "doctor.split: expected one of val, test"),
        ({"splt": "val"}, "doctor.splt"),
    ],
)
def test_bad_doctor_sections_are_refused(tmp_path: Path, section: dict, message: str) -> None:
    raw = yaml.safe_load(_recipe(tmp_path, doctor=section).read_text())
    with pytest.raises(BadInputError, match=message):
        validate_recipe(raw, "r.yaml", tmp_path, check_files=True)


def test_a_split_missing_from_the_spec_is_refused_before_the_fit(tmp_path: Path) -> None:
    spec = yaml.safe_load((SAMPLES / "digits_mlp" / "data.yaml").read_text())
    del spec["splits"]["val"]
    for name in ("train", "test"):
        spec["splits"][name]["path"] = str(SAMPLES / "digits_mlp" / f"{name}.npz")
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(spec))
    raw = yaml.safe_load(_recipe(tmp_path).read_text())
    raw["data"] = str(tmp_path / "data.yaml")
    raw["stages"] = ["fit", "doctor"]
    with pytest.raises(BadInputError, match="doctor.split: 'val' is not a split"):
        validate_recipe(raw, "r.yaml", tmp_path, check_files=True)
