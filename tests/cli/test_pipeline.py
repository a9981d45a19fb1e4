"""The pipeline users run: `laplace fit → tune → evaluate → predict` on the sample models.

Every case runs the four commands through Typer's CliRunner (exit code, stdout and stderr
asserted separately) and checks the numbers against the Python API built independently: the
model from `model.safetensors` + the factory in `sample_models/models.py` (the CLI loads
`model.pt2`), `Laplace(...)` with the same options, fitted on the same train split, tuned the
same way (the tuned prior must agree), then given exactly the CLI's prior; probabilities / means
and functional variances must agree to 1e-5 relative, and the evaluation's Laplace row must be
the metrics of the API's predictive.

To stay fast the digits models use the first 400 / 150 / 150 rows of their train / val / test
splits (diabetes uses its whole, small splits), and full posteriors only where P is small
(diabetes all weights, P = 1,441; digits last layer, P = 650 / 330).
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
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
from laplace_cli.io.checkpoints import model_fingerprint
from laplace_cli.io.posterior_file import read_posterior

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"
SMALL_ROWS = {"train": 400, "val": 150, "test": 150}  # digits only
RTOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def _models_module() -> Any:
    spec = importlib.util.spec_from_file_location("sample_models_models", SAMPLES / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODELS = _models_module()


@dataclass(frozen=True)
class Case:
    """One fit → tune → evaluate → predict run."""

    model: str
    subset: str
    structure: str
    dtype: str
    tune: tuple[str, ...] = ()  # extra `laplace tune` options
    tune_out: bool = False  # tune into a new file (-o) instead of rewriting in place
    gate: str = "nll>1e6"  # an evaluate --fail-if gate (this one always passes)
    gate_fails: bool = False  # whether `gate` holds, so evaluate exits 1

    @property
    def id(self) -> str:
        return f"{self.model}-{self.subset}-{self.structure}-{self.dtype}"

    @property
    def likelihood(self) -> str:
        return "regression" if self.model == "diabetes_mlp" else "classification"

    @property
    def method(self) -> str:
        return "gridsearch" if "gridsearch" in self.tune else "marglik"

    @property
    def prior_structure(self) -> str:
        if "--prior-structure" in self.tune:
            return self.tune[self.tune.index("--prior-structure") + 1]
        return "scalar"  # the default of both methods


GRID = ("--method", "gridsearch", "--split", "val")
CASES = [
    Case("digits_mlp", "all", "kron", "float64", ("--prior-structure", "layerwise")),
    Case("digits_mlp", "all", "diag", "float32", ("--prior-structure", "diag"), tune_out=True),
    Case("digits_mlp", "last_layer", "full", "float64", GRID, gate="acc<1.01", gate_fails=True),
    Case("digits_cnn", "last_layer", "kron", "float32", GRID, tune_out=True),
    Case("digits_cnn", "last_layer", "diag", "float64"),
    Case("digits_cnn", "last_layer", "full", "float64", ("--prior-structure", "scalar")),
    Case("diabetes_mlp", "all", "full", "float64", ("--prior-structure", "scalar")),
    Case("diabetes_mlp", "all", "kron", "float64", tune_out=True),
    Case("diabetes_mlp", "all", "diag", "float32", gate="rmse>0", gate_fails=True),
]
IDS = [c.id for c in CASES]


@dataclass
class Run:
    """What one case produced: CLI results, parsed outputs, and the API reference."""

    case: Case
    data: Path
    posterior: Path
    fit: Any
    tune: Any
    evaluate: Any
    predict: Any
    untuned_bytes: bytes | None
    fit_json: dict[str, Any] = field(default_factory=dict)
    tune_json: dict[str, Any] = field(default_factory=dict)
    eval_json: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    api: Any = None
    api_tuned: dict[str, torch.Tensor] = field(default_factory=dict)


def invoke(args: list[Any], **kwargs: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def small_data(model: str, folder: Path) -> Path:
    """A data spec over (the first rows of) the sample splits, written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["task: " + ("regression" if model == "diabetes_mlp" else "classification")]
    lines += ["batch_size: 256", "splits:"]
    for split in ("train", "val", "test"):
        d = np.load(SAMPLES / model / f"{split}.npz")
        n = SMALL_ROWS[split] if model != "diabetes_mlp" else len(d["x"])
        np.savez(folder / f"{split}.npz", x=d["x"][:n], y=d["y"][:n])
        lines.append(f"  {split}: {{path: {split}.npz, x: x, y: y}}")
    (folder / "data.yaml").write_text("\n".join(lines) + "\n")
    return folder / "data.yaml"


