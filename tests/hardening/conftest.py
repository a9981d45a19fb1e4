"""Fixtures of the hardening battery (helpers live in `hardening_support.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hardening_support import Workspace, make_workspace
from typer.testing import CliRunner

from laplace_cli.cli.app import app


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace with `post_full.st` (full, all weights) fitted once per test module."""
    ws = make_workspace(tmp_path_factory.mktemp("fitted"))
    result = CliRunner().invoke(
        app, ws.fit_args(ws / "data.yaml", ws / "post_full.st", structure="full")
    )
    assert result.exit_code == 0, result.stderr
    return ws


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("LAPLACE_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()
