"""`laplace doctor`: --json, exit codes (0 with findings, 1 with --fail-on warning, 2 bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from laplace_cli.cli.app import app

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
DATA = SAMPLES / "digits_mlp" / "data.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("doctor") / "post.st"
    r = invoke("fit", SAMPLES / "digits_mlp" / "model.pt2", "--data", DATA, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    return out


def test_doctor_json_on_a_grid_tuned_posterior_finds_nothing(fitted, tmp_path):
    post = tmp_path / "tuned.st"
    r = invoke("tune", "-p", fitted, "--method", "gridsearch", "--data", DATA, "-o", post, "-q")
    assert r.exit_code == 0, r.output
    r = invoke("doctor", post, "--data", DATA, "--json", "--fail-on", "warning")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    # ok, or skipped where a check does not apply (one layer: fit's default is the last layer)
    assert doc["worst"] in ("ok", "skipped")
    assert not [f for f in doc["findings"] if f["severity"] not in ("ok", "skipped")]
    assert len(doc["findings"]) == 7 and doc["thresholds"]["tv_max"] == 0.1


def test_doctor_exit_codes_on_a_grid_edge(fitted, tmp_path):
    post = tmp_path / "edge.st"
    r = invoke(
        "tune",
        "-p",
        fitted,
        "--method",
        "gridsearch",
        "--data",
        DATA,
        "-o",
        post,
        "--grid-min",
        "-4",
        "--grid-max",
        "-1",
        "--grid-size",
        "7",
        "-q",
    )
    assert r.exit_code == 0, r.output
    r = invoke("doctor", post, "--data", DATA, "--json")
    assert r.exit_code == 0, r.output  # findings alone do not fail
    found = {f["check"]: f["severity"] for f in json.loads(r.stdout)["findings"]}
    assert found["prior_grid_edge"] == "warning"
    assert invoke("doctor", post, "--data", DATA, "--fail-on", "warning", "-q").exit_code == 1
    assert invoke("doctor", post, "--data", DATA, "--fail-on", "error", "-q").exit_code == 0


def test_doctor_bad_split_is_exit_2(fitted):
    r = invoke("doctor", fitted, "--data", DATA, "--split", "train")
    assert r.exit_code == 2 and "val or test" in r.output