def split_arrays(data: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(data.parent / f"{split}.npz")
    return torch.from_numpy(d["x"]), torch.from_numpy(d["y"])


def api_model(name: str, dtype: str) -> torch.nn.Module:
    model = getattr(MODELS, name)()
    model.load_state_dict(load_file(SAMPLES / name / "model.safetensors"))
    return model.to(getattr(torch, dtype)).eval()


def api_laplace(case: Case, data: Path) -> Laplace:
    """The Python API with the case's options, fitted on the same train split, tuned the same way."""
    la = Laplace(
        api_model(case.model, case.dtype),
        case.likelihood,
        subset_of_weights=case.subset,
        hessian_structure=case.structure,
    )
    la.fit(DataLoader(TensorDataset(*split_arrays(data, "train")), batch_size=256))
    if case.method == "gridsearch":
        val = DataLoader(TensorDataset(*split_arrays(data, "val")), batch_size=256)
        la.optimize_prior_precision(method="gridsearch", val_loader=val)
    else:
        # `laplace tune` tunes σ with the prior for regression; the API only when asked.
        la.optimize_prior_precision(
            method="marglik",
            prior_structure=case.prior_structure,
            tune_sigma_noise=case.likelihood == "regression",
        )
    return la


def run_case(case: Case, root: Path) -> Run:
    data = small_data(case.model, root / "data" / case.model)
    folder = root / case.id
    folder.mkdir()
    fitted = folder / "post.st"
    fit = invoke(
        [
            "fit", SAMPLES / case.model / "model.pt2", "--data", data,
            "--subset", case.subset, "--structure", case.structure,
            "--dtype", case.dtype, "-o", fitted, "--json",
        ]
    )  # fmt: skip
    assert fit.exit_code == 0, fit.stderr
    tuned = folder / "tuned.st" if case.tune_out else fitted
    untuned = fitted.read_bytes() if case.tune_out else None
    tune_args = ["tune", "-p", fitted, *case.tune, "--json"]
    if case.method == "gridsearch":
        tune_args += ["--data", data]
    if case.tune_out:
        tune_args += ["-o", tuned]
    tune = invoke(tune_args)
    assert tune.exit_code == 0, tune.stderr
    evaluate = invoke(
        [
            "evaluate", "-p", tuned, "--data", data, "--fail-if", case.gate,
            "--report", folder / "report.json", "--json",
        ]
    )  # fmt: skip
    predict = invoke(["predict", "-p", tuned, "--data", data, "--split", "test"])
    run = Run(case, data, tuned, fit, tune, evaluate, predict, untuned)
    run.fit_json = json.loads(fit.stdout)
    run.tune_json = json.loads(tune.stdout)
    run.eval_json = json.loads(evaluate.stdout) if evaluate.stdout else {}
    run.rows = [json.loads(line) for line in predict.stdout.splitlines()]
    run.api = api_laplace(case, data)
    run.api_tuned = {
        "prior_precision": run.api.prior_precision.clone(),
        "sigma_noise": run.api.sigma_noise.clone(),
    }
    return run


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Case], Run]:
    """Runs each case once per module (memoised), so every test reuses the same files."""
    root = tmp_path_factory.mktemp("pipeline")
    cache: dict[str, Run] = {}

    def get(case: Case) -> Run:
        if case.id not in cache:
            cache[case.id] = run_case(case, root)
        return cache[case.id]

    return get


