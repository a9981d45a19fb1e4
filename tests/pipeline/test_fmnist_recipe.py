"""The Fashion-MNIST sample (`sample_models/fmnist_cnn`, `recipes/fmnist_cnn_kron.yaml`): the recipe
runs end to end on a few hundred rows (its data spec swapped with `--set data=...`), and the
committed model reproduces the test metrics in `sample_models/metrics.json`.

Both read the IDX files of the Debian package dataset-fashion-mnist and skip without them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.io.datasets import load_dataset_spec, load_split

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "sample_models" / "fmnist_cnn"
IDX = Path("/usr/share/datasets/fashion-mnist")

pytestmark = [
    pytest.mark.skipif(
        not (IDX / "t10k-images-idx3-ubyte.gz").is_file(),
        reason="needs apt-get install dataset-fashion-mnist",
    ),
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\):FutureWarning"),
]


def _small_spec(tmp_path: Path, n: int) -> Path:
    """The committed spec with each split cut to `n` rows from where it starts."""
    spec = yaml.safe_load((FOLDER / "data.yaml").read_text())
    for split in spec["splits"].values():
        start = int(split["rows"].split(":")[0])
        split["rows"] = f"{start}:{start + n}"
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _small_ood(tmp_path: Path, kind: str, n: int) -> Path:
    shifts = FOLDER / "shifts.py"
    path = tmp_path / f"ood_{kind}.yaml"
    kwargs = {"kind": kind, "rows": f"2000:{2000 + n}"}
    path.write_text(
        yaml.safe_dump({"splits": {"test": {"callable": f"{shifts}:shifted", "kwargs": kwargs}}})
    )
    return path


def test_recipe_runs_end_to_end_on_a_row_subset(tmp_path: Path) -> None:
    n = 200
    out = tmp_path / "run"
    args = ["run", str(ROOT / "recipes" / "fmnist_cnn_kron.yaml"), "--output", str(out)]
    args += ["--set", f"data={_small_spec(tmp_path, n)}"]
    for kind in ("rot90", "noise", "digits"):
        args += ["--set", f"evaluate.ood_data.{kind}={_small_ood(tmp_path, kind, 100)}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["n_test"] == n
    assert report["settings"]["subset"] == "last_layer"
    tables = report["tables"]
    for row in ("map", "temperature", "laplace"):
        assert f"{row} max_prob" in tables["selective"]
        for score in ("lac", "aps"):
            cell = tables["conformal"][f"{row} {score}"]
            assert 0.0 <= cell["coverage"] <= 1.0 and cell["size"] > 0
        for kind in ("rot90", "noise", "digits"):
            assert 0.0 <= tables["ood"][f"{kind} {row} max_prob"]["auroc"] <= 1.0
    html = (out / "report.html").read_text()
    assert "conformal" in html.lower() and "digits" in html
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == n and "probs" in json.loads(lines[0])


def test_committed_model_reproduces_its_test_metrics() -> None:
    entry = json.loads((ROOT / "sample_models" / "metrics.json").read_text())["fmnist_cnn"]
    spec = load_dataset_spec(FOLDER / "data.yaml", check_files=True)
    test = load_split(spec, "test")
    assert len(test) == entry["n"]["test"]
    model = torch.export.load(FOLDER / "model.pt2").module()
    assert sum(p.numel() for p in model.parameters()) == entry["n_params"]
    with torch.no_grad():
        logp = model(test.x).double().log_softmax(-1)
    # the weights-plus-factory forms are the same network
    spec = importlib.util.spec_from_file_location(
        "_fmnist_factories", ROOT / "sample_models" / "models.py"
    )
    factories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factories)
    for state in (
        load_file(str(FOLDER / "model.safetensors")),
        torch.load(FOLDER / "model.pt", weights_only=True),
    ):
        plain = factories.fmnist_cnn()
        plain.load_state_dict(state, strict=True)
        with torch.no_grad():
            assert torch.allclose(plain.eval()(test.x).double().log_softmax(-1), logp, atol=1e-5)
    acc = (logp.argmax(-1) == test.y).double().mean().item()
    nll = -logp.gather(-1, test.y[:, None]).mean().item()
    assert acc == pytest.approx(entry["test"]["acc"], abs=2e-6)
    assert nll == pytest.approx(entry["test"]["nll"], abs=2e-6)
    assert entry["test"]["acc"] > 0.85  # a model worth calibrating, not a broken one
