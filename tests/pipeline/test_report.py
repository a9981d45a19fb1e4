"""Tests of the reliability / coverage plots and the self-contained HTML report."""

from __future__ import annotations

import base64
import html
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics import classification as M
from laplace_cli.pipeline.gates import evaluate_gates
from laplace_cli.pipeline.report import plot_coverage, plot_reliability, write_html_report

mpimg = pytest.importorskip("matplotlib.image")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEED = 0


@pytest.fixture
def classification_rows() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(SEED)
    logits = torch.randn(300, 4, generator=g, dtype=torch.float64) * 2
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=g).squeeze(1)
    return {
        "map": ((logits * 3).softmax(dim=1), labels),
        "temperature": (logits.softmax(dim=1), labels),
        "laplace": ((logits * 0.8).softmax(dim=1), labels),
    }


@pytest.fixture
def regression_rows() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(SEED)
    mean = torch.randn(200, 1, generator=g, dtype=torch.float64)
    var = torch.rand(200, 1, generator=g, dtype=torch.float64) + 0.1
    y = mean + var.sqrt() * torch.randn(200, 1, generator=g, dtype=torch.float64)
    return {"map": (mean, var / 4, y), "laplace": (mean, var, y)}


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def no_temp_files(folder: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in folder.iterdir())


def test_plot_reliability_from_probabilities(tmp_path: Path, classification_rows) -> None:
    out = plot_reliability(classification_rows, tmp_path / "reliability.png", title="test split")
    assert out == tmp_path / "reliability.png"
    assert_png(out)
    assert no_temp_files(tmp_path)
    # Three panels side by side: wider than tall.
    image = mpimg.imread(out)
    assert image.shape[1] > 1.5 * image.shape[0]


def test_plot_reliability_from_precomputed_bins(tmp_path: Path, classification_rows) -> None:
    bins = {"map": M.reliability_bins(*classification_rows["map"], n_bins=10)}
    # A row with mostly empty bins (all confidences near 1) draws fine.
    bins["sharp"] = M.reliability_bins(
        torch.tensor([[0.99, 0.01], [0.02, 0.98]], dtype=torch.float64), torch.tensor([0, 0])
    )
    out = plot_reliability(bins, tmp_path / "rel.png")
    assert_png(out)
    with pytest.raises(BadInputError, match="cannot write here"):
        plot_reliability(bins, tmp_path / "missing-folder" / "rel.png")


def test_plot_coverage(tmp_path: Path, regression_rows) -> None:
    assert_png(plot_coverage(regression_rows, tmp_path / "coverage.png"))
    curves = {
        name: M.coverage_curve(*row, levels=[0.5, 0.9]) for name, row in regression_rows.items()
    }
    assert_png(plot_coverage(curves, tmp_path / "coverage2.png", title="two levels"))