def assert_close(actual: Any, expected: Any, what: str, rtol: float = RTOL) -> None:
    a = torch.as_tensor(actual, dtype=torch.float64)
    e = torch.as_tensor(expected, dtype=torch.float64).reshape(a.shape)
    err = ((a - e).abs() / e.abs().clamp_min(1e-12)).max().item()
    worst = int(((a - e).abs() / e.abs().clamp_min(1e-12)).argmax())
    assert err <= rtol, (
        f"{what}: relative error {err:.3g} > {rtol} (worst flat index {worst}: "
        f"{a.reshape(-1)[worst].item()!r} vs {e.reshape(-1)[worst].item()!r})"
    )


def tuned_prior(run: Run) -> torch.Tensor:
    return torch.tensor(run.tune_json["prior_precision"], dtype=run.api.dtype)


def api_with_cli_prior(run: Run) -> Laplace:
    """The API posterior given exactly the CLI's tuned prior (and σ for regression)."""
    la = run.api
    la.prior_precision = tuned_prior(run)
    if run.case.likelihood == "regression":
        la.sigma_noise = torch.tensor(run.tune_json["sigma_noise"], dtype=la.dtype)
    return la


# --- fit, tune ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fit_writes_the_posterior_and_reports_json(
    pipeline: Callable[[Case], Run], case: Case
) -> None:
    run = pipeline(case)
    assert run.fit.exit_code == 0
    assert run.fit.stderr == ""  # --json: no human output, no bar (stderr is not a terminal)
    summary = run.fit_json
    n_train = len(split_arrays(run.data, "train")[0])
    assert (summary["structure"], summary["subset"]) == (case.structure, case.subset)
    assert summary["likelihood"] == case.likelihood
    assert summary["n_data"] == n_train
    assert summary["n_params"] == run.api.n_params
    assert (run.posterior.parent / "post.st").is_file()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_tune_matches_the_api_and_rewrites_the_posterior(
    pipeline: Callable[[Case], Run], case: Case
) -> None:
    run = pipeline(case)
    assert run.tune.exit_code == 0 and run.tune.stderr == ""
    assert run.tune_json["method"] == case.method
    assert run.tune_json["prior_structure"] == case.prior_structure
    # The API, tuned the same way on the same data, finds the same prior (and σ).
    assert_close(run.tune_json["prior_precision"], run.api_tuned["prior_precision"], "prior")
    if case.likelihood == "regression":
        assert_close(run.tune_json["sigma_noise"], run.api_tuned["sigma_noise"], "sigma_noise")
    meta = read_posterior(run.posterior)
    assert_close(meta.tensors["prior.precision"], run.tune_json["prior_precision"], "saved prior")
    assert meta.metadata["tuning"]["method"] == case.method
    if case.tune_out:  # -o: the fitted file is left as it was
        fitted = run.posterior.parent / "post.st"
        assert fitted.read_bytes() == run.untuned_bytes
        assert "tuning" not in read_posterior(fitted).metadata


