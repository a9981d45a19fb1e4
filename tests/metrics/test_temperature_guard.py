"""Temperature scaling that should not be trusted is said, and the degenerate case is refused.

A validation split that the MAP logits separate perfectly drives T to its lower bound (the NLL
keeps falling as T → 0): T = 0.01 multiplies the logits by 100, which no test set rewards. Then
T = 1 is used, with a CalibrationWarning. A fitted temperature (or variance scale) that makes
the test NLL worse than the MAP at T = 1 is warned about in `evaluate`, on stderr and in --json.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.cli.console import captured_warnings
from laplace_cli.metrics.temperature import (
    CalibrationWarning,
    fit_temperature,
    fit_temperature_checked,
)

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


def _logits(margin: float, n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    z[torch.arange(n), y] += margin
    return z, y


def test_separable_validation_logits_fall_back_to_one() -> None:
    z, y = _logits(margin=8.0)  # every row's true class wins by a wide margin
    assert fit_temperature(z, y) == pytest.approx(0.01)  # the unguarded fit runs to the bound
    with pytest.warns(CalibrationWarning, match="separated perfectly.*using T = 1"):
        t, note = fit_temperature_checked(z, y)
    assert t == 1.0 and "20 validation rows" in note


def test_upper_bound_is_kept_and_warned() -> None:
    z, y = _logits(margin=-8.0)  # the true class always loses: near-uniform does best
    with pytest.warns(CalibrationWarning, match="hit its bound 100"):
        t, note = fit_temperature_checked(z, y)
    assert t == pytest.approx(100.0) and note is not None


def test_an_ordinary_fit_is_unchanged_and_silent() -> None:
    z, y = _logits(margin=1.0, n=200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t, note = fit_temperature_checked(z, y)
    assert note is None and t == fit_temperature(z, y) and 0.01 < t < 100


def test_cli_warnings_come_out_once_in_the_tools_style(capsys: pytest.CaptureFixture) -> None:
    with captured_warnings() as seen:
        for _ in range(3):
            warnings.warn("the same thing", CalibrationWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == "warning: the same thing\n" and seen == ["the same thing"]


def test_evaluate_warns_when_temperature_scaling_is_worse_than_the_map(tmp_path: Path) -> None:
    """Six validation rows of the digits MLP give T ≈ 3.6, which doubles the test NLL."""
    lines = ["task: classification", "splits:"]
    for split, n in (("train", 200), ("val", 6), ("test", 300)):
        d = np.load(SAMPLES / "digits_mlp" / f"{split}.npz")
        np.savez(tmp_path / f"{split}.npz", x=d["x"][:n], y=d["y"][:n])
        lines.append(f"  {split}: {{path: {split}.npz, x: x, y: y}}")
    data = tmp_path / "data.yaml"
    data.write_text("\n".join(lines) + "\n")
    post = tmp_path / "post.st"
    runner = CliRunner()
    model = SAMPLES / "digits_mlp" / "model.pt2"
    fit = runner.invoke(app, ["fit", str(model), "--data", str(data), "--structure", "diag",
                              "-o", str(post), "-q"])  # fmt: skip
    assert fit.exit_code == 0, fit.stderr
    result = runner.invoke(app, ["evaluate", "-p", str(post), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    rows, note = doc["rows"], doc["settings"].get("temperature_warning")
    assert rows["temperature"]["nll"] > rows["map"]["nll"]
    assert note is not None and "makes the test NLL worse than the MAP at T = 1" in note
    assert result.stderr.count("warning: temperature scaling") == 1
