"""`--structure gp` (function-space Laplace) from the command line: fit → tune → evaluate →
predict → inspect on the sample models, the CLI's predictions against the Python API's
FunctionalLaplace and against a dense brute-force GP predictive, save → load, a recipe, and
malformed gp posterior files (exit 2).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.laplace.functional import FunctionalLaplace
from laplace_cli.laplace.functional_ll import FunctionalLLLaplace
from laplace_cli.pipeline.fit_stage import FitOptions
from laplace_cli.pipeline.gp_stage import fit_gp
from laplace_cli.pipeline.model_loading import ModelSpec, load_posterior, save_posterior
from laplace_cli.pipeline.predict_stage import predict_batch
from laplace_cli.posterior.predictive import check_pred_options

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"

pytestmark = pytest.mark.usefixtures("one_thread")


def _models_module() -> Any:
    spec = importlib.util.spec_from_file_location("sample_models_models", SAMPLES / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODELS = _models_module()


def invoke(args: list[Any]) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def write_data(model: str, folder: Path, rows: dict[str, int]) -> Path:
    """A data spec over the first rows of a sample model's splits."""
    folder.mkdir(parents=True, exist_ok=True)
    task = "regression" if model == "diabetes_mlp" else "classification"
    lines = [f"task: {task}", "batch_size: 32", "splits:"]
    for split, n in rows.items():
        d = np.load(SAMPLES / model / f"{split}.npz")
        np.savez(folder / f"{split}.npz", x=d["x"][:n], y=d["y"][:n])
        lines.append(f"  {split}: {{path: {split}.npz, x: x, y: y}}")
    (folder / "data.yaml").write_text("\n".join(lines) + "\n")
    return folder / "data.yaml"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(
        "digits_mlp", tmp_path_factory.mktemp("gp_digits"), {"train": 120, "val": 40, "test": 30}
    )


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(
        "diabetes_mlp", tmp_path_factory.mktemp("gp_diabetes"), {"train": 80, "val": 30, "test": 25}
    )


def api_net(model: str) -> torch.nn.Module:
    net = getattr(MODELS, model)()
    net.load_state_dict(load_file(SAMPLES / model / "model.safetensors"))
    return net.to(torch.float64).eval()


