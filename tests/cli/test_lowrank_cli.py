"""`--structure lowrank` from the command line: fit → tune → evaluate → predict → inspect → marglik,
and in a recipe, on the sample models; plus the combinations lowrank refuses (exit 2).

lowrank's eigensolver walks the training data once per block Krylov step, so the fit must get a
re-iterable loader: the progress bar around it (`pipeline.ProgressView`) starts afresh on each
pass. The CLI's posterior is compared with the Python API's on the same rows (same seed, so the
same start block): a pass that saw no data, or part of it, would change the eigenpairs.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from laplace_cli import Laplace
from laplace_cli.cli.app import app
from laplace_cli.io.posterior_file import read_posterior
from laplace_cli.pipeline.stages import ProgressView

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"
MLP = SAMPLES / "digits_mlp" / "model.pt2"


def _models_module() -> Any:
    spec = importlib.util.spec_from_file_location("sample_models_models", SAMPLES / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODELS = _models_module()

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(args: list[Any]) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def write_data(model: str, folder: Path, rows: dict[str, int]) -> Path:
    """A data spec over the first rows of a sample model's splits."""
    folder.mkdir(parents=True, exist_ok=True)
    task = "regression" if model == "diabetes_mlp" else "classification"
    lines = [f"task: {task}", "batch_size: 64", "splits:"]
    for split, n in rows.items():
        d = np.load(SAMPLES / model / f"{split}.npz")
        np.savez(folder / f"{split}.npz", x=d["x"][:n], y=d["y"][:n])
        lines.append(f"  {split}: {{path: {split}.npz, x: x, y: y}}")
    (folder / "data.yaml").write_text("\n".join(lines) + "\n")
    return folder / "data.yaml"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(
        "digits_mlp", tmp_path_factory.mktemp("lowrank"), {"train": 150, "val": 60, "test": 40}
    )


def api_lowrank(model: str, data: Path, subset: str, rank: int) -> Laplace:
    """The Python API's lowrank posterior on the same rows, in float64."""
    net = getattr(MODELS, model)()
    net.load_state_dict(load_file(SAMPLES / model / "model.safetensors"))
    net = net.to(torch.float64).eval()
    likelihood = "regression" if model == "diabetes_mlp" else "classification"
    d = np.load(data.parent / "train.npz")
    loader = DataLoader(
        TensorDataset(torch.from_numpy(d["x"]).double(), torch.from_numpy(d["y"])), batch_size=64
    )
    la = Laplace(net, likelihood, subset, "lowrank", rank=rank)
    return la.fit(loader)


# --- the view itself ----------------------------------------------------------------------------
def test_progress_view_is_reiterable_through_a_one_shot_progress() -> None:
    batches = [torch.tensor([i]) for i in range(3)]
    labels: list[str] = []

    def progress(it: Iterable[Any], total: int | None, description: str) -> Iterable[Any]:
        labels.append(f"{description}/{total}")
        yield from it  # a generator, as the CLI's progress bar is: one pass only

    view = ProgressView(batches, progress, "fit")
    assert iter(view) is not view  # Laplace.fit's check for an exhausted iterator passes
    assert [int(b) for b in view] == [0, 1, 2]
    assert [int(b) for b in view] == [0, 1, 2]  # the second pass sees every batch again
    assert len(view) == 3
    assert labels == ["fit/3", "fit (2)/3"]


