"""`laplace fit --curvature hessian` end to end (fit → inspect → predict), and its refusals.

The head of a classifier is linear in its weights, so the exact Hessian of the cross-entropy with
respect to the last layer equals its GGN: the two posteriors must predict the same, while the
file records which curvature was fitted.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from laplace_cli.cli.app import app

DIGITS = Path(__file__).resolve().parents[2] / "sample_models" / "digits_mlp"


def _run(*args: object) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def _probs(path: Path) -> list[list[float]]:
    rows = list(csv.DictReader(path.open()))
    cols = [k for k in rows[0] if k.startswith("prob_")]
    return [[float(r[k]) for k in cols] for r in rows]


@pytest.mark.usefixtures("one_thread")
def test_last_layer_hessian_posterior_predicts_like_the_ggn(tmp_path):
    model, data = DIGITS / "model.pt2", DIGITS / "data.yaml"
    preds = {}
    for curvature in ("hessian", "ggn"):
        post = tmp_path / f"{curvature}.st"
        code, out = _run(
            "fit", model, "--data", data, "--subset", "last_layer", "--structure", "full",
            "--curvature", curvature, "--dtype", "float64", "-o", post, "--quiet",
        )  # fmt: skip
        assert code == 0, out
        code, out = _run("inspect", post, "--json")
        assert code == 0, out
        assert json.loads(out)["metadata"]["curvature"] == curvature
        pred = tmp_path / f"{curvature}.csv"
        code, out = _run("predict", "-p", post, "--data", data, "-o", pred, "--quiet")
        assert code == 0, out
        preds[curvature] = _probs(pred)
    assert len(preds["hessian"]) == len(preds["ggn"]) > 0
    diff = max(abs(a - b) for ra, rb in zip(preds["hessian"], preds["ggn"]) for a, b in zip(ra, rb))
    assert diff <= 1e-9  # float64: equal up to rounding


def test_hessian_with_kron_exits_2_naming_the_alternatives(tmp_path):
    code, out = _run(
        "fit", DIGITS / "model.pt2", "--data", DIGITS / "data.yaml", "--structure", "kron",
        "--curvature", "hessian", "-o", tmp_path / "k.st", "--quiet",
    )  # fmt: skip
    assert code == 2
    assert "no 'kron' form" in out and "'full' or 'diag'" in out
    assert not (tmp_path / "k.st").exists()
