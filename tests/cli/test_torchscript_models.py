"""TorchScript checkpoints (scripted and traced) through fit → tune → evaluate → predict → marglik.

A compiled module takes neither `torch.func.functional_call` nor Python forward hooks, so the
engine substitutes its parameters itself (`laplace_cli.subsets.scripted`) and reads last-layer
features by a second forward pass. The posteriors must equal those of the same weights loaded
as safetensors + factory (real `nn.Linear` layers); K-FAC over all weights, which needs hooks,
is refused with exit 2 and the alternatives.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from laplace_cli.cli.app import app

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
ROWS = {"train": 120, "val": 60, "test": 40}

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def _factory_module() -> Any:
    spec = importlib.util.spec_from_file_location("sample_models_ts", SAMPLES / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save_torchscript(model: torch.nn.Module, folder: Path) -> dict[str, Path]:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        torch.jit.save(torch.jit.script(model), folder / "scripted.pt")
        torch.jit.save(torch.jit.trace(model, torch.rand(3, 64)), folder / "traced.pt")
    return {"scripted": folder / "scripted.pt", "traced": folder / "traced.pt"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Small digits splits; the trained sample MLP and a narrow (hidden=8) one, each saved as
    scripted and traced TorchScript and as safetensors for the factory."""
    root = tmp_path_factory.mktemp("torchscript")
    lines = ["task: classification", "batch_size: 64", "splits:"]
    for split, n in ROWS.items():
        d = np.load(SAMPLES / "digits_mlp" / f"{split}.npz")
        np.savez(root / f"{split}.npz", x=d["x"][:n], y=d["y"][:n])
        lines.append(f"  {split}: {{path: {split}.npz, x: x, y: y}}")
    (root / "data.yaml").write_text("\n".join(lines) + "\n")
    models = _factory_module()
    trained = models.digits_mlp()
    trained.load_state_dict(load_file(SAMPLES / "digits_mlp" / "model.safetensors"))
    (root / "trained").mkdir()
    (root / "narrow").mkdir()
    torch.manual_seed(0)
    narrow = models.digits_mlp(hidden=8)
    save_file(narrow.state_dict(), root / "narrow" / "model.safetensors")
    return {
        "root": root,
        "data": root / "data.yaml",
        "trained": _save_torchscript(trained, root / "trained"),
        "narrow": _save_torchscript(narrow, root / "narrow"),
        "narrow_factory": [
            root / "narrow" / "model.safetensors",
            "--model-factory",
            f"{SAMPLES / 'models.py'}:digits_mlp",
            "--model-kwargs",
            '{"hidden": 8}',
        ],
    }


COMBOS = [
    (form, subset, structure)
    for form in ("scripted", "traced")
    for subset, structure in [
        ("all", "diag"),
        ("all", "full"),
        ("all", "lowrank"),
        ("last_layer", "diag"),
        ("last_layer", "kron"),
        ("last_layer", "full"),
        ("last_layer", "lowrank"),
    ]
    # The low-rank fit over all weights is the slow one; the scripted case covers its path.
    if (form, subset, structure) != ("traced", "all", "lowrank")
]


@pytest.mark.parametrize(("form", "subset", "structure"), COMBOS, ids=["-".join(c) for c in COMBOS])
def test_torchscript_posterior_equals_the_factory_forms(
    ws: dict[str, Any], tmp_path: Path, form: str, subset: str, structure: str
) -> None:
    """Same weights, same posterior: the substituted-parameter Jacobians are the real ones."""
    opts = ["--data", ws["data"], "--subset", subset, "--structure", structure]
    opts += ["--dtype", "float64", "-q"]
    ts = invoke("fit", ws["narrow"][form], *opts, "-o", tmp_path / "ts.st")
    assert ts.exit_code == 0, ts.output
    ref = invoke("fit", *ws["narrow_factory"], *opts, "-o", tmp_path / "ref.st")
    assert ref.exit_code == 0, ref.output
    a, b = load_file(tmp_path / "ts.st"), load_file(tmp_path / "ref.st")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-7, atol=1e-9, msg=key)


@pytest.mark.parametrize("form", ["scripted", "traced"])
def test_torchscript_kron_over_all_weights_is_refused_with_the_alternatives(
    ws: dict[str, Any], tmp_path: Path, form: str
) -> None:
    """Without hooks every tensor would silently get a diagonal block: refuse instead."""
    out = tmp_path / "post.st"
    result = invoke(
        "fit", ws["narrow"][form], "--data", ws["data"], "--subset", "all",
        "--structure", "kron", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "TorchScript" in message
    assert "--structure diag, full or lowrank" in message
    assert "--model-factory" in message
    assert not out.exists()


@pytest.mark.parametrize(
    ("form", "subset", "structure", "predict_opts"),
    [
        ("scripted", "last_layer", "kron", []),  # fit's defaults
        ("traced", "all", "diag", ["--pred-type", "nn", "--samples", "20"]),
    ],
)
def test_torchscript_sample_model_runs_end_to_end(
    ws: dict[str, Any],
    tmp_path: Path,
    form: str,
    subset: str,
    structure: str,
    predict_opts: list[str],
) -> None:
    """The trained sample digits MLP as TorchScript: every command exits 0 with real output,
    and the predictions equal those of the same posterior fitted from model.pt2."""
    data = ws["data"]
    fit_opts = ["--data", data, "--subset", subset, "--structure", structure, "-q"]
    post, ref = tmp_path / "ts.st", tmp_path / "ref.st"
    fit = invoke("fit", ws["trained"][form], *fit_opts, "-o", post, "--json")
    assert fit.exit_code == 0, fit.output
    assert json.loads(fit.stdout)["n_data"] == ROWS["train"]
    assert invoke("fit", SAMPLES / "digits_mlp" / "model.pt2", *fit_opts, "-o", ref).exit_code == 0

    for p in (post, ref):
        tune = invoke("tune", "-p", p, "--prior-structure", "scalar", "-q")
        assert tune.exit_code == 0, tune.output
    grid = invoke(
        "tune", "-p", post, "--method", "gridsearch", "--data", data, "-o", tmp_path / "g.st", "-q"
    )
    assert grid.exit_code == 0, grid.output

    evaluate = invoke("evaluate", "-p", post, "--data", data, "--json", *predict_opts)
    assert evaluate.exit_code == 0, evaluate.output
    metrics = json.loads(evaluate.stdout)["rows"]
    assert metrics["map"]["acc"] > 0.8
    assert 0.0 <= metrics["laplace"]["acc"] <= 1.0

    rows = {}
    for name, p in (("ts", post), ("ref", ref)):
        pred = invoke("predict", "-p", p, "--data", data, *predict_opts)
        assert pred.exit_code == 0, pred.output
        rows[name] = [json.loads(line) for line in pred.stdout.splitlines()]
    assert len(rows["ts"]) == ROWS["test"]
    torch.testing.assert_close(
        torch.tensor([r["probs"] for r in rows["ts"]]),
        torch.tensor([r["probs"] for r in rows["ref"]]),
        rtol=1e-4,
        atol=1e-6,
    )

    marglik = invoke("marglik", post, "--json")
    assert marglik.exit_code == 0, marglik.output
    inspect = invoke("inspect", post, "--json")
    assert inspect.exit_code == 0, inspect.output
    assert json.loads(inspect.stdout)["metadata"]["model"]["form"] == "torchscript"