# --- predict -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_predict_matches_the_python_api(pipeline: Callable[[Case], Run], case: Case) -> None:
    run = pipeline(case)
    assert run.predict.exit_code == 0, run.predict.stderr
    x, _ = split_arrays(run.data, "test")
    # stderr: only the row count (no bar: not a terminal).
    assert run.predict.stderr.startswith(f"predict: {len(x)} rows read from ")
    assert run.predict.stderr.endswith(f", {len(x)} written to <stdout>\n")
    rows = run.rows
    assert [r["id"] for r in rows] == list(range(len(x)))
    la = api_with_cli_prior(run)
    if case.likelihood == "classification":
        probs = la(x, pred_type="glm", link_approx="probit")
        _, f_var = la.functional_variance(x)
        cli_probs = torch.tensor([r["probs"] for r in rows], dtype=torch.float64)
        assert_close(cli_probs, probs, "probs")
        assert_close([r["var"] for r in rows], torch.diagonal(f_var, dim1=-2, dim2=-1), "var")
        assert [r["pred"] for r in rows] == probs.argmax(-1).tolist()
        entropy = -(cli_probs * cli_probs.log()).sum(-1)
        assert_close([r["entropy"] for r in rows], entropy, "entropy")
        assert_close([r["max_prob"] for r in rows], cli_probs.max(-1).values, "max_prob")
        # Mutual information comes from Monte Carlo samples: only its range is known.
        n_classes = cli_probs.shape[1]
        assert all(0 <= r["mutual_info"] <= math.log(n_classes) for r in rows)
    else:
        f_mu, f_var = la(x, pred_type="glm")  # f_var (N, 1, 1), epistemic only
        sigma2 = la.sigma_noise.reshape(-1) ** 2
        assert_close([r["mean"] for r in rows], f_mu, "mean")
        assert_close([r["var"] for r in rows], f_var.reshape(-1, 1), "var")
        assert_close([r["var_total"] for r in rows], f_var.reshape(-1, 1) + sigma2, "var_total")


# --- evaluate ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_evaluate_rows_are_the_metrics_of_the_api_predictive(
    pipeline: Callable[[Case], Run], case: Case
) -> None:
    run = pipeline(case)
    failing = case.gate_fails
    assert run.evaluate.exit_code == (1 if failing else 0), run.evaluate.stderr
    if failing:  # the JSON is still printed on stdout, then one line on stderr
        assert run.evaluate.stderr.startswith(f"error: gate '{case.gate}' failed")
        assert run.evaluate.stderr.count("\n") == 1
    else:
        assert run.evaluate.stderr == ""
    report = json.loads((run.posterior.parent / "report.json").read_text())
    assert report["rows"] == run.eval_json["rows"]
    assert set(report["rows"]) == {"map", "temperature", "laplace"}
    assert [g["failed"] for g in report["gates"]] == [failing]
    x, y = split_arrays(run.data, "test")
    la = api_with_cli_prior(run)
    lap = report["rows"]["laplace"]
    if case.likelihood == "classification":
        probs = la(x, pred_type="glm", link_approx="probit").double()
        eps = torch.finfo(la.dtype).eps
        acc = (probs.argmax(-1) == y).double().mean()
        nll = -probs[torch.arange(len(y)), y].clamp_min(eps).log().mean()
        brier = ((probs - torch.nn.functional.one_hot(y, probs.shape[1])) ** 2).sum(-1).mean()
        assert lap["acc"] == pytest.approx(float(acc), rel=RTOL)
        assert lap["nll"] == pytest.approx(float(nll), rel=RTOL)
        assert lap["brier"] == pytest.approx(float(brier), rel=RTOL)
        map_probs = torch.softmax(la.model(x.to(la.dtype)), -1).double()
        map_acc = (map_probs.argmax(-1) == y).double().mean()
        assert report["rows"]["map"]["acc"] == pytest.approx(float(map_acc), rel=RTOL)
    else:
        f_mu, f_var = la(x, pred_type="glm")
        mu, var = f_mu.double(), f_var.reshape(-1, 1).double() + la.sigma_noise.double() ** 2
        t = y.double()
        rmse = ((mu - t) ** 2).mean().sqrt()
        nll = (0.5 * torch.log(2 * math.pi * var) + (t - mu) ** 2 / (2 * var)).mean()
        assert lap["rmse"] == pytest.approx(float(rmse), rel=RTOL)
        assert lap["nll"] == pytest.approx(float(nll), rel=RTOL)
        assert 0.0 <= lap["coverage_95"] <= 1.0


