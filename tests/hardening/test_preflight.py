"""Every mistake of a dataset spec or recipe in one message, before any model is loaded.

`fit` and `run` look into every split's file (train, val, test, ood, ...), reading headers only
(laplace_cli.io.spec_inputs): a test split that names a missing column fails before the fit,
not an hour later at `evaluate`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from hardening_support import Workspace, case, features, invoke
from typer.testing import CliRunner

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.datasets import load_dataset_spec
from laplace_cli.pipeline import fit_stage
from laplace_cli.pipeline.fit_stage import FitOptions
from laplace_cli.pipeline.model_loading import ModelSpec

THREE = [
    "three.yaml: batchsize: unknown key; did you mean 'batch_size'?",
    "three.yaml: splits.val.path: file not found: ",
    "three.yaml: splits.test.target: no column 'lable' in test.csv; columns: a, b, c, d, label; "
    "did you mean 'label'?",
]


def _csv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    lines = ["a,b,c,d,label"] + [",".join(map(str, r)) + f",{v}" for r, v in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _three_mistakes(ws: Workspace) -> Path:
    _csv(ws / "test.csv", features(8), np.arange(8) % 3)
    return ws.spec(
        "three.yaml",
        """\
        task: classification
        batchsize: 8
        splits:
          train: {path: train.npz, x: x, y: y}
          val: {path: val.npz, x: x, y: y}
          test: {path: test.csv, target: lable}
        """,
    )


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test (exit 70 through the CLI) if the model is loaded: the spec must fail first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the spec was checked")

    monkeypatch.setattr(fit_stage, "load_model_spec", refuse)


@case(
    "preflight",
    "dataset spec with three mistakes (unknown key, val file missing, test target column "
    "missing), `fit`",
    2,
    "three.yaml: batchsize: unknown key; did you mean 'batch_size'? / three.yaml: "
    "splits.val.path: file not found: val.npz / three.yaml: splits.test.target: no column "
    "'lable' in test.csv; columns: a, b, c, d, label; did you mean 'label'?",
)
def test_three_mistakes_in_one_message_from_fit(
    runner: CliRunner, ws: Workspace, no_model_loading: None
) -> None:
    result = invoke(runner, ws.fit_args(_three_mistakes(ws)), 2, *THREE)
    assert len(result.stderr.splitlines()) == 3  # one line each, one message
    assert not (ws / "post.st").exists()


@case(
    "preflight",
    "the same spec named by a recipe (`run`), with a model file that does not exist",
    2,
    "recipe.yaml: model.path: file not found: gone.safetensors / three.yaml: batchsize: ... / "
    "three.yaml: splits.val.path: ... / three.yaml: splits.test.target: ...",
)
def test_three_mistakes_and_the_model_from_a_recipe(
    runner: CliRunner, ws: Workspace, no_model_loading: None
) -> None:
    _three_mistakes(ws)
    recipe = ws.spec(
        "recipe.yaml",
        f"""\
        model: {{path: gone.safetensors, factory: {ws.factories}:mlp}}
        data: three.yaml
        stages: [fit, evaluate]
        fit: {{subset: all, structure: diag}}
        """,
    )
    result = invoke(
        runner,
        ["run", str(recipe), "--output", str(ws / "out")],
        2,
        "recipe.yaml: model.path: file not found: ",
        *THREE,
    )
    assert len(result.stderr.splitlines()) == 4
    assert not (ws / "out").exists()


def test_three_mistakes_from_the_library(ws: Workspace) -> None:
    spec = _three_mistakes(ws)
    with pytest.raises(BadInputError) as err:
        load_dataset_spec(spec, check_files=True)
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(any(t in line for line in lines) for t in THREE)
    # Without check_files (evaluate, predict: the split they read is checked when loaded),
    # the spec's own keys are still all reported.
    with pytest.raises(BadInputError, match="batchsize"):
        load_dataset_spec(spec)


@case(
    "preflight",
    "spec right, but its **test** split names a target column not in the file, `fit`",
    2,
    "miss.yaml: splits.test.target: no column 'lable' in test.csv; columns: a, b, c, d, label; "
    "did you mean 'label'?",
)
def test_a_missing_column_in_the_test_split_fails_fit_before_fitting(
    runner: CliRunner, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _csv(ws / "test.csv", features(8), np.arange(8) % 3)
    data = ws.spec(
        "miss.yaml",
        "task: classification\nsplits:\n  train: {path: train.npz, x: x, y: y}\n"
        "  test: {path: test.csv, target: lable}\n",
    )
    fitted = []
    monkeypatch.setattr(fit_stage, "_fit_curvature", lambda *a, **k: fitted.append(1))
    invoke(runner, ws.fit_args(data), 2, "miss.yaml: splits.test.target: no column 'lable'")
    assert fitted == []
    # The library raises the same before loading the model.
    with pytest.raises(BadInputError, match="splits.test.target: no column 'lable'"):
        fit_stage.fit(
            ModelSpec(str(ws / "gone.safetensors"), ws.factory("mlp")), data, FitOptions()
        )
    # Fixed, the same spec fits.
    monkeypatch.undo()
    (ws / "miss.yaml").write_text((ws / "miss.yaml").read_text().replace("lable", "label"))
    invoke(runner, ws.fit_args(data), 0)


def _spec_with(ws: Workspace, split: str) -> Path:
    return ws.spec(
        "s.yaml",
        f"task: classification\nn_classes: 3\nsplits:\n  train: {{path: train.npz, x: x, y: y}}\n"
        f"  {split}\n",
    )


@pytest.mark.parametrize(
    ("split", "files", "message"),
    [
        (
            "ood: {path: o.npz, x: feats, y: y}",
            {"o.npz": {"x": features(5), "y": np.zeros(5, int)}},
            "s.yaml: splits.ood.x: no feature key 'feats' in o.npz; keys: x, y",
        ),
        (
            "val: {path: v.npz, x: x, y: labels}",
            {"v.npz": {"x": features(5), "y": np.zeros(5, int)}},
            "s.yaml: splits.val.y: no target key 'labels' in v.npz; keys: x, y",
        ),
        (
            "val: {path: v.npz, x: x, y: y}",
            {"v.npz": {"x": features(5), "y": np.zeros(4, int)}},
            "s.yaml: splits.val: v.npz: 5 feature rows but 4 targets",
        ),
        (
            "val: {path: v.npz, x: x, y: y}",
            {"v.npz": {"x": features(5), "y": np.array([0, 1, 2, 3, 0])}},
            "s.yaml: splits.val.y: v.npz: row 3: class label 3 out of range for 3 classes",
        ),
        (
            "val: {path: v.jsonl, x: [a, c], target: label}",
            {"v.jsonl": '{"a": 1, "c": 2, "y": 0}\n'},
            "s.yaml: splits.val.target: no column 'label' in v.jsonl; columns: a, c, y",
        ),
        (
            "val: {path: v.jsonl, x: [a, b], target: y}",
            {"v.jsonl": '{"a": 1, "c": 2, "y": 0}\n'},
            "s.yaml: splits.val.x: no column 'b' in v.jsonl",
        ),
        (
            "val: {path: v.csv, header: false, target: '7'}",
            {"v.csv": "1,2,3\n"},
            "s.yaml: splits.val.target: no column '7' in v.csv; columns: 0, 1, 2",
        ),
        (
            "val: {path: v.npy, y: vy.npy}",
            {"v.npy": features(5), "vy.npy": np.array([0, 1, 2, 5, 0])},
            "s.yaml: splits.val.y: vy.npy: row 3: class label 5 out of range for 3 classes",
        ),
        (
            "val: {path: v.safetensors, x: x, y: target}",
            {"v.safetensors": {"x": features(5), "y": np.zeros(5, np.int64)}},
            "s.yaml: splits.val.y: no target key 'target' in v.safetensors; keys: x, y",
        ),
    ],
    ids=[
        "npz-x",
        "npz-y",
        "npz-rows",
        "npz-labels",
        "jsonl-target",
        "jsonl-x",
        "csv-no-header",
        "npy-labels",
        "safetensors-y",
    ],
)
def test_each_format_is_looked_into(ws: Workspace, split: str, files: dict, message: str) -> None:
    for name, content in files.items():
        path = ws / name
        if isinstance(content, str):
            path.write_text(content)
        elif name.endswith(".npz"):
            np.savez(path, **content)
        elif name.endswith(".safetensors"):
            import torch
            from safetensors.torch import save_file

            save_file({k: torch.from_numpy(v) for k, v in content.items()}, str(path))
        else:
            np.save(path, content)
    with pytest.raises(BadInputError) as err:
        load_dataset_spec(_spec_with(ws, split), check_files=True)
    assert message in str(err.value), str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_only_headers_are_read(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CSV whose rows are garbage after a good header, and an NPZ whose member data is cut
    off after the .npy header, pass the check: neither file's data is read."""
    (ws / "v.csv").write_text("a,b,c,d,label\n" + "not,a,number\n" * 1000)
    np.savez(ws / "big.npz", x=features(5), y=np.zeros(5, int))
    with zipfile.ZipFile(ws / "big.npz") as zf, zipfile.ZipFile(ws / "cut.npz", "w") as out:
        for info in zf.infolist():
            data = zf.read(info)
            out.writestr(info.filename, data[:128])  # the header only, no array data
    spec = ws.spec(
        "h.yaml",
        "splits:\n  train: {path: train.npz, x: x, y: y}\n  val: {path: v.csv, target: label}\n"
        "  test: {path: cut.npz, x: x, y: y}\n",
    )

    def no_loading(*args, **kwargs):
        raise AssertionError("np.load was called: the preflight must read headers only")

    monkeypatch.setattr(np, "load", no_loading)
    load_dataset_spec(spec, check_files=True)  # no error: headers only
