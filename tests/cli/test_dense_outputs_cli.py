"""Dense outputs (B, C, *S) through the command line: fit → tune → evaluate → predict (NPZ),
kron over all weights and the 1×1-conv last layer, and a recipe; on a tiny segmentation net
built here (not the trained sample).

Every number is checked against an independent computation: the posterior fitted with the
Python API on the same rows (`Laplace(..., output_positions=...)`), its `la(x)` and
`position_variance`, and `metrics.segmentation.segmentation_metrics` on those predictions.
Masked pixels (the spec's `ignore_index`) are left out of the fit's loss and every metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from laplace_cli import Laplace
from laplace_cli.cli.app import app
from laplace_cli.io.posterior_file import read_posterior
from laplace_cli.laplace.dense_outputs import position_variance
from laplace_cli.metrics.segmentation import segmentation_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

IGNORE = 255  # the spec's ignore_index (not the default -100: the key must be read)
SIZE = 5

FACTORY = """
import torch
from torch import nn


def tiny_seg():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1)
    )
"""


def invoke(args: list[Any]) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images whose label is a thresholded blur, with some pixels masked."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, SIZE, SIZE)).astype(np.float32)
    y = np.digitize(x[:, 0], [-0.4, 0.4]).astype(np.int64)  # classes 0, 1, 2
    y[rng.random(y.shape) < 0.15] = IGNORE
    return x, y


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The model, the data and the CLI's fitted + tuned posteriors (kron all, last layer)."""
    d = tmp_path_factory.mktemp("dense_cli")
    (d / "nets.py").write_text(FACTORY)
    ns: dict[str, Any] = {}
    exec(FACTORY, ns)  # noqa: S102 - the factory text above
    model = ns["tiny_seg"]()
    # Train a few steps so the MAP is not random (a posterior around a minimum-ish point).
    x, y = _split(24, 0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(xt), yt, ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors")
    np.savez(d / "train.npz", x=x, y=y)
    for name, seed, n in (("val", 1, 8), ("test", 2, 8)):
        np.savez(d / f"{name}.npz", *(), **dict(zip(("x", "y"), _split(n, seed), strict=True)))
    (d / "data.yaml").write_text(
        "task: classification\nbatch_size: 16\nignore_index: 255\nsplits:\n"
        + "".join(f"  {s}: {{path: {s}.npz, x: x, y: y}}\n" for s in ("train", "val", "test"))
    )
    common = ["--model-factory", d / "nets.py:tiny_seg", "--data", d / "data.yaml"]
    posts = {}
    for subset in ("all", "last_layer"):
        post = d / f"{subset}.st"
        r = invoke(
            ["fit", d / "model.safetensors", *common, "--subset", subset, "--structure", "kron"]
            + ["--output-positions", "independent", "-o", post, "--quiet"]
        )
        assert r.exit_code == 0, r.output
        posts[subset] = post
    r = invoke(["tune", "-p", posts["all"], "--method", "gridsearch", "--data", d / "data.yaml"]
               + ["--grid-size", "4", "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = invoke(["tune", "-p", posts["last_layer"], "--method", "marglik", "--quiet"])
    assert r.exit_code == 0, r.output
    return {"dir": d, "posts": posts, "model_factory": ns["tiny_seg"]}


def _model(work: dict[str, Any]) -> nn.Module:
    net = work["model_factory"]()
    net.load_state_dict(load_file(work["dir"] / "model.safetensors"))
    return net.eval()


def _api_laplace(work: dict[str, Any], subset: str) -> Laplace:
    """The same posterior from the Python API: fitted on the same rows, the CLI's prior."""
    d = work["dir"]
    tr = np.load(d / "train.npz")
    loader = DataLoader(
        TensorDataset(torch.from_numpy(tr["x"]), torch.from_numpy(tr["y"])), batch_size=16
    )
    la = Laplace(
        _model(work), "classification", subset, "kron",
        output_positions="independent", ignore_index=IGNORE,
    )  # fmt: skip
    la.fit(loader)
    post = read_posterior(work["posts"][subset])
    la.prior_precision = post.tensors["prior.precision"].to(la.dtype)
    # The CLI's fit saw the same masked pixels: the same weighted loss.
    assert post.metadata["loss"] == pytest.approx(float(la.loss), rel=1e-5)
    return la


def _test_split(work: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    t = np.load(work["dir"] / "test.npz")
    return torch.from_numpy(t["x"]), torch.from_numpy(t["y"])


def test_posterior_records_the_dense_settings(work: dict[str, Any]) -> None:
    for subset, post in work["posts"].items():
        meta = read_posterior(post).metadata
        assert meta["output_positions"] == "independent"
        assert meta["ignore_index"] == IGNORE  # from the spec's key
        assert meta["output_shape"] == [3, SIZE, SIZE]
        assert meta["n_outputs"] == 3 * SIZE * SIZE
        assert meta["tuning"]["method"] == ("gridsearch" if subset == "all" else "marglik")


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_evaluate_matches_segmentation_metrics(
    work: dict[str, Any], subset: str, tmp_path: Path
) -> None:
    d = work["dir"]
    report = tmp_path / "report.json"
    html = tmp_path / "report.html"
    r = invoke(["evaluate", "-p", work["posts"][subset], "--data", d / "data.yaml"]
               + ["--report", report, "--html", html, "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    x, y = _test_split(work)
    la = _api_laplace(work, subset)
    with torch.no_grad():
        want_la = segmentation_metrics(la(x), y, ignore_index=IGNORE)
        want_map = segmentation_metrics(torch.softmax(_model(work)(x), 1), y, IGNORE)
    for row, want in (("laplace", want_la), ("map", want_map)):
        for key in ("acc", "nll", "ece", "brier", "miou"):
            assert rep["rows"][row][key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (
                row,
                key,
            )
    assert "temperature" in rep["rows"] and "miou" in rep["rows"]["temperature"]
    # Masked pixels are left out: the positions scored are the unmasked ones.
    assert rep["settings"]["n_positions"] == int((y != IGNORE).sum()) == want_la["n_positions"]
    assert rep["settings"]["n_test"] == len(y)
    assert set(rep["settings"]["skipped"]) >= {"selective", "conformal"}
    assert "miou" in html.read_text()


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_predict_writes_arrays_equal_to_the_library(
    work: dict[str, Any], subset: str, tmp_path: Path
) -> None:
    d = work["dir"]
    out = tmp_path / "pred.npz"
    r = invoke(["predict", "-p", work["posts"][subset], "--data", d / "data.yaml"]
               + ["--batch-size", "3", "-o", out, "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    z = np.load(out)
    x, y = _test_split(work)
    n = len(x)
    assert z["id"].tolist() == list(range(n))
    assert z["probs"].shape == (n, 3, SIZE, SIZE) and z["pred"].shape == (n, SIZE, SIZE)
    assert z["var"].shape == (n, 3, SIZE, SIZE) and (z["var"] >= 0).all()
    np.testing.assert_allclose(z["probs"].sum(1), 1.0, atol=1e-5)
    la = _api_laplace(work, subset)
    with torch.no_grad():
        probs = la(x).numpy()
        _, f_var = position_variance(la, x)
    np.testing.assert_allclose(z["probs"], probs, rtol=1e-4, atol=1e-6)
    var = torch.diagonal(f_var, dim1=1, dim2=2).movedim(-1, 1).numpy()
    np.testing.assert_allclose(z["var"], var, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(z["pred"], probs.argmax(1))
    np.testing.assert_allclose(z["max_prob"], probs.max(1), rtol=1e-5)
    entropy = -(probs * np.log(probs)).sum(1)
    np.testing.assert_allclose(z["entropy"], entropy, rtol=1e-4, atol=1e-6)
    assert not list(tmp_path.glob(".pred.npz*"))  # no temporary files left behind


def test_recipe_runs_fit_tune_evaluate_predict(work: dict[str, Any], tmp_path: Path) -> None:
    d = work["dir"]
    recipe = tmp_path / "seg.yaml"
    recipe.write_text(
        f"model: {{path: {d / 'model.safetensors'}, factory: '{d / 'nets.py'}:tiny_seg'}}\n"
        f"data: {d / 'data.yaml'}\n"
        "stages: [fit, tune, evaluate, predict]\n"
        "fit: {subset: last_layer, structure: kron, output_positions: independent}\n"
        "tune: {method: marglik}\n"
        "evaluate: {split: test, fail_if: ['miou<0.0']}\n"
        "predict: {split: test}\n"
    )
    r = invoke(["run", recipe, "--output", tmp_path / "run", "--quiet"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "miou" in rep["rows"]["laplace"]
    z = np.load(tmp_path / "run" / "predictions.npz")
    assert z["probs"].shape == (8, 3, SIZE, SIZE)


def test_bad_flags_exit_2(work: dict[str, Any], tmp_path: Path) -> None:
    d = work["dir"]
    post = work["posts"]["last_layer"]
    fit = ["fit", d / "model.safetensors", "--model-factory", d / "nets.py:tiny_seg"]
    fit += ["--data", d / "data.yaml", "-o", tmp_path / "p.st"]
    cases = {
        "independent or mean": fit + ["--output-positions", "sum"],
        "add --output-positions": fit + ["--ignore-index", "3"],
        # label maps without --output-positions
        "per-position label maps": fit + ["--subset", "all"],
        "predictions.npz": ["predict", "-p", post, "--data", d / "data.yaml", "-o", tmp_path / "p.csv"],
        "rows (csv / jsonl)": ["predict", "-p", post, "--data", d / "data.yaml", "--columns", "pred"]
        + ["-o", tmp_path / "p.npz"],
        "do not take dense outputs": ["doctor", post, "--data", d / "data.yaml"],
        "conformal sets are per input": ["tune", "-p", post, "--method", "marglik"]
        + ["--data", d / "data.yaml", "--conformal", "0.9", "-o", tmp_path / "t.st"],
        "not available for dense outputs": ["evaluate", "-p", post, "--data", d / "data.yaml"]
        + ["--bootstrap", "10"],
    }  # fmt: skip
    for needle, args in cases.items():
        r = invoke(args)
        assert r.exit_code == 2, (needle, r.output)
        assert needle in " ".join(r.output.split()), (needle, r.output)
    # A spec that names another ignore_index than the posterior's is refused.
    other = tmp_path / "other.yaml"
    other.write_text((d / "data.yaml").read_text().replace("ignore_index: 255", "ignore_index: 7")
                     .replace("path: ", f"path: {d}/"))  # fmt: skip
    r = invoke(["evaluate", "-p", post, "--data", other])
    assert r.exit_code == 2 and "differs from the posterior" in " ".join(r.output.split())


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("output_positions", "sum", "independent|mean"),
        ("output_shape", "[3, 4, 4]", "n_outputs"),
        ("output_shape", "[108]", "at least two"),
        ("ignore_index", '"x"', "must be an integer"),
    ],
)
def test_hostile_dense_metadata_is_refused(
    work: dict[str, Any], tmp_path: Path, key: str, value: str, needle: str
) -> None:
    from safetensors import safe_open

    src = work["posts"]["last_layer"]
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta[key] = value
    bad = tmp_path / "bad.st"
    save_file(tensors, str(bad), metadata=meta)
    r = invoke(["inspect", bad])
    assert r.exit_code == 2, r.output
    assert needle in " ".join(r.output.split())


def test_regression_per_position_predict_and_evaluate(tmp_path: Path) -> None:
    """(N, C, *S) real targets: predict's mean / var equal `la(x)`, evaluate's RMSE the
    positions' RMSE of that mean."""
    rng = np.random.default_rng(0)
    (tmp_path / "nets.py").write_text(FACTORY)
    for name, n in (("train", 16), ("test", 6)):
        x = rng.normal(size=(n, 1, SIZE, SIZE)).astype("f4")
        y = np.concatenate([x, -x, x**2], 1) + 0.1 * rng.normal(size=(n, 3, SIZE, SIZE))
        np.savez(tmp_path / f"{name}.npz", x=x, y=y.astype("f4"))
    (tmp_path / "data.yaml").write_text(
        "task: regression\nsplits:\n  train: {path: train.npz}\n  test: {path: test.npz}\n"
    )
    ns: dict[str, Any] = {}
    exec(FACTORY, ns)  # noqa: S102 - the factory text above
    model = ns["tiny_seg"]()
    save_file(dict(model.state_dict()), tmp_path / "model.safetensors")
    post = tmp_path / "post.st"
    r = invoke(
        ["fit", tmp_path / "model.safetensors", "--model-factory", tmp_path / "nets.py:tiny_seg"]
        + ["--data", tmp_path / "data.yaml", "--subset", "all", "--structure", "diag"]
        + ["--output-positions", "independent", "--prior-precision", "3", "-o", post, "--quiet"]
    )
    assert r.exit_code == 0, r.output
    r = invoke(["predict", "-p", post, "--data", tmp_path / "data.yaml", "-o", tmp_path / "p.npz"])
    assert r.exit_code == 0, r.output
    r = invoke(["evaluate", "-p", post, "--data", tmp_path / "data.yaml"]
               + ["--report", tmp_path / "r.json", "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    tr, te = np.load(tmp_path / "train.npz"), np.load(tmp_path / "test.npz")
    la = Laplace(model.eval(), "regression", "all", "diag", output_positions="independent",
                 prior_precision=3.0)  # fmt: skip
    la.fit(DataLoader(TensorDataset(torch.from_numpy(tr["x"]), torch.from_numpy(tr["y"]))))
    with torch.no_grad():
        mean, var = la(torch.from_numpy(te["x"]), diagonal_output=True)
    z = np.load(tmp_path / "p.npz")
    np.testing.assert_allclose(z["mean"], mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z["var"], var.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(z["var_total"], var.numpy() + 1.0, rtol=1e-5)  # σ = 1
    rmse = float(np.sqrt(((z["mean"] - te["y"]) ** 2).mean()))
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["rows"]["laplace"]["rmse"] == pytest.approx(rmse, rel=1e-5)
