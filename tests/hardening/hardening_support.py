"""Helpers of the hardening battery: tiny models and data written to a folder, a runner.

Every case goes through the real CLI (`typer.testing.CliRunner` on `laplace_cli.cli.app.app`,
stdout and stderr apart) unless the library is the natural level. Models are weights
(`.safetensors`) plus a factory file, so nothing slow (torch.export) is loaded.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

from laplace_cli.cli.app import app

FACTORIES = textwrap.dedent(
    '''
    """Factories for the hardening tests (written into each test's folder)."""
    import torch
    from torch import nn


    def mlp(n_in=4, hidden=6, n_out=3):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


    def regressor(n_in=4):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(n_in, 5), nn.Tanh(), nn.Linear(5, 1))


    class Sequence(nn.Module):
        """Outputs (B, T, C): one logit vector per time step."""

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x).unsqueeze(1).expand(-1, 2, -1)


    def sequence():
        torch.manual_seed(0)
        return Sequence()


    class NanOnMarkedRows(nn.Module):
        """An MLP whose output is NaN for rows whose first feature is exactly 99."""

        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            out = self.net(x)
            marked = (x[:, :1] == 99).expand_as(out)
            return torch.where(marked, torch.full_like(out, float("nan")), out)


    def nan_on_marked_rows():
        return NanOnMarkedRows()
    '''
)


@dataclass
class Workspace:
    """A folder with a factory file, checkpoints, data files and a dataset spec."""

    root: Path

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    @property
    def factories(self) -> str:
        return f"{self.root / 'factories.py'}"

    def factory(self, name: str) -> str:
        return f"{self.factories}:{name}"

    def spec(self, name: str, text: str) -> Path:
        """Write a dataset spec (YAML text) and return its path."""
        path = self.root / name
        path.write_text(textwrap.dedent(text))
        return path

    def npz(self, name: str, **arrays: Any) -> Path:
        path = self.root / name
        np.savez(path, **arrays)
        return path

    def split_spec(self, name: str, x: np.ndarray, y: np.ndarray, task: str | None = None) -> Path:
        """An npz with `x`, `y` and a spec whose only split `train` points at it."""
        self.npz(f"{name}.npz", x=x, y=y)
        head = f"task: {task}\n" if task else ""
        return self.spec(
            f"{name}.yaml",
            head + f"batch_size: 8\nsplits:\n  train: {{path: {name}.npz, x: x, y: y}}\n",
        )

    def fit_args(
        self,
        data: Path,
        out: Path | None = None,
        *,
        model: str = "mlp.safetensors",
        factory: str = "mlp",
        structure: str = "kron",
        extra: tuple[str, ...] = (),
    ) -> list[str]:
        return [
            "fit",
            str(self.root / model),
            "--model-factory",
            self.factory(factory),
            "--data",
            str(data),
            "-o",
            str(out or self.root / "post.st"),
            "--subset",
            "all",
            "--structure",
            structure,
            "-q",
            *extra,
        ]


def features(n: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype("float32")


def make_workspace(root: Path) -> Workspace:
    """Write factories, checkpoints (one per factory, and one of another width) and data."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "factories.py").write_text(FACTORIES)
    namespace: dict[str, Any] = {}
    exec(compile(FACTORIES, str(root / "factories.py"), "exec"), namespace)
    for file, model in [
        ("mlp.safetensors", namespace["mlp"]()),
        ("mlp_hidden7.safetensors", namespace["mlp"](hidden=7)),
        ("regressor.safetensors", namespace["regressor"]()),
        ("sequence.safetensors", namespace["sequence"]()),
        ("nan.safetensors", namespace["nan_on_marked_rows"]()),
    ]:
        save_file(model.state_dict(), str(root / file))
    ws = Workspace(root)
    x, y = features(), np.arange(20) % 3
    ws.npz("train.npz", x=x, y=y)
    ws.npz("test.npz", x=x[:8], y=y[:8])
    ws.spec(
        "data.yaml",
        """\
        task: classification
        batch_size: 8
        splits:
          train: {path: train.npz, x: x, y: y}
          test: {path: test.npz, x: x, y: y}
        """,
    )
    return ws


@dataclass(frozen=True)
class Case:
    """One row of docs/hardening.md: the table, the case, its exit code and message.

    `message` is what stderr says, after `error: `: several lines joined by ` / `, `...` for
    what is left out; paths are written by their file name only. The autouse fixture
    `_check_documented_case` (conftest.py) fails the test unless one of its runs exited with
    `code` and printed every piece of `message` (for a test with several cases: each case, or
    for a parametrized one at least one case per run), so the documentation cannot drift from
    the behaviour; `tests/hardening/hardening_doc.py` renders the tables from these entries.
    """

    table: str
    text: str
    code: int
    message: str
    also: str = ""  # what else the test checks (the table's last column), e.g. "nothing ran"


def case(table: str, text: str, code: int, message: str, also: str = "") -> Any:
    """Mark a test as the proof of one documented case (see :class:`Case`).

    `message` may be empty (an exit 0, or a case whose point is `also`): then only the exit
    code is matched. `also` documents an assertion of the test body itself.
    """

    def mark(fn: Any) -> Any:
        # Decorators apply bottom-up: keep the cases in the order they are written.
        here = Case(table, text, code, message, also)
        fn.hardening_cases = [here, *getattr(fn, "hardening_cases", [])]
        return fn

    return mark


#: (exit code, stderr) of each run of the current test, for `_check_documented_case`.
OUTCOMES: list[tuple[int, str]] = []


def record(code: int, stderr: str) -> None:
    """Record a run made without `invoke` (a subprocess) for the documented-case check."""
    OUTCOMES.append((code, stderr))


def _short_paths(text: str) -> str:
    """Absolute paths reduced to their file name, as the documentation writes them."""
    return re.sub(r"(?:/[^/\s:'\"(),]+)+/(?=[^/\s])", "", text)


def case_matches(c: Case, code: int, stderr: str) -> bool:
    """Whether one run shows the documented case: the exit code and every piece of the message."""
    if code != c.code:
        return False
    said = " ".join(_short_paths(stderr).split())
    pieces = [p.strip() for line in c.message.split(" / ") for p in line.split("...")]
    return all(" ".join(p.split()) in said for p in pieces if p)


def invoke(runner: CliRunner, args: list[str], code: int, *needles: str) -> Result:
    """Run the CLI; assert the exit code, no traceback, and every needle in stderr.

    Also checks the one-line shape of the table in cli/errors.py: stderr starts with
    `error: ` (never `internal error`) for a non-zero code, and stdout stays empty then.
    """
    result = runner.invoke(app, args)
    record(result.exit_code, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.exit_code == code, (result.exit_code, result.stderr)
    if code != 0:
        assert result.stderr.startswith("error: "), result.stderr
        assert result.stdout == "", result.stdout
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in {result.stderr!r}"
    return result


def model_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
