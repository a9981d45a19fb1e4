"""Recipes: every file in recipes/ validates, `--set` overrides, all mistakes reported at once,
and the smallest recipe runs end to end through `laplace run` (plus a run whose gate fails)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.cli.common import parse_overrides
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.posterior_file import read_posterior
from laplace_cli.pipeline.recipes import STAGES, load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
SMALLEST = REPO / "recipes" / "digits_cnn_last_layer_kron.yaml"  # last layer: 330 parameters


pytestmark = pytest.mark.usefixtures("one_thread")

# recipes/fmnist_cnn_kron.yaml reads the IDX files of the Debian package dataset-fashion-mnist.
FMNIST_IDX = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def _skip_without_its_data(path: Path) -> None:
    if path.stem.startswith("fmnist") and not FMNIST_IDX.is_file():
        pytest.skip("needs apt-get install dataset-fashion-mnist")


def invoke(args: list[Any], **kwargs: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def test_recipes_exist() -> None:
    assert len(RECIPES) >= 3
    assert SMALLEST in RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_validates(path: Path) -> None:
    _skip_without_its_data(path)
    recipe = load_recipe(path)
    assert recipe.stages[0] == "fit" and set(recipe.stages) <= set(STAGES)
    # Relative paths were resolved against the recipe's folder and point at real files (a
    # checkpoint file, or a folder such as a PEFT adapter).
    assert Path(recipe.model["path"]).is_absolute() and Path(recipe.model["path"]).exists()
    assert recipe.data.is_file()
    factory = recipe.model.get("factory")
    if factory and ".py:" in factory:
        assert Path(factory.rpartition(":")[0]).is_file()
    for stage in recipe.stages:  # each listed stage has its section (or runs on defaults)
        assert isinstance(recipe.section(stage), dict)
    # The header says how to run and override it (torchtune's habit).
    header = path.read_text().split("\n\n")[0]
    assert f"laplace run recipes/{path.name}" in header
    assert "--set" in header


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_set_overrides_apply(path: Path) -> None:
    _skip_without_its_data(path)
    overrides = parse_overrides(
        [
            "fit.structure=diag",
            "tune.method=marglik",
            "tune.prior_structure=layerwise",
            'evaluate.fail_if=["nll>2*map.nll", "ece>0.1"]',
            "seed=7",
            "predict.format=jsonl",
        ]
    )
    recipe = load_recipe(path, overrides)
    assert recipe.section("fit")["structure"] == "diag"
    assert recipe.section("tune")["method"] == "marglik"
    assert recipe.section("evaluate")["fail_if"] == ["nll>2*map.nll", "ece>0.1"]
    assert recipe.seed == 7 and recipe.section("predict")["format"] == "jsonl"
    # Keys not overridden keep the file's values.
    base = load_recipe(path)
    assert recipe.model == base.model and recipe.data == base.data
    assert recipe.section("fit")["likelihood"] == base.section("fit")["likelihood"]


def test_bad_override_is_checked_like_the_file() -> None:
    with pytest.raises(
        BadInputError, match=r"fit.structure: expected one of .*did you mean 'kron'"
    ):
        load_recipe(SMALLEST, {"fit.structure": "kronn"})
    result = invoke(["run", SMALLEST, "--set", "fit.structure=kronn", "--set", "fit.subsett=all"])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"error: {SMALLEST}: fit.structure: expected one of")
    assert "fit.subsett: unknown key (did you mean 'subset'?)" in lines[1]


BAD_RECIPE = """\
name: broken
model: {factory: nets.py:make}
stages: [tune, fit, fit]
device: cpu
epochs: 3
fit:
  structure: kronn
  prior_precision: high
tune:
  method: gridsearch
  loss: accuracy
evaluate:
  fail_if: ["ece=>0.05"]
predict:
  format: parquet
