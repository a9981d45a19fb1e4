"""docs/data-spec.md and docs/recipes.md are rendered from the schema the validators read.

A key added to laplace_cli/io/spec_schema.py without regenerating the docs fails here, and so
does a default in the schema that no longer matches the code that applies it.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from laplace_cli.core.errors import BadInputError
from laplace_cli.io import schema_docs, spec_schema
from laplace_cli.io.dataset_specs import (
    DEFAULT_BATCH_SIZE,
    SPLIT_KEYS,
    TOP_KEYS,
    SplitSpec,
    parse_dataset_spec,
)
from laplace_cli.pipeline.recipes import SCHEMA, validate_recipe

REPO = Path(__file__).resolve().parents[2]


def test_committed_docs_match_the_schema() -> None:
    stale = schema_docs.check_docs(REPO / "docs")
    assert stale == [], (
        f"{stale} out of date: run python -m laplace_cli.io.schema_docs --write and commit"
    )


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    schema_docs.write_docs(tmp_path)
    assert schema_docs.main(["--docs", str(tmp_path), "--check"]) == 0
    (tmp_path / "recipes.md").write_text("# hand-edited\n")
    assert schema_docs.main(["--docs", str(tmp_path), "--check"]) == 1


def test_every_documented_key_is_in_the_docs() -> None:
    data_doc = schema_docs.render_data_spec()
    recipe_doc = schema_docs.render_recipes()
    for section in spec_schema.DATA_SPEC_SECTIONS:
        for key in section.keys:
            assert f"| `{key.name}` |" in data_doc
    for section in spec_schema.RECIPE_SECTIONS:
        for key in section.keys:
            assert f"| `{key.name}` |" in recipe_doc


def test_validators_accept_exactly_the_schema_keys() -> None:
    assert TOP_KEYS == spec_schema.keys_of(spec_schema.DATA_SPEC_SECTIONS, "")
    assert SPLIT_KEYS == spec_schema.keys_of(spec_schema.DATA_SPEC_SECTIONS, "splits.<name>")
    for section in spec_schema.RECIPE_SECTIONS:
        assert tuple(SCHEMA[section.path]) == section.names()
    # Every field of a parsed split is a documented key (`y` doubles as `target`).
    fields = {f.name for f in dataclasses.fields(SplitSpec)} - {"name"}
    assert fields <= set(SPLIT_KEYS)


def test_an_undocumented_key_is_refused_with_the_documented_ones(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"splits\.train\.traget: unknown key; did you mean"):
        parse_dataset_spec({"splits": {"train": {"path": "a.csv", "traget": "y"}}})
    with pytest.raises(BadInputError, match=r"fit\.structur: unknown key"):
        validate_recipe(
            {"model": {"path": "m.pt2"}, "data": "d.yaml", "fit": {"structur": "diag"}},
            "r.yaml",
            tmp_path,
        )


def test_doc_examples_validate(tmp_path: Path) -> None:
    spec = parse_dataset_spec(yaml.safe_load(schema_docs.DATA_SPEC_EXAMPLE), base_dir=tmp_path)
    assert set(spec.splits) == {"train", "val", "test", "ood", "texts", "custom"}
    recipe = validate_recipe(yaml.safe_load(schema_docs.RECIPE_EXAMPLE), "r.yaml", tmp_path)
    assert recipe.stages == ["fit", "tune", "evaluate", "predict"]


def test_schema_defaults_match_the_code() -> None:
    from laplace_cli.io.data_formats import FORMATS
    from laplace_cli.io.text import DEFAULT_MAX_LENGTH
    from laplace_cli.pipeline.stages import FitOptions, PredictOptions
    from laplace_cli.tuning.api import optimize_prior_precision

    data_top, data_split = spec_schema.DATA_SPEC_SECTIONS
    assert spec_schema.DATA_FORMATS == FORMATS
    assert data_top.key("batch_size").default == DEFAULT_BATCH_SIZE
    assert data_split.key("max_length").default == DEFAULT_MAX_LENGTH
    assert data_split.key("id").default == SplitSpec(name="s").id
    assert data_split.key("format").choices == FORMATS

    fit = {s.path: s for s in spec_schema.RECIPE_SECTIONS}["fit"]
    options = FitOptions()
    for key in fit.keys:
        if key.default is not spec_schema.UNSET and key.name != "sigma_noise":
            assert getattr(options, key.name) == key.default, key.name
    assert fit.key("sigma_noise").default == 1.0  # pipeline.fit: σ = 1 when not given

    sections = {s.path: s for s in spec_schema.RECIPE_SECTIONS}
    tune_defaults = inspect.signature(optimize_prior_precision).parameters
    for name in ("grid_size", "refine", "loss"):
        assert sections["tune"].key(name).default == tune_defaults[name].default, name
    assert sections["tune"].key("method").default == tune_defaults["method"].default
    predict = PredictOptions()
    for section in ("evaluate", "predict"):
        assert sections[section].key("samples").default == predict.n_samples
    assert sections["predict"].key("interval").default == predict.interval


def test_readme_links_the_docs_and_no_file_points_at_a_missing_design_md() -> None:
    readme = (REPO / "README.md").read_text()
    assert "docs/data-spec.md" in readme and "docs/recipes.md" in readme
    assert "DESIGN.md" not in (REPO / "sample_models" / "README.md").read_text()
    assert "DESIGN.md" not in (REPO / "laplace_cli" / "io" / "datasets.py").read_text()
