"""Whole pickled modules (`torch.save(model)`): `--trust-checkpoint` on every command that loads
the model, and the pickle's classes imported from the working directory.

The pickle names its class as `<module>.Net`; the module lives in a user's folder, as a
`nets.py` beside their training script would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from laplace_cli.cli.app import app

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
NETS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 8)
            self.fc2 = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))
    """
)

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def _project(folder: Path, module: str) -> Path:
    """`folder` with `<module>.py`, a pickled `<module>.Net` as model.pt and small digits data."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(NETS)
    # Pickled in a child process, so that this process has not imported the module.
    code = f"import torch, {module}; torch.manual_seed(0); torch.save({module}.Net(), 'model.pt')"
    subprocess.run([sys.executable, "-c", code], cwd=folder, check=True)
    lines = ["task: classification", "batch_size: 64", "splits:"]
    for split, n in {"train": 80, "val": 40, "test": 30}.items():
        d = np.load(SAMPLES / "digits_mlp" / f"{split}.npz")
        np.savez(folder / f"{split}.npz", x=d["x"][:n], y=d["y"][:n])
        lines.append(f"  {split}: {{path: {split}.npz, x: x, y: y}}")
    (folder / "data.yaml").write_text("\n".join(lines) + "\n")
    return folder


def test_every_command_that_loads_the_model_takes_trust_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fit --trust-checkpoint, then tune / evaluate / predict / marglik: refused without the
    flag (exit 2, naming it), working with it (exit 0)."""
    module = "trusted_nets_cli"
    folder = _project(tmp_path / "proj", module)
    monkeypatch.chdir(folder)
    monkeypatch.delitem(sys.modules, module, raising=False)  # imported by the fit below
    fit = invoke("fit", "model.pt", "--data", "data.yaml", "--structure", "diag", "-o", "post.st")
    assert fit.exit_code == 2 and "--trust-checkpoint" in fit.stderr
    fit = invoke(
        "fit", "model.pt", "--trust-checkpoint", "--data", "data.yaml", "--structure", "diag",
        "-o", "post.st", "-q",
    )  # fmt: skip
    assert fit.exit_code == 0, fit.output
    commands = {
        "tune": ["tune", "-p", "post.st", "-o", "tuned.st", "-q"],
        "evaluate": ["evaluate", "-p", "post.st", "--data", "data.yaml", "-q"],
        "predict": ["predict", "-p", "post.st", "--data", "data.yaml", "-o", "rows.csv", "-q"],
        "marglik": ["marglik", "post.st", "-q"],
    }
    for name, args in commands.items():
        refused = invoke(*args)
        assert refused.exit_code == 2, (name, refused.output)
        assert "--trust-checkpoint" in refused.stderr, name
        trusted = invoke(*args, "--trust-checkpoint")
        assert trusted.exit_code == 0, (name, trusted.output)
    assert len((folder / "rows.csv").read_text().splitlines()) == 1 + 30  # header + rows
    # --model with a pickle needs the flag as well.
    override = invoke(*commands["marglik"], "--model", "model.pt", "--trust-checkpoint")
    assert override.exit_code == 0, override.output


def _laplace_script() -> Path:
    script = Path(sys.executable).parent / "laplace"
    if not script.is_file():
        pytest.skip("the `laplace` console script is not installed beside this interpreter")
    return script


def test_a_pickle_imports_its_module_from_the_working_directory(tmp_path: Path) -> None:
    """The `laplace` script (unlike `python -m`) does not put the working directory on the
    import path by itself; run from the project folder, the pickle's module must import."""
    folder = _project(tmp_path / "proj", "nets")
    result = subprocess.run(
        [str(_laplace_script()), "fit", "model.pt", "--trust-checkpoint", "--data", "data.yaml"]
        + ["--structure", "diag", "-o", "post.st", "-q"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "No module named" not in result.stderr
    assert (folder / "post.st").is_file()
