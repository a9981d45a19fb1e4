"""The committed sample models in ``sample_models/`` load in every form and reproduce."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
NAMES = ["digits_mlp", "digits_cnn", "diabetes_mlp"]
SPLITS = ["train", "val", "test"]
HEADLINE = {"acc", "nll", "rmse"}

# torch.export.load emits this deprecation from inside torch; it is not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\):FutureWarning")


def _factories():
    spec = importlib.util.spec_from_file_location("_sample_factories", SAMPLES / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((SAMPLES / "metrics.json").read_text())


def _split(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(SAMPLES / name / f"{split}.npz") as f:
        return torch.from_numpy(f["x"]), torch.from_numpy(f["y"])


def _from_factory(name: str, weights: Path, metrics: dict) -> torch.nn.Module:
    entry = metrics[name]
    assert entry["factory"] == f"sample_models/models.py:{name}"
    model = getattr(_factories(), name)(**entry["kwargs"])
    if weights.suffix == ".safetensors":
        state = load_file(str(weights))
    else:
        state = torch.load(weights, weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _load(name: str, form: str, metrics: dict) -> torch.nn.Module:
    folder = SAMPLES / name
    if form == "pt2":
        return torch.export.load(folder / "model.pt2").module()
    if form == "unflatten":
        return torch.export.unflatten(torch.export.load(folder / "model.pt2"))
    return _from_factory(name, folder / f"model.{form}", metrics)


def _test_metrics(out: torch.Tensor, y: torch.Tensor, entry: dict) -> dict:
    if entry["task"] == "classification":
        logp = out.double().log_softmax(-1)
        return {
            "acc": (logp.argmax(-1) == y).double().mean().item(),
            "nll": -logp.gather(-1, y[:, None]).mean().item(),
        }
    mse = ((out.double() - y.double()) ** 2).mean().item()
    sigma = entry["sigma_noise"]
    return {
        "rmse": math.sqrt(mse),
        "nll": 0.5 * math.log(2 * math.pi * sigma**2) + 0.5 * mse / sigma**2,
    }


@pytest.mark.parametrize("name", NAMES)
def test_data_files_follow_the_dataset_spec(name: str, metrics: dict) -> None:
    spec = yaml.safe_load((SAMPLES / name / "data.yaml").read_text())
    task = metrics[name]["task"]
    assert spec["task"] == task
    assert isinstance(spec["batch_size"], int)
    assert set(spec["splits"]) == set(SPLITS)
    feature_shape = {"digits_mlp": (64,), "digits_cnn": (1, 8, 8), "diabetes_mlp": (10,)}[name]
    for split in SPLITS:
        entry = spec["splits"][split]
        assert entry == {"path": f"{split}.npz", "x": "x", "y": "y"}
        with np.load(SAMPLES / name / entry["path"]) as f:
            x, y = f["x"], f["y"]
        assert x.dtype == np.float32 and x.shape[1:] == feature_shape
        assert len(y) == len(x) == metrics[name]["n"][split]
        if task == "classification":
            assert y.dtype == np.int64 and y.ndim == 1
            assert x.min() >= 0.0 and x.max() <= 1.0
            assert set(np.unique(y)) == set(range(10))
        else:
            assert y.dtype == np.float32 and y.shape == (len(x), 1)


@pytest.mark.parametrize("name", NAMES)
def test_all_checkpoint_forms_agree_and_reproduce_metrics(name: str, metrics: dict) -> None:
    x, y = _split(name, "test")
    entry = metrics[name]
    outputs = {}
    for form in ["pt2", "unflatten", "safetensors", "pt"]:
        model = _load(name, form, metrics)
        n_params = sum(p.numel() for p in model.parameters())
        assert n_params == entry["n_params"], form
        with torch.no_grad():
            outputs[form] = model(x)
    ref = outputs["pt2"]
    assert ref.shape == (len(x), 10 if entry["task"] == "classification" else 1)
    for form, out in outputs.items():
        assert torch.allclose(out, ref, atol=1e-6), form
        got = _test_metrics(out, y, entry)
        for key, value in got.items():
            assert value == pytest.approx(entry["test"][key], abs=2e-6), (form, key)


@pytest.mark.parametrize("name", NAMES)
def test_pt2_has_dynamic_batch_and_same_parameter_names(name: str, metrics: dict) -> None:
    x, _ = _split(name, "test")
    exported = _load(name, "pt2", metrics)
    plain = _load(name, "safetensors", metrics)
    assert [n for n, _ in exported.named_parameters()] == [n for n, _ in plain.named_parameters()]
    with torch.no_grad():
        for batch in (1, 37, 256):
            assert torch.allclose(exported(x[:batch]), plain(x[:batch]), atol=1e-6)
    # last-layer Laplace relies on the final module being a Linear layer
    assert isinstance(list(plain.children())[-1], torch.nn.Linear)


def test_samples_are_small() -> None:
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024


def test_regeneration_reproduces_committed_metrics(tmp_path: Path, metrics: dict) -> None:
    proc = subprocess.run(
        [sys.executable, str(SAMPLES / "make_samples.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert printed == written
    for name in NAMES:
        assert written[name]["n_params"] == metrics[name]["n_params"]
        assert written[name]["n"] == metrics[name]["n"]
        for key, value in metrics[name]["test"].items():
            # headline metrics within 1 %; ECE, Brier, MAE and R^2 within 0.01 absolute
            tol = {"rel": 0.01} if key in HEADLINE else {"abs": 0.01}
            assert written[name]["test"][key] == pytest.approx(value, **tol), (name, key)
        for split in SPLITS:
            x_new, y_new = (np.load(tmp_path / name / f"{split}.npz")[k] for k in ("x", "y"))
            x_old, y_old = _split(name, split)
            np.testing.assert_array_equal(x_new, x_old.numpy())
            np.testing.assert_array_equal(y_new, y_old.numpy())
