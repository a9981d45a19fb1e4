"""Property-based tests: random specs, recipes, gates, prediction inputs and posterior bytes never
give a traceback.

A quick run of the targets in `fuzz_targets.py` (the long run is `benchmarks/fuzz_readers.py`):
every input gives a value or a `BadInputError` naming the file; through the CLI, exit 0 or 2
with no traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_targets import (
    check_gate,
    check_posterior,
    check_prediction_input,
    check_recipe,
    check_spec,
    gate_texts,
    posterior_bytes,
    prediction_inputs,
    recipe_folder,
    recipe_texts,
    spec_texts,
    valid_posterior_bytes,
)
from hypothesis import HealthCheck, given, settings
from typer.testing import CliRunner

from laplace_cli.cli.app import app

_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid(folder: Path) -> bytes:
    data = valid_posterior_bytes(folder)
    assert check_posterior(data, folder) == "ok"  # the seed itself reads back
    return data


@_SETTINGS
@given(text=spec_texts)
def test_spec_loader_never_raises_anything_else(folder: Path, text: str | bytes) -> None:
    assert check_spec(text, folder) in ("ok", "refused")


def test_posterior_reader_never_raises_anything_else(folder: Path, valid: bytes) -> None:
    @_SETTINGS
    @given(data=posterior_bytes(valid))
    def run(data: bytes) -> None:
        assert check_posterior(data, folder) in ("ok", "refused")

    run()


def test_inspect_through_the_cli(folder: Path, valid: bytes) -> None:
    runner = CliRunner()
    path = folder / "cli.st"

    @settings(_SETTINGS, max_examples=30)
    @given(data=posterior_bytes(valid))
    def run(data: bytes) -> None:
        path.write_bytes(data)
        result = runner.invoke(app, ["inspect", str(path)])
        assert "Traceback" not in result.stdout + result.stderr
        assert result.exit_code in (0, 2), result.stderr
        if result.exit_code == 2:
            assert result.stderr.startswith(f"error: {path}: "), result.stderr

    run()


def test_spec_loader_through_the_cli(folder: Path) -> None:
    runner = CliRunner()
    path = folder / "spec.yaml"
    model = folder / "model.pt"
    model.write_bytes(b"")  # never reached: the spec is read first, or the model is refused

    @settings(_SETTINGS, max_examples=30)
    @given(text=spec_texts)
    def run(text: str | bytes) -> None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        result = runner.invoke(
            app, ["fit", str(model), "-d", str(path), "-o", str(folder / "o.st"), "-q"]
        )
        assert "Traceback" not in result.stdout + result.stderr
        assert result.exit_code == 2, result.stderr
        assert result.stderr.startswith("error: "), result.stderr

    run()


def test_recipe_loader_never_raises_anything_else(folder: Path) -> None:
    where = recipe_folder(folder / "recipes")

    @_SETTINGS
    @given(text=recipe_texts)
    def run(text: str | bytes) -> None:
        assert check_recipe(text, where) in ("ok", "refused")

    run()


@settings(_SETTINGS, max_examples=300)
@given(text=gate_texts)
def test_gate_parser_never_raises_anything_else(text: str) -> None:
    assert check_gate(text) in ("ok", "refused")


@settings(_SETTINGS, max_examples=200)
@given(data=prediction_inputs)
def test_prediction_input_reader_never_raises_anything_else(data: bytes) -> None:
    assert check_prediction_input(data) in ("ok", "refused")


def test_prediction_input_through_the_cli(folder: Path, valid: bytes) -> None:
    """`... | laplace predict -p post.st`: exit 0 or 2 on any stdin, never a traceback."""
    from hardening_support import make_workspace

    ws = make_workspace(folder / "ws")
    runner = CliRunner()
    post = ws / "post.st"
    fitted = runner.invoke(app, ws.fit_args(ws / "data.yaml", post, structure="diag"))
    assert fitted.exit_code == 0, fitted.stderr

    @settings(_SETTINGS, max_examples=30)
    @given(data=prediction_inputs)
    def run(data: bytes) -> None:
        result = runner.invoke(app, ["predict", "-p", str(post), "--input", "-"], input=data)
        assert "Traceback" not in result.stdout + result.stderr
        assert result.exit_code in (0, 2), result.stderr
        if result.exit_code == 2:
            assert result.stderr.startswith("error: "), result.stderr

    run()
