"""`laplace train`: marginal-likelihood training of a factory-built sample model from its spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.io.model_factories import build_from_factory
from laplace_cli.pipeline.model_loading import load_posterior

REPO = Path(__file__).resolve().parents[2]
FACTORY = f"{REPO / 'sample_models' / 'models.py'}:diabetes_mlp"
DATA = REPO / "sample_models" / "diabetes_mlp" / "data.yaml"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("train") / "run"
    result = invoke(
        "train",
        "--model-factory",
        FACTORY,
        "--model-kwargs",
        '{"hidden": 8}',
        "--data",
        DATA,
        "--epochs",
        2,
        "--hypersteps",
        3,
        "--lr",
        0.01,
        "--dtype",
        "float64",
        "--json",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_train_writes_checkpoint_and_posterior(trained):
    out, summary = trained
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "posterior.st"]
    assert summary["epochs_run"] == 2 and summary["n_data"] == 264
    assert summary["likelihood"] == "regression"  # from the spec's task
    assert len(summary["prior_precision"]) == 6  # layer-wise by default


def test_posterior_is_the_trained_model_and_its_marglik(trained):
    out, summary = trained
    lp = load_posterior(out / "posterior.st")
    # The posterior's model reference loads the written weights with the factory.
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    for name, p in lp.la.model.named_parameters():
        torch.testing.assert_close(p.detach().cpu(), weights[name].to(p.dtype), rtol=0, atol=0)
    np.testing.assert_allclose(
        float(lp.la.log_marginal_likelihood()), summary["log_marginal_likelihood"], rtol=1e-10
    )
    assert lp.metadata["tuning"]["method"] == "marglik_training"
    assert lp.metadata["prior_structure"] == "layerwise"
    # Independent check: a fresh factory model with these weights, fitted by the library with
    # the recorded hyperparameters, gives the same marginal likelihood.
    from laplace_cli import Laplace
    from laplace_cli.io.datasets import load_dataset_spec, make_loader

    model = build_from_factory(FACTORY, {"hidden": 8}).double()
    model.load_state_dict({k: v.double() for k, v in weights.items()})
    loader = make_loader(load_dataset_spec(DATA), "train", task="regression")
    la = Laplace(
        model,
        "regression",
        "all",
        "kron",
        prior_precision=torch.tensor(summary["prior_precision"], dtype=torch.float64),
        sigma_noise=summary["sigma_noise"],
    )
    la.fit(loader)
    np.testing.assert_allclose(
        float(la.log_marginal_likelihood()), summary["log_marginal_likelihood"], rtol=1e-8
    )


def test_checkpoint_works_with_fit_and_predict(trained, tmp_path):
    out, _ = trained
    post = tmp_path / "diag.st"
    result = invoke(
        "fit",
        out / "model.safetensors",
        "--model-factory",
        FACTORY,
        "--model-kwargs",
        '{"hidden": 8}',
        "--data",
        DATA,
        "--subset",
        "all",
        "--structure",
        "diag",
        "-q",
        "-o",
        post,
    )
    assert result.exit_code == 0, result.output
    x = np.load(REPO / "sample_models" / "diabetes_mlp" / "test.npz")["x"][:5]
    np.save(tmp_path / "x.npy", x)
    result = invoke(
        "predict",
        "-p",
        out / "posterior.st",
        "--input",
        tmp_path / "x.npy",
        "--format",
        "csv",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 1 + 5  # header and one row per input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", DATA], "needs --model-factory"),
        (["--model-factory", FACTORY], "needs --data"),
        (["--model-factory", FACTORY, "--data", DATA, "--structure", "lowrank"], "lowrank"),
        (["--model-factory", FACTORY, "--data", DATA, "--lr", "-1"], "--lr"),
        (["--model-factory", "nonsense", "--data", DATA], "--model-factory"),
    ],
)
def test_bad_input_exits_2(tmp_path, args, message):
    result = invoke("train", *args, "-o", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "run").exists()


def test_output_that_is_a_file_exits_2(tmp_path):
    (tmp_path / "f").write_text("x")
    result = invoke("train", "--model-factory", FACTORY, "--data", DATA, "-o", tmp_path / "f")
    assert result.exit_code == 2 and "is a file" in result.output


def test_model_dtype_run_keeps_the_trained_posterior(tmp_path):
    """Trained in the factory's dtype (float32), the checkpoint is the trained model byte for
    byte and the posterior is the one training returned (its best marginal likelihood)."""
    out = tmp_path / "run"
    result = invoke(
        "train", "--model-factory", FACTORY, "--model-kwargs", '{"hidden": 4}', "--data", DATA,
        "--epochs", 1, "--hypersteps", 2, "--json", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lp = load_posterior(out / "posterior.st")
    assert lp.la.dtype == torch.float32
    np.testing.assert_allclose(
        lp.metadata["tuning"]["log_evidence"], float(lp.la.log_marginal_likelihood()), rtol=1e-5
    )
