"""`laplace evaluate --bootstrap / --bins / --binning` and gates on interval bounds, on digits_mlp.

The MAP row's intervals are recomputed independently: the model's softmax on the test split
(torch.export, no laplace_cli), and for every resample of the same seeded index stream the
metrics of `classification_metrics` on the materialised resample, then a sorted-list
percentile by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.metrics import bootstrap as BS
from laplace_cli.metrics import classification as M

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "sample_models" / "digits_mlp"

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(args: list[Any]) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def posterior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("intervals") / "post.st"
    result = invoke(
        ["fit", DIGITS / "model.pt2", "--data", DIGITS / "data.yaml", "--subset", "last_layer"]
        + ["--structure", "diag", "-o", out, "--quiet"]
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def map_probs() -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(DIGITS / "test.npz")
    model = torch.export.load(str(DIGITS / "model.pt2")).module()
    with torch.no_grad():
        logits = model(torch.as_tensor(data["x"]))
    return torch.softmax(logits.double(), -1), torch.as_tensor(data["y"])


def evaluate_json(posterior: Path, *extra: Any) -> tuple[Any, dict[str, Any]]:
    result = invoke(["evaluate", "-p", posterior, "--data", DIGITS / "data.yaml", "--json", *extra])
    return result, (json.loads(result.stdout) if result.exit_code in (0, 1) else {})


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def test_map_intervals_match_an_independent_loop(posterior: Path, map_probs: Any) -> None:
    b, seed, bins = 60, 7, 10
    result, report = evaluate_json(
        posterior,
        "--bootstrap",
        b,
        "--seed",
        seed,
        "--bins",
        bins,
        "--binning",
        "equal-mass",
        "--interval-method",
        "percentile",  # the default is prediction; this test checks percentile
    )
    assert result.exit_code == 0, result.output
    settings = report["settings"]
    assert settings["n_bins"] == bins and settings["binning"] == "equal-mass"
    assert settings["bootstrap"] == {
        "n_resamples": b,
        "confidence": 0.95,
        "seed": seed,
        "method": "percentile",
        "stratified_by": "label",
    }
    probs, labels = map_probs
    # The rows: ece over 10 equal-mass bins is the adaptive ECE; rows stay plain numbers.
    assert report["rows"]["map"]["ece"] == pytest.approx(
        M.adaptive_ece(probs, labels, bins), abs=1e-6
    )
    chunks = list(BS.resample_indices([len(labels)], b, seed=seed, strata=[labels]))
    idx = torch.cat([c[0] for c in chunks])
    per_resample = [M.classification_metrics(probs[r], labels[r], bins, "equal-mass") for r in idx]
    for metric in ("acc", "nll", "ece", "brier", "aece"):
        values = [m[metric] for m in per_resample]
        got = report["intervals"]["map"][metric]
        # The CLI's model runs in float32 and this one in float64 (after the softmax):
        # tolerances well below the intervals' widths.
        assert got["lower"] == pytest.approx(percentile(values, 0.025), abs=2e-5), metric
        assert got["upper"] == pytest.approx(percentile(values, 0.975), abs=2e-5), metric
    # Paired difference: laplace − map per resample, with its estimate from the rows.
    d = report["intervals"]["laplace"]["nll"]["diff_vs_map"]
    assert d["estimate"] == pytest.approx(
        report["rows"]["laplace"]["nll"] - report["rows"]["map"]["nll"], abs=1e-12
    )
    assert d["lower"] <= d["upper"]


def test_same_seed_same_intervals_and_gates_read_them(posterior: Path) -> None:
    gates = ["laplace.ece.upper > 0.5", "laplace.nll.diff_vs_map.lower > -100"]
    args = ["--bootstrap", 50, "--seed", 3] + [a for g in gates for a in ("--fail-if", g)]
    first, report = evaluate_json(posterior, *args)
    again, report_again = evaluate_json(posterior, *args)
    other, report_other = evaluate_json(posterior, "--bootstrap", 50, "--seed", 4)
    assert report["intervals"] == report_again["intervals"]
    assert report["intervals"] != report_other["intervals"]
    # Gate 1 passes (an ECE upper bound of 0.5 is far above this model's), gate 2 fails.
    assert first.exit_code == 1, first.output
    g1, g2 = report["gates"]
    assert not g1["failed"] and g1["value"] == report["intervals"]["laplace"]["ece"]["upper"]
    assert g2["failed"]
    assert g2["value"] == report["intervals"]["laplace"]["nll"]["diff_vs_map"]["lower"]


def test_point_difference_needs_no_bootstrap(posterior: Path) -> None:
    result, report = evaluate_json(posterior, "--fail-if", "nll.diff_vs_map > 100")
    assert result.exit_code == 0, result.output
    gate = report["gates"][0]
    rows = report["rows"]
    assert gate["value"] == pytest.approx(rows["laplace"]["nll"] - rows["map"]["nll"], abs=1e-12)
    assert "intervals" not in report and report["settings"]["bootstrap"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fail-if", "laplace.ece.upper > 0.05"], "needs bootstrap intervals: pass --bootstrap"),
        (["--bootstrap", 10, "--binning", "quantile"], "--binning: expected one of"),
        (["--bootstrap", 10, "--interval-method", "bca"], "--interval-method: expected one of"),
        (["--bootstrap", 10, "--confidence", 1.5], "--confidence: expected a number in"),
        (["--bootstrap", 10, "--fail-if", "mce.upper > 1"], None),  # accepted (control)
    ],
)
def test_bad_flags_exit_2_before_any_work(posterior: Path, args: list[Any], message: str) -> None:
    result = invoke(["evaluate", "-p", posterior, "--data", DIGITS / "data.yaml", *args])
    if message is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert message in result.output and len(lines) == 1, result.output