"""


def test_recipe_with_many_mistakes_reports_all_of_them(tmp_path: Path) -> None:
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(BAD_RECIPE)
    out = tmp_path / "out"
    result = invoke(["run", recipe, "--output", out])
    assert result.exit_code == 2
    assert result.stdout == ""
    err = result.stderr
    assert err.startswith(f"error: {recipe}: ")
    expected = [
        "epochs: unknown key",
        "fit.structure: expected one of diag, kron, full, lowrank, gp, got 'kronn' (did you mean 'kron'?)",
        "fit.prior_precision: expected a number, got 'high'",
        "tune.loss: expected one of nll, ece, brier, mse, got 'accuracy'",
        "predict.format: expected one of csv, jsonl, npz, got 'parquet'",
        "model.path: required",
        "data: required",
        "stages: must start with fit",
        "stages: each stage once",
        "evaluate.fail_if: gate 'ece=>0.05'",
    ]
    missing = [e for e in expected if e not in err]
    assert not missing, f"not reported: {missing}\n{err}"
    assert len(err.splitlines()) == len(expected)  # one line each, no traceback
    assert not out.exists()  # nothing ran


def test_a_mapping_among_the_stages_is_named_not_a_crash(tmp_path: Path) -> None:
    # `tun:` is a one-key mapping to YAML (found by tests/hardening/test_fuzz.py): the stage list
    # holds an unhashable item, which the duplicate check once fed to set()
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("model: {path: model.pt}\ndata: data.yaml\nstages: [fit, tun:, evaluate]\n")
    result = invoke(["run", recipe, "--output", tmp_path / "out"])
    assert result.exit_code == 2
    assert "stages: expected one of fit, tune" in result.stderr
    assert "got {'tun': None}" in result.stderr and "Traceback" not in result.stderr


# --- end to end ----------------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def smallest_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("run") / "digits_cnn"
    return invoke(["run", SMALLEST, "--output", out, "--json"]), out


def test_smallest_recipe_runs_end_to_end(smallest_run: tuple[Any, Path]) -> None:
    result, out = smallest_run
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    summary = json.loads(result.stdout)
    assert summary["stages"] == ["fit", "tune", "evaluate", "predict"]
    assert sorted(p.name for p in out.iterdir()) == [
        "posterior.safetensors",
        "predictions.jsonl",
        "reliability.png",
        "report.html",
        "report.json",
    ]
    assert summary["files"]["predictions"] == str(out / "predictions.jsonl")

    post = read_posterior(out / "posterior.safetensors")
    assert (post.metadata["subset"], post.metadata["structure"]) == ("last_layer", "kron")
    assert post.metadata["tuning"]["method"] == "gridsearch"
    assert post.tensors["prior.precision"].tolist() == summary["tuning"]["prior_precision"]

    report = json.loads((out / "report.json").read_text())
    assert set(report["rows"]) == {"map", "temperature", "laplace"}
    for row in report["rows"].values():
        assert {"acc", "nll", "ece", "brier"} <= set(row)
    assert report["rows"] == summary["evaluation"]["rows"]
    assert [(g["gate"], g["failed"]) for g in report["gates"]] == [("ece>0.05", False)]

    rows = _jsonl(out / "predictions.jsonl")
    assert [r["id"] for r in rows] == list(range(360))  # one row per test example, in order
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")


def test_recipe_agrees_with_the_equivalent_commands(smallest_run: tuple[Any, Path]) -> None:
    """`laplace predict` on the run's posterior reproduces the run's predictions."""
    _, out = smallest_run
    recipe = load_recipe(SMALLEST)
    result = invoke(["predict", "-p", out / "posterior.safetensors", "--data", recipe.data])
    assert result.exit_code == 0, result.stderr
    cli_rows = [json.loads(line) for line in result.stdout.splitlines()]
    run_rows = _jsonl(out / "predictions.jsonl")
    assert len(cli_rows) == len(run_rows)
    fields = ("id", "pred", "probs", "var")  # mutual_info is Monte Carlo
    for a, b in zip(cli_rows, run_rows):
        assert [a[k] for k in fields] == [b[k] for k in fields]


def test_failed_gate_exits_1_and_still_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "gated"
    result = invoke(
        [
            "run", SMALLEST, "--output", out,
            "--set", "stages=[fit, evaluate]",
            "--set", 'evaluate.fail_if=["acc<1.01", "ece>1"]',
            "--set", "evaluate.plot=null", "--set", "evaluate.html=null",
        ]
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stdout == ""
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: gate 'acc<1.01' failed: laplace.acc = ")
    report = json.loads((out / "report.json").read_text())
    assert [(g["gate"], g["failed"]) for g in report["gates"]] == [
        ("acc<1.01", True),
        ("ece>1", False),
    ]
    assert sorted(p.name for p in out.iterdir()) == ["posterior.safetensors", "report.json"]
