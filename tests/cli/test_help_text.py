"""What `--help` shows: flags as flags, arguments as `MODEL`, and only files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from laplace_cli.cli.app import app

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["fit", "tune", "evaluate", "predict", "run", "inspect", "marglik", "train", "history"]
USAGE = {
    "fit": "Usage: laplace fit [OPTIONS] MODEL",
    "inspect": "Usage: laplace inspect [OPTIONS] POSTERIOR",
    "marglik": "Usage: laplace marglik [OPTIONS] POSTERIORS...",
    "run": "Usage: laplace run [OPTIONS] RECIPE",
    "tune": "Usage: laplace tune [OPTIONS]",
}


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_flags_show_no_value_type(command: str | None) -> None:
    text = _help(*([command] if command else []))
    assert "<bool>" not in text
    assert "{" not in text.splitlines()[1]  # the usage line: no Typer `{model}`
    for flag in ("--help", "--debug"):
        line = next(line for line in text.splitlines() if flag in line)
        assert "<" not in line.split(flag, 1)[1].split("Show")[0].split("(or")[0]


@pytest.mark.parametrize(("command", "usage"), USAGE.items())
def test_usage_names_arguments_in_capitals(command: str, usage: str) -> None:
    assert usage in _help(command)


def test_a_missing_argument_is_named_as_in_the_usage() -> None:
    result = CliRunner().invoke(app, ["fit"])
    assert result.exit_code == 2
    assert "Missing argument 'MODEL'" in result.output


def test_explicit_metavars_are_kept() -> None:
    assert re.search(r"--checkpoint-every\s+N\b", _help("fit"))


# --- files quoted in help texts and documentation ---------------------------------------------
# The look-behind keeps `tests/benchmarks/x.py` from being read as `benchmarks/x.py`.
_REPO_PATH = re.compile(r"(?<![\w/])(?:\.\./)*(?:recipes|sample_models|docs|benchmarks)/[\w./-]*\w")


def _quoted_paths() -> list[tuple[str, Path, str]]:
    """(where, folder its paths are relative to, path) for every repository path quoted."""
    sources: list[tuple[str, Path, str]] = []
    for command in COMMANDS:
        sources.append((f"laplace {command} --help", REPO, _help(command)))
    docs = [REPO / "README.md", REPO / "sample_models" / "README.md", *REPO.glob("docs/*.md")]
    docs += REPO.glob("recipes/*.yaml")
    for doc in docs:
        sources.append((str(doc.relative_to(REPO)), doc.parent, doc.read_text(encoding="utf-8")))
    return [
        (where, base, match) for where, base, text in sources for match in _REPO_PATH.findall(text)
    ]


def test_the_check_finds_the_recipe_paths() -> None:
    quoted = {path for _, _, path in _quoted_paths()}
    assert "recipes/digits_mlp_kron.yaml" in quoted  # `laplace run --help`'s example


def test_every_quoted_repository_path_exists() -> None:
    missing = [
        f"{where}: {path}"
        for where, base, path in _quoted_paths()
        if not (REPO / path).exists() and not (base / path).exists()
    ]
    assert not missing, "\n".join(missing)