def split_xy(data: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(data.parent / f"{split}.npz")
    return torch.from_numpy(d["x"]).double(), torch.from_numpy(d["y"])


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def fit_cli(model: str, data: Path, out: Path, subset: str, m: int, *extra: Any) -> dict:
    r = invoke(
        [
            "fit", SAMPLES / model / "model.pt2", "--data", data, "--subset", subset,
            "--structure", "gp", "--context-points", m, "--dtype", "float64", "-o", out,
            "--json", *extra,
        ]
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


# --- end to end ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "subset", "context"),
    [("digits_mlp", "all", "first"), ("diabetes_mlp", "last_layer", "random")],
)
def test_fit_tune_evaluate_predict_inspect(
    model: str, subset: str, context: str, digits: Path, diabetes: Path, tmp_path: Path
) -> None:
    data = digits if model == "digits_mlp" else diabetes
    post = tmp_path / "post.st"
    summary = fit_cli(model, data, post, subset, 12, "--context", context, "--seed", "4")
    assert summary["structure"] == "gp" and summary["subset"] == subset
    assert summary["context_points"] == 12
    assert np.isfinite(summary["log_marginal_likelihood"])

    r = invoke(["tune", "-p", post, "--json"])
    assert r.exit_code == 0, r.output
    tuned = json.loads(r.stdout)
    assert tuned["method"] == "marglik" and tuned["prior_precision"][0] > 0
    # marglik's optimum: the evidence there is no lower than at the fitted δ = 1.
    assert tuned["log_evidence"] >= summary["log_marginal_likelihood"] - 1e-6
    r = invoke(
        ["tune", "-p", post, "--method", "gridsearch", "--data", data, "--grid-size", "5", "--json"]
    )
    assert r.exit_code == 0, r.output
    chosen = json.loads(r.stdout)["prior_precision"][0]
    assert min(abs(np.log10(chosen) - g) for g in (-4, -2, 0, 2, 4)) < 1e-6  # a grid value

    r = invoke(["evaluate", "-p", post, "--data", data, "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert np.isfinite(rows["laplace"]["nll"])

    pred = tmp_path / "pred.csv"
    r = invoke(["predict", "-p", post, "--data", data, "-o", pred])
    assert r.exit_code == 0, r.output
    assert len(read_csv(pred)["id"]) == (30 if model == "digits_mlp" else 25)

    r = invoke(["inspect", post])
    assert r.exit_code == 0, r.output
    assert "context points: 12" in r.output and "training inputs" in r.output
    r = invoke(["inspect", post, "--json"])
    info = json.loads(r.stdout)["context_points"]
    n_in = 64 if model == "digits_mlp" else 10
    assert info["count"] == 12 and info["input_bytes"] == 12 * n_in * 8  # float64 rows


# --- the CLI's numbers ----------------------------------------------------------------------------
def test_cli_predict_equals_api_functional_laplace(digits: Path, tmp_path: Path) -> None:
    """Same model, same M = 20 context points (the first rows), float64: rtol 1e-6."""
    post, pred = tmp_path / "post.st", tmp_path / "pred.csv"
    fit_cli("digits_mlp", digits, post, "last_layer", 20)
    r = invoke(["predict", "-p", post, "--data", digits, "-o", pred, "--samples", "1"])
    assert r.exit_code == 0, r.output
    got = read_csv(pred)

    x, y = split_xy(digits, "train")
    la = FunctionalLLLaplace(api_net("digits_mlp"), "classification", n_subset=20, context="first")
    la.fit(DataLoader(TensorDataset(x, y), batch_size=17))
    x_test, _ = split_xy(digits, "test")
    f_mu, f_var = la.functional_variance_at(x_test)
    var = torch.diagonal(f_var, dim1=-2, dim2=-1).numpy()
    probs = torch.softmax(
        f_mu / torch.sqrt(1 + torch.pi / 8 * torch.from_numpy(var)), dim=-1
    ).numpy()  # the probit link, written out
    for c in range(10):
        np.testing.assert_allclose(got[f"var_{c}"], var[:, c], rtol=1e-6)
        np.testing.assert_allclose(got[f"prob_{c}"], probs[:, c], rtol=1e-6, atol=1e-12)


def dense_gp_regression(
    net: torch.nn.Module, x_ctx: torch.Tensor, x_test: torch.Tensor, n_data: int, delta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: dense Jacobians (torch.func) and the GP predictive with σ = 1, T = 1:
    v k** − v² k*M (v K_MM + σ² I)⁻¹ k_M*, v = (M/N)/δ."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(net, p, (x,))

    def jac(x: torch.Tensor) -> torch.Tensor:
        j = torch.func.jacrev(f)(params, x)  # {name: (B, 1, *shape)}
        return torch.cat([j[k].reshape(x.shape[0], -1) for k in params], dim=1)

    J_m, J_s = jac(x_ctx), jac(x_test)
    v = (x_ctx.shape[0] / n_data) / delta
    K = v * J_m @ J_m.T + torch.eye(x_ctx.shape[0], dtype=J_m.dtype)
    k_sm = v * J_s @ J_m.T
    var = v * (J_s * J_s).sum(1) - (k_sm * torch.linalg.solve(K, k_sm.T).T).sum(1)
    return f(params, x_test)[:, 0], var


def test_cli_predict_equals_dense_gp_regression(diabetes: Path, tmp_path: Path) -> None:
    """Diabetes, all weights, M = 30 random rows (seed 7): CLI vs dense GP and the API."""
    post, pred = tmp_path / "post.st", tmp_path / "pred.csv"
    fit_cli(
        "diabetes_mlp", diabetes, post, "all", 30, "--context", "random", "--seed", 7,
        "--prior-precision", 2.0,
    )  # fmt: skip
    r = invoke(["predict", "-p", post, "--data", diabetes, "-o", pred])
    assert r.exit_code == 0, r.output
    got = read_csv(pred)

    x, y = split_xy(diabetes, "train")
    net = api_net("diabetes_mlp")
    rows = np.sort(np.random.default_rng(7).choice(list(range(80)), 30, replace=False))
    x_test, _ = split_xy(diabetes, "test")
    mean, var = dense_gp_regression(net, x[rows], x_test, 80, 2.0)
    np.testing.assert_allclose(got["mean"], mean.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(got["var"], var.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(got["var_total"], var.detach().numpy() + 1.0, rtol=1e-6)

    la = FunctionalLaplace(net, "regression", n_subset=30, seed=7, prior_precision=2.0)
    la.fit(DataLoader(TensorDataset(x, y), batch_size=32))
    f_mu, f_var = la.functional_variance_at(x_test)
    np.testing.assert_allclose(got["var"], f_var[:, 0, 0].numpy(), rtol=1e-6)


def test_save_load_same_predictions(diabetes: Path, tmp_path: Path) -> None:
    """The file restores the posterior exactly: predictions and marginal likelihood."""
    model = SAMPLES / "diabetes_mlp" / "model.pt2"
    options = FitOptions(likelihood="regression", subset="all", structure="gp", seed=1)
    result = fit_gp(ModelSpec(str(model)), diabetes, options, 15, "random", dtype="float64")
    post = tmp_path / "post.st"
    save_posterior(result.la, post, result.loaded)
    lp = load_posterior(post)
    assert isinstance(lp.la, FunctionalLaplace)
    x_test, _ = split_xy(diabetes, "test")
    pt, link = check_pred_options("glm", "probit")
    before = predict_batch(result.la, x_test, pt, link, 0, None)
    after = predict_batch(lp.la, x_test, pt, link, 0, None)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    torch.testing.assert_close(
        lp.la.log_marginal_likelihood(), result.la.log_marginal_likelihood(), rtol=1e-12, atol=0
    )


def test_recipe_gp(tmp_path: Path) -> None:
    """The shipped gp recipe runs fit → tune → evaluate → predict (M lowered for speed)."""
    recipe = REPO / "recipes" / "diabetes_mlp_gp.yaml"
    out = tmp_path / "run"
    r = invoke(["run", recipe, "--output", out, "--set", "fit.context_points=30"])
    assert r.exit_code == 0, r.output
    lp = load_posterior(out / "posterior.safetensors")
    assert isinstance(lp.la, FunctionalLaplace) and lp.metadata["gp"]["n_context"] == 30
    assert lp.metadata["tuning"]["method"] == "marglik"
    assert len(read_csv(out / "predictions.csv")["mean"]) == 89


# --- refusals -------------------------------------------------------------------------------------
def tampered(src: Path, dst: Path, tensors: Any = None, meta: Any = None) -> Path:
    """A copy of a posterior file with its tensors and/or raw metadata strings changed."""
    with safe_open(src, "pt") as f:
        raw = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration
    if tensors is not None:
        tensors(t)
    if meta is not None:
        meta(raw)
    save_file(t, dst, metadata=raw)
    return dst


@pytest.fixture(scope="module")
def gp_file(diabetes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    post = tmp_path_factory.mktemp("gp_file") / "post.st"
    fit_cli("diabetes_mlp", diabetes, post, "all", 10)
    return post


def _set_gp(raw: dict[str, str], **changes: Any) -> None:
    g = json.loads(raw["gp"])
    g.update(changes)
    raw["gp"] = json.dumps(g)


@pytest.mark.parametrize(
    ("tensors", "meta", "message"),
    [
        (lambda t: t.__setitem__("gp.K", t["gp.K"][:-1]), None, "gp.K"),
        (lambda t: t.pop("gp.mu"), None, "missing tensor(s): gp.mu"),
        (lambda t: t.__setitem__("gp.context_inputs", t["gp.context_inputs"][:5]), None, "rows"),
        (None, lambda m: _set_gp(m, n_context=1000), "gp.n_context"),
        (None, lambda m: _set_gp(m, context="every"), "gp.context"),
        (None, lambda m: m.pop("gp"), "missing metadata key(s): gp"),
        (lambda t: t.__setitem__("prior.precision", torch.ones(3, dtype=torch.float64)), None,
         "prior.precision"),
    ],
)  # fmt: skip
def test_malformed_gp_file_exit_2(
    gp_file: Path, tmp_path: Path, diabetes: Path, tensors: Any, meta: Any, message: str
) -> None:
    bad = tampered(gp_file, tmp_path / "bad.st", tensors, meta)
    for args in (["inspect", bad], ["predict", "-p", bad, "--data", diabetes]):
        r = invoke(args)
        assert r.exit_code == 2, r.output
        assert message in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--structure", "gp", "--subset", "subnetwork", "--subnetwork", "largest_magnitude:8"],
         "--subset all or last_layer"),
        (["--structure", "kron", "--context-points", "5"], "apply to --structure gp"),
        (["--structure", "gp", "--subset", "all", "--context-points", "0"], "positive"),
        (["--structure", "gp", "--subset", "all", "--context", "every"], "first or random"),
        (["--structure", "gp", "--subset", "all", "--context-points", "500"], "1..80"),
    ],
)  # fmt: skip
def test_fit_refusals_exit_2(diabetes: Path, tmp_path: Path, args: list[str], message: str) -> None:
    r = invoke(
        ["fit", SAMPLES / "diabetes_mlp" / "model.pt2", "--data", diabetes, "-o",
         tmp_path / "p.st", *args]
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    assert message in r.output
