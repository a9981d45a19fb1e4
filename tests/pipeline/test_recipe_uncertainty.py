"""Recipe keys of the uncertainty tables: `evaluate.ood_data` as one path or a mapping of name to
path, `evaluate.conformal_level`, and `tune.conformal` levels stored in the posterior."""

from __future__ import annotations

from pathlib import Path

import pytest

from laplace_cli.core.errors import BadInputError
from laplace_cli.pipeline.recipes import run_recipe, validate_recipe

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"

pytestmark = pytest.mark.usefixtures("one_thread")


def _raw(**sections) -> dict:
    return {
        "model": {"path": str(SAMPLES / "digits_mlp" / "model.pt2")},
        "data": str(SAMPLES / "digits_mlp" / "data.yaml"),
        "fit": {"subset": "last_layer", "structure": "full"},
        **sections,
    }


def test_ood_data_mapping_resolves_each_path_relative_to_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "ood.yaml").write_text((SAMPLES / "digits_mlp" / "data.yaml").read_text())
    for name in ("train.npz", "val.npz", "test.npz"):
        (tmp_path / name).symlink_to(SAMPLES / "digits_mlp" / name)
    recipe = validate_recipe(
        _raw(evaluate={"ood_data": {"a": "ood.yaml", "b": str(tmp_path / "ood.yaml")}}),
        "r.yaml",
        tmp_path,
    )
    assert recipe.section("evaluate")["ood_data"] == {
        "a": str(tmp_path / "ood.yaml"),
        "b": str(tmp_path / "ood.yaml"),
    }
    single = validate_recipe(_raw(evaluate={"ood_data": "ood.yaml"}), "r.yaml", tmp_path)
    assert single.section("evaluate")["ood_data"] == str(tmp_path / "ood.yaml")


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"evaluate": {"ood_data": {"a": 3}}}, "evaluate.ood_data: expected a path or a mapping"),
        ({"evaluate": {"ood_data": {}}}, "evaluate.ood_data: expected a path or a mapping"),
        (
            {"evaluate": {"ood_data": {"rot": "missing.yaml"}}},
            "evaluate.ood_data.rot: file not found",
        ),
        ({"evaluate": {"conformal_level": 1.0}}, "evaluate.conformal_level: expected levels"),
        ({"evaluate": {"conformal_level": "high"}}, "evaluate.conformal_level: expected a number"),
        ({"tune": {"conformal": [0.9, 0]}}, "tune.conformal: expected levels strictly"),
    ],
)
def test_bad_values_are_refused_with_the_key(tmp_path: Path, sections, message) -> None:
    with pytest.raises(BadInputError, match=message.replace(".", r"\.")):
        validate_recipe(_raw(**sections), "r.yaml", tmp_path, check_files=True)


def test_recipe_runs_named_ood_sets_conformal_level_and_tune_levels(tmp_path: Path) -> None:
    data = str(SAMPLES / "digits_mlp" / "data.yaml")
    recipe = validate_recipe(
        _raw(
            stages=["fit", "tune", "evaluate"],
            tune={"method": "gridsearch", "grid_size": 10, "conformal": [0.9]},
            evaluate={"ood_data": {"same": data}, "ood_split": "val", "conformal_level": 0.8},
        ),
        "r.yaml",
        tmp_path,
    )
    result = run_recipe(recipe, tmp_path / "out")
    report = result.evaluation.to_dict()
    assert report["settings"]["conformal_level"] == 0.8
    assert any(key.startswith("same ") for key in report["tables"]["ood"])
    assert "auroc_same" in report["rows"]["laplace"]
    assert list(result.tuning["conformal"]["levels"]) == ["0.9"]
    from laplace_cli.io.posterior_file import read_posterior

    stored = read_posterior(tmp_path / "out" / "posterior.safetensors").metadata["tuning"]
    assert list(stored["conformal"]["levels"]) == ["0.9"]


def test_schema_defaults_match_evaluate_and_tune() -> None:
    import inspect

    from laplace_cli.io import spec_schema
    from laplace_cli.pipeline.evaluation import evaluate

    sections = {s.path: s for s in spec_schema.RECIPE_SECTIONS}
    default = inspect.signature(evaluate).parameters["conformal_level"].default
    assert sections["evaluate"].key("conformal_level").default == default
    assert sections["tune"].key("conformal").default == []  # tune(conformal=None): none stored
