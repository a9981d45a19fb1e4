"""Fixtures of the hardening battery (helpers live in `hardening_support.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hardening_support import OUTCOMES, Workspace, case_matches, make_workspace
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


@pytest.fixture(autouse=True)
def _check_documented_case(request: pytest.FixtureRequest):
    """A test marked `@case(...)` must show its documented exit codes and messages (see Case)."""
    OUTCOMES.clear()
    yield
    cases = getattr(request.function, "hardening_cases", [])
    call = getattr(request.node, "rep_call", None)
    if not cases or call is None or not call.passed:
        return
    seen = [(code, err[:300]) for code, err in OUTCOMES]
    matched = [c for c in cases if any(case_matches(c, code, err) for code, err in OUTCOMES)]
    # A parametrized test shows one of its cases per run; a plain one shows all of them.
    need = 1 if hasattr(request.node, "callspec") else len(cases)
    assert len(matched) >= need, (
        f"docs/hardening.md says {[(c.code, c.message) for c in cases if c not in matched]}; "
        f"the runs gave {seen}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item, for `_check_documented_case`."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