# --- fit → tune → evaluate → predict → inspect → marglik ----------------------------------------
def test_lowrank_last_layer_through_every_command(digits: Path, tmp_path: Path) -> None:
    post = tmp_path / "post.st"
    fit = invoke(
        [
            "fit", MLP, "--data", digits, "--structure", "lowrank", "--rank", "6",
            "--dtype", "float64", "-o", post, "--json",
        ]
    )  # fmt: skip
    assert fit.exit_code == 0, fit.stderr
    summary = json.loads(fit.stdout)
    assert (summary["structure"], summary["subset"], summary["n_data"]) == (
        "lowrank",
        "last_layer",
        150,
    )
    pf = read_posterior(post)
    assert pf.metadata["rank"] == 6
    assert tuple(pf.tensors["lowrank.U"].shape) == (650, 6)
    api = api_lowrank("digits_mlp", digits, "last_layer", 6)
    torch.testing.assert_close(
        pf.tensors["lowrank.eigvals"], api.posterior.eigvals, rtol=1e-6, atol=1e-9
    )
    assert summary["log_marginal_likelihood"] == pytest.approx(
        float(api.log_marginal_likelihood()), rel=1e-6
    )

    marglik = tmp_path / "marglik.st"
    grid = tmp_path / "grid.st"
    for args in (
        ["tune", "-p", post, "-o", marglik, "--prior-structure", "scalar", "--json"],
        ["tune", "-p", post, "-o", grid, "--method", "gridsearch", "--data", digits, "--json"],
    ):
        tuned = invoke(args)
        assert tuned.exit_code == 0, tuned.stderr
        assert json.loads(tuned.stdout)["prior_precision"]
    evaluate = invoke(["evaluate", "-p", marglik, "--data", digits, "--split", "test", "--json"])
    assert evaluate.exit_code == 0, evaluate.stderr
    assert evaluate.stdout.strip()
    predict = invoke(["predict", "-p", grid, "--data", digits, "--split", "test"])
    assert predict.exit_code == 0, predict.stderr
    rows = [json.loads(line) for line in predict.stdout.splitlines()]
    assert len(rows) == 40 and all(abs(sum(r["probs"]) - 1) < 1e-6 for r in rows)
    inspect = invoke(["inspect", marglik])
    assert inspect.exit_code == 0, inspect.stderr
    assert "lowrank.U" in inspect.stdout + inspect.stderr
    ranked = invoke(["marglik", marglik, grid])
    assert ranked.exit_code == 0, ranked.stderr


def test_lowrank_all_weights_regression(tmp_path: Path) -> None:
    data = write_data("diabetes_mlp", tmp_path / "data", {"train": 120, "val": 40, "test": 40})
    post = tmp_path / "post.st"
    fit = invoke(
        [
            "fit", SAMPLES / "diabetes_mlp" / "model.pt2", "--data", data, "--subset", "all",
            "--structure", "lowrank", "--rank", "4", "--dtype", "float64", "-o", post, "--json",
        ]
    )  # fmt: skip
    assert fit.exit_code == 0, fit.stderr
    api = api_lowrank("diabetes_mlp", data, "all", 4)
    torch.testing.assert_close(
        read_posterior(post).tensors["lowrank.eigvals"], api.posterior.eigvals, rtol=1e-6, atol=0
    )
    tune = invoke(["tune", "-p", post, "--prior-structure", "scalar", "--json"])
    assert tune.exit_code == 0, tune.stderr
    assert "sigma_noise" in json.loads(tune.stdout)
    predict = invoke(["predict", "-p", post, "--data", data, "--split", "test"])
    assert predict.exit_code == 0, predict.stderr
    assert len(predict.stdout.splitlines()) == 40


def test_lowrank_in_a_recipe(digits: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {{path: {MLP}}}\n"
        f"data: {digits}\n"
        "stages: [fit, tune, evaluate, predict]\n"
        "fit: {structure: kron}\n"
        "tune: {method: marglik, prior_structure: scalar}\n"
        "evaluate: {split: test}\n"
        "predict: {split: test, format: jsonl}\n"
    )
    out = tmp_path / "out"
    result = invoke(
        ["run", recipe, "--output", out, "--set", "fit.structure=lowrank", "--set", "fit.rank=5"]
    )
    assert result.exit_code == 0, result.stderr
    pf = read_posterior(out / "posterior.safetensors")
    assert pf.metadata["structure"] == "lowrank"
    assert tuple(pf.tensors["lowrank.U"].shape) == (650, 5)
    assert (out / "report.json").is_file()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 40


# --- what lowrank cannot do: refused before any data is read ------------------------------------
@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--checkpoint-every", "1"], "drop --checkpoint-every/--resume"),
        (["--resume"], "drop --checkpoint-every/--resume"),
    ],
    ids=["checkpoint-every", "resume"],
)
def test_lowrank_refuses_resumable_fits(
    digits: Path, tmp_path: Path, extra: list[str], needle: str
) -> None:
    result = invoke(
        ["fit", MLP, "--data", digits, "--structure", "lowrank", "-o", tmp_path / "p.st", *extra]
    )
    assert result.exit_code == 2, result.stderr
    assert needle in result.stderr and "use diag, kron or full" in result.stderr
    assert not (tmp_path / "p.st").exists()


def test_lowrank_refuses_torchrun(
    digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun (WORLD_SIZE > 1) lowrank is refused before a process group is made."""
    from laplace_cli.pipeline import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed, "_CONTEXT", None)
    result = invoke(["fit", MLP, "--data", digits, "--structure", "lowrank", "-o", tmp_path / "p"])
    assert result.exit_code == 2, result.stderr
    assert "without torchrun" in result.stderr
    assert distributed._CONTEXT is None  # no process group was started
    assert not torch.distributed.is_initialized()
