"""Evaluation reports say what was evaluated and what every number means.

The HTML page and the JSON report carry an identity block (posterior file, model reference,
fingerprint, data spec, split, time, laplace-cli and torch versions); the HTML page has a
glossary entry for every row, metric, setting and identity field it shows; a regression report
names no link approximation (regression has no link function).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import laplace_cli
from laplace_cli.cli.app import app
from laplace_cli.io.posterior_file import read_posterior
from laplace_cli.pipeline.report import glossary_entry

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module", params=["digits_mlp", "diabetes_mlp"])
def evaluated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    folder = SAMPLES / name
    data = folder / "data.yaml"
    post = tmp / "post.st"
    result = invoke(
        "fit", folder / "model.pt2", "--data", data, "--subset", "last_layer",
        "--structure", "diag", "-o", post, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    n_in = 64 if name == "digits_mlp" else 10
    np.savez(tmp / "ood.npz", x=np.random.default_rng(0).normal(3, 1, (30, n_in)).astype("f4"))
    (tmp / "ood.yaml").write_text(yaml.safe_dump({"splits": {"test": {"path": "ood.npz"}}}))
    html, report = tmp / "report.html", tmp / "report.json"
    result = invoke(
        "evaluate", "-p", post, "--data", data, "--ood-data", tmp / "ood.yaml",
        "--html", html, "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {
        "name": name,
        "post": post,
        "data": data,
        "html": html.read_text(encoding="utf-8"),
        "report": json.loads(report.read_text()),
        "stderr": result.stderr,
    }


def test_json_report_has_the_identity_block(evaluated) -> None:
    identity = evaluated["report"]["identity"]
    fingerprint = read_posterior(evaluated["post"]).metadata["fingerprint"]
    assert identity["posterior"] == str(evaluated["post"].resolve())
    assert identity["fingerprint"] == fingerprint
    assert identity["model"]["path"].endswith("model.pt2")
    assert identity["data"] == str(evaluated["data"].resolve())
    assert identity["split"] == "test" and identity["ood_split"] == "test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", identity["created"])
    assert identity["laplace_cli"] == laplace_cli.__version__
    assert identity["torch"] == torch.__version__


def test_html_report_names_posterior_model_data_and_fingerprint(evaluated) -> None:
    page = evaluated["html"]
    identity = evaluated["report"]["identity"]
    assert "What was evaluated" in page
    for key in ("posterior", "fingerprint", "data", "split", "created", "laplace_cli", "torch"):
        assert f"<th>{key}</th>" in page, key
    assert identity["fingerprint"] in page
    assert str(evaluated["post"].resolve()) in page
    assert str(evaluated["data"].resolve()) in page
    assert "model.pt2" in page


def test_every_term_shown_has_a_glossary_entry(evaluated) -> None:
    report, page = evaluated["report"], evaluated["html"]
    terms = set(report["identity"]) | set(report["rows"]) | set(report["settings"])
    for row in report["rows"].values():
        terms |= set(row)
    missing = sorted(t for t in terms if glossary_entry(t) is None)
    assert missing == []
    assert "<h2>Glossary</h2>" in page
    glossary = page.split("<h2>Glossary</h2>", 1)[1]
    for term in ("temperature_la", "prior_precision", "laplace", "map", "auroc"):
        assert f"<code>{term}</code>" in glossary, term
    if evaluated["name"] == "diabetes_mlp":
        assert "<code>variance_scale</code>" in glossary
        assert "<code>coverage_P</code>" in glossary


def test_regression_report_names_no_link_approximation(evaluated) -> None:
    settings = evaluated["report"]["settings"]
    if evaluated["name"] == "digits_mlp":
        assert settings["link_approx"] == "probit"
        return
    assert settings["link_approx"] is None
    settings_html = evaluated["html"].split("<h2>Settings</h2>", 1)[1].split("<h2>", 1)[0]
    assert "probit" not in settings_html
    assert "<th>link_approx</th><td>n/a</td>" in settings_html
    assert "probit" not in evaluated["stderr"]  # the table's Laplace row: "Laplace (glm)"
