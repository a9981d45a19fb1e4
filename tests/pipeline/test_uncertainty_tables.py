"""`evaluate`'s selective, conformal and OOD tables, and the binary / multi-label rows (ECE and
the temperature baseline), on tiny models and on the digits sample model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.metrics.binary import apply_binary_temperature, binary_ece, fit_binary_temperature
from laplace_cli.metrics.classification import binary_metrics
from laplace_cli.pipeline.evaluation import evaluate, save_evaluation_outputs

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
pytestmark = pytest.mark.usefixtures("one_thread")


def _write_spec(
    folder: Path, task: str, splits: dict[str, tuple[np.ndarray, np.ndarray | None]]
) -> Path:
    lines = [f"task: {task}", "splits:"]
    for name, (x, y) in splits.items():
        arrays = {"x": x} if y is None else {"x": x, "y": y}
        np.savez(folder / f"{name}.npz", **arrays)
        ykey = "" if y is None else ", y: y"
        lines.append(f"  {name}: {{path: {name}.npz, x: x{ykey}}}")
    path = folder / "data.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("n_labels", [1, 3])
def test_binary_and_multilabel_rows_have_ece_and_temperature(tmp_path: Path, n_labels: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(5, n_labels)
    x = torch.randn(600, 5)
    y = (torch.rand(600, n_labels) < torch.sigmoid(2.5 * x @ w)).float()
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, n_labels)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):  # over-fit a little so the MAP is over-confident
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x[:200]), y[:200]).backward()
        opt.step()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x[:200], y[:200]), batch_size=50
    )
    la = Laplace(model, "binary", "all", "full").fit(loader)
    splits = {
        "train": (x[:200], y[:200]),
        "val": (x[200:400], y[200:400]),
        "test": (x[400:], y[400:]),
    }
    spec = _write_spec(
        tmp_path, "binary", {k: (a.numpy(), b.numpy()) for k, (a, b) in splits.items()}
    )
    result = evaluate(la, spec, options=None, per_label_temperature=n_labels > 1)
    assert set(result.rows) == {"map", "temperature", "laplace"}
    with torch.no_grad():
        z_val, z_test = model(x[200:400]).double(), model(x[400:]).double()
    t = fit_binary_temperature(z_val, y[200:400], per_label=n_labels > 1)
    p_t = apply_binary_temperature(z_test, t)
    mean_ece, per_label = binary_ece(p_t, y[400:])
    assert result.rows["temperature"]["ece"] == pytest.approx(mean_ece)
    assert result.rows["temperature"]["nll"] == pytest.approx(binary_metrics(p_t, y[400:])["nll"])
    assert result.rows["map"]["ece"] == pytest.approx(binary_ece(torch.sigmoid(z_test), y[400:])[0])
    assert "ece" in result.rows["laplace"] and "aurc" in result.rows["laplace"]
    assert result.tables["ece_per_label"]["temperature"] == pytest.approx(
        {f"label_{k}": v for k, v in enumerate(per_label)}
    )
    setting = result.settings["temperature"]
    assert (
        (setting == pytest.approx(t.tolist()))
        if n_labels > 1
        else setting == pytest.approx(float(t[0]))
    )
    # Per-label LAC sets over {0, 1}, by a loop: each label's brute-force quantile of
    # 1 − p(y) on validation, then each test row's set and whether it holds the label's value.
    for row, (p_val, p_test) in {
        "map": (torch.sigmoid(z_val), torch.sigmoid(z_test)),
        "temperature": (apply_binary_temperature(z_val, t), p_t),
    }.items():
        coverages, sizes = [], []
        for k in range(n_labels):
            scores = sorted(
                float(1 - (p if yv == 1 else 1 - p))
                for p, yv in zip(p_val[:, k].tolist(), y[200:400, k].tolist(), strict=True)
            )
            q = scores[int(np.ceil(201 * 0.9)) - 1]  # the ⌈(n + 1)·0.9⌉-th smallest, n = 200
            covered = size = 0
            for p, yv in zip(p_test[:, k].tolist(), y[400:, k].tolist(), strict=True):
                members = {v for v, score in ((0, p), (1, 1 - p)) if score <= q}
                covered += int(yv) in members
                size += len(members)
            coverages.append(covered / 200)
            sizes.append(size / 200)
            if n_labels > 1:
                cells = result.tables["conformal_per_label"][f"{row} lac"]
                assert cells[f"coverage_{k}"] == pytest.approx(coverages[-1])
                assert cells[f"size_{k}"] == pytest.approx(sizes[-1])
                assert cells[f"threshold_{k}"] == pytest.approx(q)
        got = result.tables["conformal"][f"{row} lac"]
        assert got["coverage"] == pytest.approx(sum(coverages) / n_labels)
        assert got["size"] == pytest.approx(sum(sizes) / n_labels)
    assert set(result.tables["conformal"]) == {"map lac", "temperature lac", "laplace lac"}
    assert ("conformal_per_label" in result.tables) == (n_labels > 1)
    html = tmp_path / "report.html"
    save_evaluation_outputs(result, la.likelihood, html=html)
    page = html.read_text()
    assert page.count("<img") == 2  # the reliability diagram (labels pooled) and risk–coverage
    assert "<h2>ECE per label</h2>" in page
    assert "<h2>Conformal prediction</h2>" in page


def _ood_specs(folder: Path) -> dict[str, Path]:
    """Offline shifts of the digits test split: rotated by 90°, and uniform noise."""
    x = np.load(SAMPLES / "digits_mlp" / "test.npz")["x"]
    shifted = {
        "rot90": np.ascontiguousarray(
            np.rot90(x.reshape(-1, 8, 8), 1, axes=(1, 2)).reshape(x.shape)
        ),
        "noise": np.random.default_rng(0).uniform(0, 1, size=x.shape).astype(x.dtype),
    }
    specs = {}
    for name, arr in shifted.items():
        sub = folder / name
        sub.mkdir()
        specs[name] = _write_spec(sub, "classification", {"test": (arr, None)})
    return specs


@pytest.fixture(scope="module")
def digits_posterior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    post = out / "post.safetensors"
    args = [
        "fit",
        str(SAMPLES / "digits_mlp" / "model.pt2"),
        "--data",
        str(SAMPLES / "digits_mlp" / "data.yaml"),
        "--subset",
        "last_layer",
        "--structure",
        "kron",
        "--prior-precision",
        "10",
        "-o",
        str(post),
        "-q",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return post


def test_digits_report_has_selective_conformal_and_ood_tables(
    tmp_path: Path, digits_posterior: Path
) -> None:
    specs = _ood_specs(tmp_path)
    report, html = tmp_path / "report.json", tmp_path / "report.html"
    args = [
        "evaluate",
        "-p",
        str(digits_posterior),
        "--data",
        str(SAMPLES / "digits_mlp" / "data.yaml"),
        "--ood-data",
        f"rot90={specs['rot90']}",
        "--ood-data",
        f"noise={specs['noise']}",
        "--conformal-level",
        "0.9",
        "--report",
        str(report),
        "--html",
        str(html),
        "-q",
        "--fail-if",
        "laplace.aurc > 10*map.aurc",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    tables = data["tables"]
    assert {
        "map max_prob",
        "temperature entropy",
        "laplace mutual_info",
        "laplace logit_var",
    } <= set(tables["selective"])
    conformal = tables["conformal"]
    assert set(conformal) == {
        f"{r} {s}" for r in ("map", "temperature", "laplace") for s in ("lac", "aps")
    }
    for label, row in conformal.items():
        print(f"conformal {label}: coverage {row['coverage']:.4f} size {row['size']:.3f}")
        assert abs(row["coverage"] - 0.9) <= 0.03, label  # n_test = 360
    assert {"rot90 laplace max_prob", "noise map entropy"} <= set(tables["ood"])
    assert set(tables["ood"]["noise laplace max_prob"]) == {"auroc", "aupr_in", "aupr_out", "fpr95"}
    rows = data["rows"]
    assert rows["laplace"]["auroc_noise"] == tables["ood"]["noise laplace max_prob"]["auroc"]
    assert rows["map"]["aurc"] == tables["selective"]["map max_prob"]["aurc"]
    assert data["gates"][0]["failed"] is False
    page = html.read_text()
    for heading in (
        "Selective prediction",
        "Conformal prediction",
        "Out-of-distribution detection",
    ):
        assert f"<h2>{heading}</h2>" in page
    assert page.count("<img") == 2  # the reliability diagram and the risk–coverage curves


def test_ood_data_names_are_checked(tmp_path: Path, digits_posterior: Path) -> None:
    spec = str(SAMPLES / "digits_mlp" / "data.yaml")
    base = ["evaluate", "-p", str(digits_posterior), "--data", spec, "-q"]
    res = CliRunner().invoke(app, [*base, "--ood-data", spec, "--ood-data", spec])
    assert res.exit_code == 2 and "NAME=SPEC" in res.output
    res = CliRunner().invoke(app, [*base, "--ood-data", f"a-b={spec}"])
    assert res.exit_code == 2 and "identifier" in res.output
    res = CliRunner().invoke(app, [*base, "--conformal-level", "1.0"])
    assert res.exit_code == 2


def test_regression_tables_match_a_direct_computation(tmp_path: Path) -> None:
    """diabetes_mlp: the Laplace row's conformal interval coverage / width and its AURC, from
    `la(x)` with a brute-force quantile and a sorted-loop AURC."""
    import math

    from laplace_cli.pipeline.model_loading import load_posterior

    post = tmp_path / "post.st"
    data = SAMPLES / "diabetes_mlp" / "data.yaml"
    args = ["fit", str(SAMPLES / "diabetes_mlp" / "model.pt2"), "--data", str(data),
            "--subset", "all", "--structure", "diag", "-o", str(post), "-q"]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    la = load_posterior(post, device="cpu").la
    result = evaluate(la, data)

    def split(name: str) -> tuple[list[float], list[float], list[float]]:
        arrays = np.load(SAMPLES / "diabetes_mlp" / f"{name}.npz")
        with torch.no_grad():
            mu, f_var = la(torch.from_numpy(arrays["x"]).to(la.dtype))
        var = f_var.reshape(-1) + la.sigma_noise.reshape(()) ** 2
        return mu.reshape(-1).tolist(), var.tolist(), arrays["y"].reshape(-1).tolist()

    mu_v, var_v, y_v = split("val")
    scores = sorted(abs(y - m) / math.sqrt(v) for m, v, y in zip(mu_v, var_v, y_v, strict=True))
    q = scores[math.ceil((len(scores) + 1) * 0.9) - 1]
    mu_t, var_t, y_t = split("test")
    inside = [abs(y - m) <= q * math.sqrt(v) for m, v, y in zip(mu_t, var_t, y_t, strict=True)]
    row = result.tables["conformal"]["laplace normalised"]
    assert row["threshold"] == pytest.approx(q, rel=1e-5)
    assert row["coverage"] == pytest.approx(sum(inside) / len(inside))
    assert row["width"] == pytest.approx(
        sum(2 * q * math.sqrt(v) for v in var_t) / len(var_t), rel=1e-5
    )
    print(
        f"diabetes_mlp laplace normalised conformal coverage {row['coverage']:.4f} (n = {len(y_t)})"
    )
    order = sorted(range(len(y_t)), key=lambda i: var_t[i])  # most confident = smallest variance
    total, acc = 0.0, 0.0
    for k, i in enumerate(order, start=1):
        acc += (y_t[i] - mu_t[i]) ** 2
        total += acc / k
    assert result.rows["laplace"]["aurc"] == pytest.approx(total / len(y_t), rel=1e-5)
    assert set(result.tables["conformal"]) == {
        "map abs_residual",
        "temperature normalised",
        "laplace normalised",
    }
