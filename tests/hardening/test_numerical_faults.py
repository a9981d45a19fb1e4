"""Numerical faults: non-finite loss or curvature, and matrices not positive definite (exit 3).

Good input that makes the computation overflow is a numerical failure (exit 3, docs/design.md §1b),
reported with the batch and the layer; a precision that is not positive definite after the
bounded jitter of `robust_cholesky` is exit 3 with the jitter tried. The library raises
`NumericalError` and never exits by itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hardening_support import Workspace, case, features, invoke, model_state
from safetensors.torch import save_file
from typer.testing import CliRunner

from laplace_cli.core.errors import NumericalError
from laplace_cli.io.posterior_file import read_posterior, write_posterior
from laplace_cli.posterior.full import robust_cholesky


def _overflowing_workspace(ws: Workspace) -> None:
    """First-layer weights of 1e-25 and inputs of 1e20 in the second batch (rows 8..15).

    The outputs stay finite (W x ≈ 1e-5) but the curvature of the first layer sums x xᵀ ≈ 1e40,
    beyond float32's 3.4e38: good input, a numerical overflow.
    """
    state = model_state(ws / "mlp.safetensors")
    state["0.weight"] = state["0.weight"] * 1e-25
    save_file(state, str(ws / "tiny_first_layer.safetensors"))
    x = features()
    x[8:16] *= 1e20
    ws.split_spec("big", x, np.arange(20) % 3)


@case(
    "numerical",
    "float32 curvature overflow, kron (first-layer weights 1e-25, inputs 1e20 in batch 1)",
    3,
    "big.yaml: split 'train': batch 1: the curvature of 0.weight (A) is not finite (NaN or Inf:"
    " check the scale of the inputs and weights, or fit in float64)",
    "no posterior written",
)
@case(
    "numerical",
    "the same, diag",
    3,
    "big.yaml: split 'train': batch 1: the curvature of 0.weight (diag) is not finite ...",
    "no posterior written",
)
@case(
    "numerical",
    "the same, full",
    3,
    "big.yaml: split 'train': batch 1: the curvature of 0.weight (full) is not finite ...",
    "no posterior written",
)
@pytest.mark.parametrize(
    ("structure", "where"),
    [("kron", "0.weight (A)"), ("diag", "0.weight (diag)"), ("full", "0.weight (full)")],
)
def test_curvature_overflow_names_batch_and_layer(
    runner: CliRunner, ws: Workspace, structure: str, where: str
) -> None:
    _overflowing_workspace(ws)
    args = ws.fit_args(
        ws / "big.yaml", ws / "out.st", model="tiny_first_layer.safetensors", structure=structure
    )
    invoke(
        runner,
        args,
        3,
        f"big.yaml: split 'train': batch 1: the curvature of {where} is not finite",
    )
    assert not (ws / "out.st").exists()


@case("numerical", "the same in `--dtype float64` (control)", 0, "", "the posterior is written")
def test_same_overflow_in_float64_fits(runner: CliRunner, ws: Workspace) -> None:
    # The control: the same data and weights fit in float64, so exit 3 above is the overflow.
    _overflowing_workspace(ws)
    args = ws.fit_args(
        ws / "big.yaml",
        ws / "out.st",
        model="tiny_first_layer.safetensors",
        extra=("--dtype", "float64"),
    )
    invoke(runner, args, 0)
    assert (ws / "out.st").is_file()


@case(
    "numerical",
    "training loss overflow (outputs 1e20 vs targets 0, float32)",
    3,
    "reg.yaml: split 'train': batch 0: the training loss is not finite",
    "no posterior written",
)
def test_loss_overflow_names_batch(runner: CliRunner, ws: Workspace) -> None:
    # Outputs of 1e20 against targets 0: ½(y − f)² = 5e39 overflows float32; the outputs and
    # the curvature (last-layer Jacobians are tanh activations) stay finite.
    state = model_state(ws / "regressor.safetensors")
    state["2.bias"] = state["2.bias"] + 1e20
    save_file(state, str(ws / "offset.safetensors"))
    data = ws.split_spec("reg", features(), np.zeros((20, 1), "float32"), task="regression")
    args = ws.fit_args(data, ws / "out.st", model="offset.safetensors", factory="regressor")
    invoke(runner, args, 3, "reg.yaml: split 'train': batch 0: the training loss is not finite")
    assert not (ws / "out.st").exists()


@case(
    "numerical",
    "model returns NaN for one row (batch 2)",
    3,
    "marked.yaml: split 'train': batch 2: the model's outputs contain NaN or Inf",
    "no posterior written",
)
def test_model_returning_nan_for_one_batch(runner: CliRunner, ws: Workspace) -> None:
    x = features()
    x[17, 0] = 99.0  # row 17 is in batch 2 (batch size 8); the model returns NaN for it
    data = ws.split_spec("marked", x, np.arange(20) % 3)
    args = ws.fit_args(data, ws / "out.st", model="nan.safetensors", factory="nan_on_marked_rows")
    invoke(
        runner,
        args,
        3,
        "marked.yaml: split 'train': batch 2: the model's outputs contain NaN or Inf",
    )
    assert not (ws / "out.st").exists()


# --- not positive definite after jitter ---------------------------------------------------------


@pytest.fixture
def indefinite(fitted: Workspace, tmp_path):
    """The fitted full posterior with H = −100·I and a tiny layer-wise prior.

    Λ = H + diag(δ) has eigenvalues −100 + 1e-3: no jitter of the bounded ladder fixes that.
    A layer-wise (non-scalar) prior takes the Cholesky path (a scalar prior takes the
    eigendecomposition path, which clamps H's eigenvalues at 0).
    """
    pf = read_posterior(fitted / "post_full.st")
    tensors = dict(pf.tensors)
    dtype, p = tensors["mean"].dtype, tensors["mean"].numel()
    tensors["full.curvature"] = -100.0 * torch.eye(p, dtype=dtype)
    tensors["prior.precision"] = torch.full((4,), 1e-3, dtype=dtype)  # 4 parameter tensors
    path = tmp_path / "indefinite.st"
    write_posterior(path, tensors, pf.metadata)
    return path


@case(
    "numerical",
    "precision not positive definite after jitter (H = −100·I, layer-wise prior 1e-3) in"
    " predict, evaluate, marglik, tune",
    3,
    "posterior precision is not positive definite even with jitter 1.0e-08, 1.0e-07, 1.0e-06,"
    " 1.0e-05, 1.0e-04, 1.0e-03; raise the prior precision or check the curvature for"
    " non-finite values",
    "the posterior is unchanged; tune writes no output",
)
@pytest.mark.parametrize("command", ["predict", "evaluate", "marglik", "tune"])
def test_not_positive_definite_after_jitter(
    runner: CliRunner, fitted: Workspace, indefinite, command: str, tmp_path
) -> None:
    data = str(fitted / "data.yaml")
    args = {
        "predict": ["predict", "-p", str(indefinite), "--data", data],
        "evaluate": ["evaluate", "-p", str(indefinite), "--data", data, "--split", "test"],
        "marglik": ["marglik", str(indefinite)],
        # layer-wise: the fixture's prior is layer-wise (the Cholesky path); the default
        # prior structure of tune is scalar (the eigendecomposition path, which clamps H).
        "tune": [
            "tune",
            "-p",
            str(indefinite),
            "--prior-structure",
            "layerwise",
            "-o",
            str(tmp_path / "tuned.st"),
        ],
    }[command]
    before = indefinite.read_bytes()
    invoke(
        runner,
        args,
        3,
        "posterior precision is not positive definite even with jitter ",
        "1.0e-03",
        "raise the prior precision",
    )
    assert indefinite.read_bytes() == before
    assert not (tmp_path / "tuned.st").exists()


def test_robust_cholesky_raises_with_the_ladder_tried(float64) -> None:
    m = torch.diag(torch.tensor([1.0, -1.0, 2.0]))
    with pytest.raises(NumericalError) as info:
        robust_cholesky(m, "test matrix")
    message = str(info.value)
    # scale = mean |diag| = 4/3; jitter 1e-10·scale, ×10 per try, six tries.
    ladder = [f"{4 / 3 * 10.0 ** (k - 10):.1e}" for k in range(6)]
    assert message.startswith("test matrix is not positive definite even with jitter ")
    assert ", ".join(ladder) in message


def test_robust_cholesky_jitter_fixes_a_singular_psd_matrix(float64) -> None:
    v = torch.tensor([[1.0, 2.0, 3.0]])
    m = v.T @ v  # rank 1: Cholesky fails without jitter
    assert int(torch.linalg.cholesky_ex(m).info) != 0
    L = robust_cholesky(m)
    # The first rung that works: L Lᵀ = M + jitter·I with jitter ≤ 1e-4·mean diag.
    err = (L @ L.T - m).abs().max()
    assert 0 < err <= 1e-4 * m.diagonal().mean()


def test_library_raises_and_never_exits(indefinite) -> None:
    """The Python API raises NumericalError; only the CLI turns it into an exit code."""
    from laplace_cli.pipeline.stages import load_posterior

    lp = load_posterior(indefinite)
    try:
        lp.la.log_marginal_likelihood()
    except NumericalError as err:
        assert "jitter" in str(err)
    except SystemExit:  # pragma: no cover - the defect this test guards against
        pytest.fail("the library called exit()")
    else:  # pragma: no cover
        pytest.fail("no NumericalError")
