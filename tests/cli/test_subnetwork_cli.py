"""`--subset subnetwork` from the command line: `--subnetwork MASK:SIZE|FILE` (and `fit.subnetwork`
in recipes) chooses the parameters, fit → tune → evaluate → predict → inspect → marglik work on
the posterior, and every bad selector is refused with exit 2 before the model is fitted.

The digits MLP (64-64-64-10, P = 8,970 trainable parameters) on its first rows. Each mask's
indices are checked against the library's mask helper on the same weights, and the posterior
against the Python API fitted with those indices.
"""

from __future__ import annotations

import importlib.util
import json
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
from laplace_cli.masks import largest_variance_indices
from laplace_cli.subsets import subnetwork as sub

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"
MLP = SAMPLES / "digits_mlp" / "model.pt2"
P = 8970  # 64·64+64 + 64·64+64 + 64·10+10

pytestmark = pytest.mark.usefixtures("one_thread")


def _models_module() -> Any:
    spec = importlib.util.spec_from_file_location("sample_models_models", SAMPLES / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def invoke(args: list[Any]) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def api_model() -> torch.nn.Module:
    net = _models_module().digits_mlp()
    net.load_state_dict(load_file(SAMPLES / "digits_mlp" / "model.safetensors"))
    return net.to(torch.float64).eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("subnet")
    lines = ["task: classification", "batch_size: 64", "splits:"]
    for split, n in {"train": 120, "val": 60, "test": 40}.items():
        d = np.load(SAMPLES / "digits_mlp" / f"{split}.npz")
        np.savez(folder / f"{split}.npz", x=d["x"][:n], y=d["y"][:n])
        lines.append(f"  {split}: {{path: {split}.npz, x: x, y: y}}")
    (folder / "data.yaml").write_text("\n".join(lines) + "\n")
    return folder / "data.yaml"


def train_loader(data: Path) -> DataLoader:
    d = np.load(data.parent / "train.npz")
    return DataLoader(
        TensorDataset(torch.from_numpy(d["x"]).double(), torch.from_numpy(d["y"])), batch_size=64
    )


def fit(data: Path, out: Path, selector: str, *extra: Any) -> Any:
    return invoke(
        [
            "fit", MLP, "--data", data, "--subset", "subnetwork", "--subnetwork", selector,
            "--structure", "diag", "--dtype", "float64", "-o", out, "--json", *extra,
        ]
    )  # fmt: skip


def indices_of(path: Path) -> list[int]:
    return read_posterior(path).tensors["subnetwork.indices"].tolist()


# --- fit → tune → evaluate → predict → inspect → marglik ----------------------------------------
def test_subnetwork_through_every_command(data: Path, tmp_path: Path) -> None:
    post = tmp_path / "post.st"
    result = invoke(
        [
            "fit", MLP, "--data", data, "--subset", "subnetwork", "--subnetwork",
            "largest_magnitude:96", "--structure", "full", "--dtype", "float64", "-o", post,
            "--json",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["subset"], summary["structure"], summary["n_params"]) == (
        "subnetwork",
        "full",
        96,
    )
    model = api_model()
    expected = sub.largest_magnitude_indices(model, 96)
    assert indices_of(post) == expected.tolist()
    api = Laplace(model, "classification", "subnetwork", "full", subnetwork_indices=expected)
    api.fit(train_loader(data))
    assert summary["log_marginal_likelihood"] == pytest.approx(
        float(api.log_marginal_likelihood()), rel=1e-8
    )

    marglik, grid = tmp_path / "marglik.st", tmp_path / "grid.st"
    for args in (
        ["tune", "-p", post, "-o", marglik, "--prior-structure", "scalar", "--json"],
        ["tune", "-p", post, "-o", grid, "--method", "gridsearch", "--data", data, "--json"],
    ):
        tuned = invoke(args)
        assert tuned.exit_code == 0, tuned.stderr
    assert indices_of(marglik) == indices_of(grid) == expected.tolist()  # kept through tune
    evaluate = invoke(["evaluate", "-p", marglik, "--data", data, "--split", "test", "--json"])
    assert evaluate.exit_code == 0, evaluate.stderr
    predict = invoke(["predict", "-p", grid, "--data", data, "--split", "test"])
    assert predict.exit_code == 0, predict.stderr
    rows = [json.loads(line) for line in predict.stdout.splitlines()]
    assert len(rows) == 40 and all(abs(sum(r["probs"]) - 1) < 1e-6 for r in rows)
    inspect = invoke(["inspect", grid])
    assert inspect.exit_code == 0, inspect.stderr
    assert "subnetwork.indices" in inspect.stdout + inspect.stderr
    ranked = invoke(["marglik", marglik, grid])
    assert ranked.exit_code == 0, ranked.stderr


# --- each mask picks what it says ---------------------------------------------------------------
def _expected(selector: str, model: torch.nn.Module) -> list[int]:
    name, _, arg = selector.partition(":")
    if name == "random":
        return sub.random_indices(model, int(arg), torch.Generator().manual_seed(7)).tolist()
    if name == "last_layer" and not arg:
        return list(range(P - 650, P))  # 4.weight (10·64) and 4.bias, the last tensors
    if name == "param":
        return sub.indices_by_param_name(model, arg.split(",")).tolist()
    return sub.indices_by_module_name(model, arg.split(",")).tolist()


@pytest.mark.parametrize(
    "selector",
    ["random:50", "last_layer", "last_layer:2", "param:2.bias,4.bias", "module:4"],
)
def test_masks_select_the_library_indices(data: Path, tmp_path: Path, selector: str) -> None:
    post = tmp_path / "p.st"
    result = fit(data, post, selector, "--seed", "7")
    assert result.exit_code == 0, result.stderr
    expected = _expected(selector, api_model())
    assert indices_of(post) == expected
    assert json.loads(result.stdout)["n_params"] == len(expected)


def test_largest_variance_ranks_by_a_diagonal_laplace(data: Path, tmp_path: Path) -> None:
    post = tmp_path / "p.st"
    result = fit(data, post, "largest_variance:40")
    assert result.exit_code == 0, result.stderr
    diag = Laplace(api_model(), "classification", "all", "diag").fit(train_loader(data))
    assert indices_of(post) == largest_variance_indices(diag, 40).tolist()


def _write(path: Path, values: Any) -> Path:
    if path.suffix == ".npy":
        np.save(path, np.asarray(values), allow_pickle=True)
    elif path.suffix == ".pt":
        torch.save(values, path)
    else:
        path.write_text(values)
    return path


@pytest.mark.parametrize(
    "name, values, expected",
    [
        ("idx.npy", np.array([8969, 3, 700], dtype=np.int64), [3, 700, 8969]),
        ("idx.pt", torch.tensor([11, 5, 9000 - 31]), [5, 11, 8969]),
        ("idx.pt", [4, 2], [2, 4]),
        ("idx.txt", "# chosen by hand\n10 12, 14\n\n8000\n", [10, 12, 14, 8000]),
        ("mask.npy", np.isin(np.arange(P), [1, 2, 8000]), [1, 2, 8000]),
    ],
    ids=["npy", "pt-tensor", "pt-list", "txt", "npy-bool-mask"],
)
def test_index_files(
    data: Path, tmp_path: Path, name: str, values: Any, expected: list[int]
) -> None:
    path = _write(tmp_path / name, values)
    post = tmp_path / "p.st"
    result = fit(data, post, path)
    assert result.exit_code == 0, result.stderr
    assert indices_of(post) == expected


# --- refusals: exit 2, a message that says what to give ------------------------------------------
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--subset", "subnetwork", "--structure", "diag"], "--subset subnetwork needs --subnetwork"),
        (["--subset", "all", "--subnetwork", "random:5"], "applies to --subset subnetwork only"),
        (["--subnetwork", "random:5"], "applies to --subset subnetwork only"),
        (["--subset", "subnetwork", "--subnetwork", "biggest:5"], "unknown mask 'biggest'"),
        (["--subset", "subnetwork", "--subnetwork", "largest_magnitude:0"], "positive integer"),
        (["--subset", "subnetwork", "--subnetwork", "random:-3"], "positive integer"),
        (["--subset", "subnetwork", "--subnetwork", "random"], "random needs a size"),
        (["--subset", "subnetwork", "--subnetwork", "random:1.5"], "random needs a size"),
        (["--subset", "subnetwork", "--subnetwork", "largest_magnitude:8971"], "more than"),
        (["--subset", "subnetwork", "--subnetwork", "param:nope.weight"], "does not exist"),
        (["--subset", "subnetwork", "--subnetwork", "module:9"], "no module named '9'"),
        (["--subset", "subnetwork", "--subnetwork", "missing.npy"], "not found"),
    ],
    ids=[
        "no-selector", "wrong-subset", "default-subset", "unknown-mask", "size-0",
        "size-negative", "no-size", "size-float", "size-over-P", "bad-param", "bad-module",
        "missing-file",
    ],
)  # fmt: skip
def test_bad_selectors_exit_2(data: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "p.st"
    result = invoke(["fit", MLP, "--data", data, "-o", out, *args])
    assert result.exit_code == 2, result.stderr
    assert needle in result.stderr
    assert not out.exists()


def test_unknown_mask_lists_the_masks(data: Path, tmp_path: Path) -> None:
    result = fit(data, tmp_path / "p.st", "top:5")
    assert result.exit_code == 2
    for mask in ("largest_magnitude:N", "random:N", "largest_variance:N", "last_layer", "param:"):
        assert mask in result.stderr
    assert ".npy" in result.stderr


@pytest.mark.parametrize(
    "name, values, needle",
    [
        ("idx.npy", np.array([0, P]), f"indices must lie in [0, {P})"),
        ("idx.npy", np.array([-1, 3]), f"indices must lie in [0, {P})"),
        ("idx.txt", "1 2 2 3\n", "indices repeat (2)"),
        ("idx.txt", "1 2.5\n", "line 1: '2.5' is not an integer"),
        ("idx.npy", np.array([1.0, 2.0]), "indices must be integers"),
        ("idx.npy", np.array([[1, 2]]), "expected a 1-D list"),
        ("idx.npy", np.array([{"a": 1}], dtype=object), "cannot read"),
        ("idx.txt", "# nothing\n", "no indices"),
        ("mask.npy", np.ones(10, dtype=bool), "one entry per trainable parameter"),
        ("idx.pt", {"indices": torch.tensor([1])}, "expected a 1-D integer tensor or list"),
    ],
    ids=[
        "too-large", "negative", "duplicates", "non-integer-txt", "float-npy", "2d",
        "pickled-npy", "empty", "short-mask", "pt-dict",
    ],
)  # fmt: skip
def test_bad_index_files_exit_2(
    data: Path, tmp_path: Path, name: str, values: Any, needle: str
) -> None:
    path = _write(tmp_path / name, values)
    result = fit(data, tmp_path / "p.st", path)
    assert result.exit_code == 2, result.stderr
    assert needle in result.stderr
    assert str(path) in result.stderr


def test_subnetwork_refuses_kron_with_the_alternatives(data: Path, tmp_path: Path) -> None:
    result = invoke(
        [
            "fit", MLP, "--data", data, "--subset", "subnetwork", "--subnetwork", "random:5",
            "-o", tmp_path / "p.st",
        ]
    )  # fmt: skip
    assert result.exit_code == 2
    assert "subnetwork: diag, full" in result.stderr


# --- recipes: fit.subnetwork --------------------------------------------------------------------
def test_recipe_subnetwork_with_an_index_file_next_to_it(data: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "chosen.npy", np.array([8960, 8961, 100, 7], dtype=np.int64))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {{path: {MLP}}}\n"
        f"data: {data}\n"
        "stages: [fit, tune, evaluate, predict]\n"
        "fit: {subset: subnetwork, structure: full, subnetwork: chosen.npy}\n"
        "tune: {method: marglik, prior_structure: scalar}\n"
        "evaluate: {split: test}\n"
        "predict: {split: test, format: jsonl}\n"
    )
    out = tmp_path / "out"
    result = invoke(["run", recipe, "--output", out])
    assert result.exit_code == 0, result.stderr
    assert indices_of(out / "posterior.safetensors") == [7, 100, 8960, 8961]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 40

    masked = invoke(
        ["run", recipe, "--output", tmp_path / "o2", "--set", "fit.subnetwork=random:20"]
    )
    assert masked.exit_code == 0, masked.stderr
    assert len(indices_of(tmp_path / "o2" / "posterior.safetensors")) == 20


@pytest.mark.parametrize(
    "override, needle",
    [
        ("fit.subnetwork=biggest:3", "fit.subnetwork: unknown mask 'biggest'"),
        ("fit.subnetwork=nothere.npy", "not found"),
    ],
)
def test_recipe_bad_subnetwork_exit_2(
    data: Path, tmp_path: Path, override: str, needle: str
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {{path: {MLP}}}\ndata: {data}\nfit: {{subset: subnetwork, structure: diag}}\n"
    )
    result = invoke(["run", recipe, "--output", tmp_path / "out", "--set", override])
    assert result.exit_code == 2, result.stderr
    assert needle in result.stderr
    missing = invoke(["run", recipe, "--output", tmp_path / "out2"])
    assert missing.exit_code == 2
    assert "subset 'subnetwork' needs a selector" in missing.stderr