# --- inspect, marglik --------------------------------------------------------------------------
def test_inspect_json_describes_the_fitted_posterior(pipeline: Callable[[Case], Run]) -> None:
    run = pipeline(CASES[0])  # digits_mlp, all weights, kron
    result = invoke(["inspect", run.posterior, "--json"])
    assert result.exit_code == 0 and result.stderr == ""
    info = json.loads(result.stdout)
    meta = info["metadata"]
    assert meta["format"] == "laplace-cli/posterior" and meta["format_version"] == "1"
    assert [meta[k] for k in ("structure", "subset", "likelihood")] == [
        "kron", "all", "classification"
    ]  # fmt: skip
    assert meta["n_data"] == SMALL_ROWS["train"]
    assert meta["fingerprint"] == model_fingerprint(api_model("digits_mlp", "float32"))
    assert meta["param_names"] == [name for name, _ in run.api.model.named_parameters()]
    assert info["n_params"] == run.api.n_params == 8970
    assert info["tensors"]["mean"]["shape"] == [8970]
    assert info["tensors"]["mean"]["dtype"] == "float64"
    assert info["tensors"]["prior.precision"]["shape"] == [6]  # layer-wise, tuned
    assert info["tensors"]["kron.0.weight.A.eigvecs"]["shape"] == [64, 64]
    # Without --json: tables on stderr, nothing on stdout.
    human = invoke(["inspect", run.posterior])
    assert human.exit_code == 0 and human.stdout == ""
    assert "kron.0.weight.A.eigvecs" in human.stderr and "8,970 parameters" in human.stderr


def test_marglik_of_two_posteriors_matches_the_api(pipeline: Callable[[Case], Run]) -> None:
    runs = [pipeline(CASES[0]), pipeline(CASES[4])]  # digits_mlp kron, digits_cnn last-layer diag
    result = invoke(["marglik", runs[0].posterior, runs[1].posterior, "--json"])
    assert result.exit_code == 0 and result.stderr == ""
    out = json.loads(result.stdout)
    entries = out["posteriors"]
    assert [e["posterior"] for e in entries] == [str(r.posterior) for r in runs]
    for entry, run in zip(entries, runs):
        la = api_with_cli_prior(run)
        assert entry["structure"] == run.case.structure
        assert entry["n_params"] == la.n_params
        expected = float(la.log_marginal_likelihood())
        assert entry["log_marginal_likelihood"] == pytest.approx(expected, rel=RTOL)
    best = max(entries, key=lambda e: e["log_marginal_likelihood"])
    assert out["best"] == best["posterior"]
    human = invoke(["marglik", runs[0].posterior, runs[1].posterior])
    assert human.exit_code == 0 and human.stdout == ""
    assert f"best: {best['posterior']}" in human.stderr


# --- inputs that do not fit the model ------------------------------------------------------------
def test_inputs_of_the_wrong_shape_are_bad_input(
    pipeline: Callable[[Case], Run], tmp_path: Path
) -> None:
    """Flat digits features for the CNN (which takes (1, 8, 8) images): exit 2 naming the data,
    in each command, instead of an internal error from inside the model (exit 70)."""
    run = pipeline(CASES[3])  # digits_cnn, last-layer K-FAC
    mlp_data = SAMPLES / "digits_mlp" / "data.yaml"
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=np.load(SAMPLES / "digits_mlp" / "test.npz")["x"][:4])
    results = {
        "fit": invoke(
            [
                "fit",
                SAMPLES / "digits_cnn" / "model.pt2",
                "--data",
                mlp_data,
                "-o",
                tmp_path / "p.st",
            ]
        ),  # fmt: skip
        "evaluate": invoke(["evaluate", "-p", run.posterior, "--data", mlp_data]),
        "predict": invoke(["predict", "-p", run.posterior, "--input", flat]),
    }
    sources = {
        "fit": f"{mlp_data}: split 'train'",
        "evaluate": f"{mlp_data}: split 'test'",
        "predict": str(flat),
    }
    for command, result in results.items():
        assert result.exit_code == 2, (command, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith(
            f"error: {sources[command]}: the model does not accept inputs of shape (64,) per row"
        ), command
        assert result.stderr.count("\n") == 1
    assert not (tmp_path / "p.st").exists()