def test_plot_replaces_existing_file_atomically(tmp_path: Path, regression_rows) -> None:
    target = tmp_path / "cov.png"
    target.write_bytes(b"old")
    plot_coverage(regression_rows, target)
    assert_png(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cov.png"]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ({}, "expected a non-empty mapping"),
        ({"map": (torch.ones(3, 2),)}, "row 'map': expected \\(probs, labels\\)"),
        ({"map": (torch.ones(3, 2), torch.zeros(3, dtype=torch.long))}, "rows summing to 1"),
    ],
    ids=["empty", "not-a-pair", "bad-probs"],
)
def test_plot_reliability_rejects_bad_rows(tmp_path: Path, rows, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        plot_reliability(rows, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, classification_rows, regression_rows
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(BadInputError, match=re.escape("pip install 'laplace-cli[plot]'")):
        plot_reliability(classification_rows, tmp_path / "rel.png")
    with pytest.raises(BadInputError, match=re.escape("pip install 'laplace-cli[plot]'")):
        plot_coverage(regression_rows, tmp_path / "cov.png")
    assert list(tmp_path.iterdir()) == []


def test_html_report_is_self_contained(tmp_path: Path, classification_rows) -> None:
    png = plot_reliability(classification_rows, tmp_path / "rel.png")
    rows = {name: M.classification_metrics(p, y) for name, (p, y) in classification_rows.items()}
    rows["laplace"]["auroc"] = 0.8765
    gates = evaluate_gates(["ece>0.05", "acc<0.1"], rows)
    settings = {"split": "test", "n_bins": 15, "link_approx": "probit", "grid": [0.1, 1.0]}
    out = write_html_report(
        tmp_path / "report.html",
        "Evaluation <test>",
        rows,
        settings,
        [png],
        gates=gates,
    )
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert '<img src="data:image/png;base64,' in text
    # The embedded image is byte-identical to the PNG file.
    encoded = re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1)
    assert base64.b64decode(encoded) == png.read_bytes()
    # No external references: nothing is fetched when the page is opened.
    assert "http://" not in text and "https://" not in text and 'src="data:' in text
    # Title escaped, metrics table, settings, gates.
    assert "Evaluation &lt;test&gt;" in text and "<test>" not in text
    for name in rows:
        assert f"<th>{name}</th>" in text
    for key in ("acc", "nll", "ece", "mce", "brier", "aece", "auroc"):
        assert f"<th>{key}</th>" in text
    assert f"{rows['map']['ece']:.4g}" in text and "0.8765" in text
    assert "<th>split</th><td>test</td>" in text and "[0.1, 1.0]" in text
    assert html.escape(gates[0].message) in text and 'class="failed"' in text
    assert no_temp_files(tmp_path)


def test_html_report_without_images_and_with_missing_image(tmp_path: Path) -> None:
    rows = {"map": {"rmse": 1.5, "coverage_95": 0.9}}
    out = write_html_report(tmp_path / "r.html", "regression", rows, {})
    assert "<img" not in out.read_text() and "1.5" in out.read_text()
    with pytest.raises(BadInputError, match="missing.png: cannot read the image"):
        write_html_report(tmp_path / "r.html", "t", rows, {}, [tmp_path / "missing.png"])
    with pytest.raises(BadInputError, match="expected an image ending in"):
        write_html_report(tmp_path / "r.html", "t", rows, {}, [out])
    # A failed write leaves the earlier report in place.
    assert "regression" in out.read_text()
    assert no_temp_files(tmp_path)


def test_written_files_get_normal_permissions_and_write_errors_are_bad_input(
    tmp_path: Path,
) -> None:
    umask = os.umask(0)
    os.umask(umask)
    out = write_html_report(tmp_path / "r.html", "t", {"map": {"acc": np.float32(0.5)}}, {})
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert '<td class="num">0.5</td>' in out.read_text()
    (tmp_path / "folder.html").mkdir()
    with pytest.raises(BadInputError, match="folder.html: cannot write"):
        write_html_report(tmp_path / "folder.html", "t", {}, {})
    assert no_temp_files(tmp_path)


def test_html_report_shows_the_bootstrap_intervals_of_report_json(tmp_path: Path) -> None:
    """`evaluate --bootstrap`: every interval of report.json is in the HTML page, as
    "value [lower, upper]", and so are the paired differences."""
    import json

    from typer.testing import CliRunner

    from laplace_cli.cli.app import app

    samples = Path(__file__).resolve().parents[2] / "sample_models" / "diabetes_mlp"
    post, report, page = tmp_path / "post.st", tmp_path / "report.json", tmp_path / "report.html"
    run = CliRunner().invoke
    res = run(app, ["fit", str(samples / "model.pt2"), "--data", str(samples / "data.yaml"),
                    "--subset", "last_layer", "--structure", "full", "-o", str(post), "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = run(app, ["evaluate", "-p", str(post), "--data", str(samples / "data.yaml"),
                    "--bootstrap", "50", "--report", str(report), "--html", str(page), "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(report.read_text())
    text = html.unescape(page.read_text())

    def g4(v: float) -> str:
        return f"{v:.4g}"

    checked = 0
    for row, metrics in doc["intervals"].items():
        for metric, entry in metrics.items():
            if entry["lower"] is None or doc["rows"][row].get(metric) is None:
                continue
            cell = f"{g4(doc['rows'][row][metric])} [{g4(entry['lower'])}, {g4(entry['upper'])}]"
            assert cell in text, (row, metric, cell)
            checked += 1
            for key, diff in entry.items():
                if key.startswith("diff_vs_") and diff["lower"] is not None:
                    d = f"{g4(diff['estimate'])} [{g4(diff['lower'])}, {g4(diff['upper'])}]"
                    assert d in text, (row, metric, key, d)
    assert checked >= 6  # several metrics of every row
    assert "Paired differences" in text and "laplace − map" in text
