"""What `laplace tune` (and fit's summary, `marglik`) tell the user, on tiny sample posteriors.

The default prior structure is the same for both methods and shown in --help; the grid's
range is set with --grid-min/--grid-max/--grid-size (and tune.grid_* in recipes); a tuned
posterior worse than the MAP on the tuning split is said in the output and in --json; library
warnings come out once, in the tool's style; numbers for people have 4 significant digits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from laplace_cli.cli.app import app

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def _data(folder: Path, model: str, rows: dict[str, int]) -> Path:
    """A spec over the first rows of a sample model's splits."""
    folder.mkdir(parents=True, exist_ok=True)
    task = "regression" if model == "diabetes_mlp" else "classification"
    lines = [f"task: {task}", "splits:"]
    for split, n in rows.items():
        d = np.load(SAMPLES / model / f"{split}.npz")
        np.savez(folder / f"{split}.npz", x=d["x"][:n], y=d["y"][:n])
        lines.append(f"  {split}: {{path: {split}.npz, x: x, y: y}}")
    (folder / "data.yaml").write_text("\n".join(lines) + "\n")
    return folder / "data.yaml"


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Diabetes MLP, full last-layer posterior (33 parameters): (posterior, data)."""
    root = tmp_path_factory.mktemp("tune_output")
    data = _data(root, "diabetes_mlp", {"train": 200, "val": 60, "test": 60})
    post = root / "post.st"
    fit = invoke(
        "fit", SAMPLES / "diabetes_mlp" / "model.pt2", "--data", data,
        "--subset", "last_layer", "--structure", "full", "-o", post, "--json",
    )  # fmt: skip
    assert fit.exit_code == 0, fit.stderr
    return post, data


def _copy(post: Path, tmp_path: Path) -> Path:
    out = tmp_path / "p.st"
    out.write_bytes(post.read_bytes())
    return out


# --- the default prior structure ----------------------------------------------------------------
def test_default_prior_structure_is_scalar_for_both_methods_and_shown(
    regression: tuple[Path, Path], tmp_path: Path
) -> None:
    post, data = regression
    help_text = invoke("tune", "--help").stdout
    flat = re.sub(r"[\s│]+", " ", help_text)
    assert "[default: scalar]" in flat
    for extra in ([], ["--method", "gridsearch", "--data", data]):
        result = invoke("tune", "-p", _copy(post, tmp_path), *extra, "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["prior_structure"] == "scalar"


# --- the grid -----------------------------------------------------------------------------------
def test_grid_flags_set_the_grid(regression: tuple[Path, Path], tmp_path: Path) -> None:
    post, data = regression
    result = invoke(
        "tune", "-p", _copy(post, tmp_path), "--method", "gridsearch", "--data", data,
        "--grid-min", "-1", "--grid-max", "3", "--grid-size", "5", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    priors = [row[0] for row in json.loads(result.stdout)["curve"]]
    assert priors == pytest.approx([0.1, 1.0, 10.0, 100.0, 1000.0])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grid-min", "2", "--grid-max", "1"], "--grid-min 2 must be below --grid-max 1"),
        (["--grid-size", "1"], "--grid-size: expected an integer >= 2, got 1"),
        (["--grid-max", "nan"], "--grid-max: expected the log10 of a prior precision"),
    ],
)
def test_bad_grids_are_refused(
    regression: tuple[Path, Path], flags: list[str], message: str
) -> None:
    post, data = regression
    result = invoke("tune", "-p", post, "--method", "gridsearch", "--data", data, *flags)
    assert result.exit_code == 2
    assert message in result.stderr


def test_grid_flags_without_gridsearch_are_refused(regression: tuple[Path, Path]) -> None:
    result = invoke("tune", "-p", regression[0], "--grid-size", "5")
    assert result.exit_code == 2
    assert "--grid-size set the grid of --method gridsearch" in result.stderr


def test_recipe_grid_keys_are_validated() -> None:
    from laplace_cli.core.errors import BadInputError
    from laplace_cli.pipeline.recipes import validate_recipe

    raw = {
        "model": {"path": "m.pt2"},
        "data": "d.yaml",
        "stages": ["fit", "tune"],
        "tune": {"method": "gridsearch", "grid_min": 3, "grid_max": 1, "grid_size": 1},
    }
    with pytest.raises(BadInputError) as err:
        validate_recipe(raw, "r.yaml", REPO)
    assert "r.yaml: tune.grid_min 3 must be below tune.grid_max 1" in str(err.value)
    assert "r.yaml: tune.grid_size: expected an integer >= 2, got 1" in str(err.value)
    raw["tune"].update(grid_min=-1, grid_max=3, grid_size=5)
    assert validate_recipe(raw, "r.yaml", REPO).section("tune")["grid_max"] == 3


# --- worse than the MAP, and the warnings' style ---------------------------------------------------
def test_a_grid_worse_than_the_map_is_said_once_in_the_tools_style(
    regression: tuple[Path, Path], tmp_path: Path
) -> None:
    """Tiny prior precisions only: the predictive variance is far too wide, worse than the MAP."""
    post, data = regression
    args = ["--method", "gridsearch", "--data", data, "--grid-min", "-4", "--grid-max", "-3"]
    human = invoke("tune", "-p", _copy(post, tmp_path), *args, "--grid-size", "3")
    assert human.exit_code == 0, human.stderr
    worse = [ln for ln in human.stderr.splitlines() if "worse than the MAP" in ln]
    assert len(worse) == 1 and worse[0].startswith("warning: the posterior tuned by grid search")
    assert "TuningWarning" not in human.stderr and ".py:" not in human.stderr
    assert "--grid-min / --grid-max" in human.stderr  # the edge warning names the flags
    # The table marks the chosen value; the summary line compares with the MAP.
    assert re.search(r"0\.001 .*← chosen", human.stderr)
    assert "nll on the tuning split: tuned" in human.stderr
    machine = invoke("tune", "-p", _copy(post, tmp_path), *args, "--grid-size", "3", "--json")
    assert machine.exit_code == 0
    doc = json.loads(machine.stdout)
    assert doc["worse_than_map"] is True and doc["tuned_loss"] > doc["map_loss"]
    assert any("worse than the MAP" in w for w in doc["warnings"])
    # stderr is for people, with --json too: the same lines as without it.
    assert [ln for ln in machine.stderr.splitlines() if ln.startswith("warning:")] == [
        f"warning: {w}" for w in doc["warnings"]
    ]


def test_marglik_with_data_is_scored_against_the_map(
    regression: tuple[Path, Path], tmp_path: Path
) -> None:
    post, data = regression
    result = invoke("tune", "-p", _copy(post, tmp_path), "--data", data, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["method"] == "marglik" and doc["loss"] == "nll"
    assert doc["worse_than_map"] is (doc["tuned_loss"] > doc["map_loss"])
    assert isinstance(doc["warnings"], list)
    no_data = json.loads(invoke("tune", "-p", _copy(post, tmp_path), "--json").stdout)
    assert "map_loss" not in no_data


# --- numbers for people ---------------------------------------------------------------------------
def test_regression_tune_prints_short_numbers_and_sigma_noise(
    regression: tuple[Path, Path], tmp_path: Path
) -> None:
    post = _copy(regression[0], tmp_path)
    human = invoke("tune", "-p", post)
    assert human.exit_code == 0, human.stderr
    doc = json.loads(invoke("tune", "-p", post, "--json").stdout)
    (prior,) = doc["prior_precision"]
    (sigma,) = doc["sigma_noise"]
    assert f"prior precision {prior:.4g}\n" in human.stderr
    assert f"sigma_noise {sigma:.4g} (tuned)" in human.stderr
    assert not re.search(r"\d\.\d{6,}", human.stderr), human.stderr  # no 17-digit floats


# --- fit's time covers its summary ----------------------------------------------------------------
def test_fit_reports_the_time_of_everything_it_did(
    regression: tuple[Path, Path], tmp_path: Path
) -> None:
    _, data = regression
    args = ["fit", SAMPLES / "diabetes_mlp" / "model.pt2", "--data", data]
    args += ["--subset", "last_layer", "--structure", "full", "-o", tmp_path / "f.st"]
    doc = json.loads(invoke(*args, "--json").stdout)
    assert doc["total_seconds"] >= doc["fit_seconds"] + doc["summary_seconds"]
    human = invoke(*args)
    assert re.search(
        r"in \d+\.\d\d s \(curvature \d+\.\d\d s, log marginal likelihood \d+\.\d\d s\)",
        human.stderr,
    )


# --- marglik ranks tuned and untuned apart ---------------------------------------------------------
def test_marglik_ranks_tuned_and_untuned_posteriors_apart(
    regression: tuple[Path, Path], tmp_path: Path
) -> None:
    untuned = regression[0]
    tuned = tmp_path / "tuned.st"
    assert invoke("tune", "-p", untuned, "-o", tuned).exit_code == 0
    doc = json.loads(invoke("marglik", untuned, tuned, "--json").stdout)
    assert [e["tuned"] for e in doc["posteriors"]] == [None, "marglik"]
    assert doc["best"] == str(tuned) and doc["best_untuned"] == str(untuned)
    human = invoke("marglik", untuned, tuned)
    assert f"best tuned: {tuned}; best untuned: {untuned}" in human.stderr
