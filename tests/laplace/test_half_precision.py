"""Half-precision models (bfloat16 / float16): forward and backward in the model's dtype, the
curvature, marglik and predictions in float32 (or float64 on request); results within the bound
of docs/half-precision.md of the float32 model; refusals; the CLI on a sample model.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from laplace_cli import Laplace
from laplace_cli.cli.app import app
from laplace_cli.core.errors import BadInputError

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "sample_models" / "digits_mlp"

# The documented bounds (docs/half-precision.md): max |p_half − p_fp32| over inputs and classes,
# and |log p(D)_half − log p(D)_fp32| / |log p(D)_fp32|.
BOUND = {torch.bfloat16: (0.02, 0.01), torch.float16: (0.005, 0.0025)}
CASES = [
    ("all", "diag"),
    ("all", "kron"),
    ("all", "full"),
    ("last_layer", "kron"),
    ("last_layer", "diag"),
]


def _net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, list]:
    torch.manual_seed(0)
    X = torch.randn(240, 5)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.3).long()
    model = _net()
    opt = torch.optim.Adam(model.parameters(), 2e-2)
    for _ in range(120):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    loader = [(X[i : i + 60], y[i : i + 60]) for i in range(0, 240, 60)]
    return model, X, loader


def _copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    out = _net()
    out.load_state_dict(model.state_dict())
    return out.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("subset", "structure"), CASES)
def test_half_within_documented_bound_of_float32(trained, dtype, subset, structure):
    model, X, loader = trained
    ref = Laplace(model, "classification", subset, structure).fit(loader)
    half = _copy(model, dtype)
    before = [p.detach().clone() for p in half.parameters()]
    la = Laplace(half, "classification", subset, structure).fit(loader)
    # The model is neither converted nor changed by the fit.
    assert all(p.dtype == dtype for p in half.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, half.parameters()))
    assert la.dtype == torch.float32 and la.model_dtype == dtype
    probs = la(X)
    assert probs.dtype == torch.float32
    f_mu, f_var = la(X, pred_type="glm", link_approx="probit"), la.functional_variance(X[:4])[1]
    assert f_var.dtype == torch.float32 and f_mu.dtype == torch.float32
    p_bound, ml_bound = BOUND[dtype]
    assert (probs - ref(X)).abs().max() <= p_bound
    ml, ml_ref = la.log_marginal_likelihood(), ref.log_marginal_likelihood()
    assert ml.dtype == torch.float32
    assert abs(float(ml - ml_ref)) <= ml_bound * abs(float(ml_ref))
    # Not a test that cannot fail: the half model really differs from the float32 one.
    assert (probs - ref(X)).abs().max() > 0


def test_curvature_is_float32_products_of_half_pieces(trained):
    """The bfloat16 fit's curvature equals the float32 fit on the bf16-rounded weights up to the
    rounding of the model's own forward/backward (much tighter than the bound above)."""
    model, X, loader = trained
    half = _copy(model, torch.bfloat16)
    la = Laplace(half, "classification", "all", "diag").fit(loader)
    rounded = _copy(half.float(), torch.float32)
    ref = Laplace(rounded, "classification", "all", "diag").fit(loader)
    h, h_ref = la.posterior.h, ref.posterior.h
    assert h.dtype == torch.float32
    rel = ((h - h_ref).norm() / h_ref.norm()).item()
    assert rel < 0.03, rel


def test_curvature_dtype_float64_on_request(trained):
    model, X, loader = trained
    half = _copy(model, torch.bfloat16)
    la = Laplace(half, "classification", "all", "kron", curvature_dtype="float64").fit(loader)
    ref = Laplace(half, "classification", "all", "kron").fit(loader)
    assert la.dtype == torch.float64 and la(X[:3]).dtype == torch.float64
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    # float32 and float64 accumulation of the same half-precision pieces agree closely.
    assert torch.allclose(la(X).float(), ref(X), atol=1e-5)
    # a float32 model can ask for a float64 posterior too
    la32 = Laplace(model, "classification", "all", "kron", curvature_dtype=torch.float64)
    assert la32.dtype == torch.float64 and la32.model_dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hessian_structure": "lowrank"}, "lowrank.*not available for a bfloat16 model"),
        ({"hessian_structure": "gp"}, "gp.*not available for a bfloat16 model"),
        ({"hessian_structure": "kron", "curvature_dtype": "bfloat16"}, "float32 or float64"),
        ({"hessian_structure": "kron", "curvature_dtype": "int8"}, "expected float32"),
    ],
)
def test_refusals(trained, kwargs, match):
    model, _, _ = trained
    with pytest.raises(BadInputError, match=match):
        Laplace(_copy(model, torch.bfloat16), "classification", "all", **kwargs)


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def _probs(path: Path) -> list[list[float]]:
    rows = list(csv.DictReader(path.open()))
    cols = [k for k in rows[0] if k.startswith("prob_")]
    return [[float(r[k]) for k in cols] for r in rows]


@pytest.mark.usefixtures("one_thread")
def test_cli_bfloat16_sample_model(tmp_path):
    model, data = DIGITS / "model.pt2", DIGITS / "data.yaml"
    preds = {}
    for dt in ("float32", "bfloat16"):
        post = tmp_path / f"{dt}.st"
        fit = ("fit", model, "--data", data, "--subset", "all", "--structure", "kron")
        code, out = _run(*fit, "--dtype", dt, "-o", post, "--quiet")
        assert code == 0, out
        code, out = _run("tune", "-p", post, "--data", data, "--method", "marglik", "--quiet")
        assert code == 0, out
        if dt == "bfloat16":
            code, out = _run("evaluate", "-p", post, "--data", data, "--json", "--quiet")
            assert code == 0, out
            rows = json.loads(out)["rows"]
            assert rows["laplace"]["nll"] < 1.0  # a working classifier, not NaN
        pred = tmp_path / f"{dt}.csv"
        code, out = _run("predict", "-p", post, "--data", data, "-o", pred, "--quiet")
        assert code == 0, out
        preds[dt] = _probs(pred)
    # The posterior records the model's dtype; its tensors are float32.
    code, out = _run("inspect", tmp_path / "bfloat16.st", "--json")
    assert code == 0, out
    meta = json.loads(out)
    assert "bfloat16" in json.dumps(meta)
    diff = max(
        abs(a - b) for ra, rb in zip(preds["float32"], preds["bfloat16"]) for a, b in zip(ra, rb)
    )
    assert 0 < diff <= BOUND[torch.bfloat16][0]
    # lowrank is refused for a bfloat16 model: exit 2 with the reason.
    code, out = _run(
        "fit", model, "--data", data, "--subset", "all", "--structure", "lowrank",
        "--dtype", "bfloat16", "-o", tmp_path / "lr.st",
    )  # fmt: skip
    assert code == 2 and "bfloat16" in out


@pytest.mark.usefixtures("one_thread")
def test_cli_curvature_dtype_float64_for_a_bfloat16_model(tmp_path):
    """`fit --curvature-dtype float64`: the curvature of a bf16 model is stored in float64 and
    predicts like the float32 default (same bf16 Jacobians, finer accumulation)."""
    from safetensors import safe_open

    model, data = DIGITS / "model.pt2", DIGITS / "data.yaml"
    fit = ("fit", model, "--data", data, "--subset", "last_layer", "--structure", "kron")
    preds, dtypes = {}, {}
    for cd in ("float32", "float64"):
        post = tmp_path / f"{cd}.st"
        code, out = _run(
            *fit, "--dtype", "bfloat16", "--curvature-dtype", cd, "-o", post, "--quiet"
        )
        assert code == 0, out
        with safe_open(str(post), framework="pt") as f:
            dtypes[cd] = {f.get_tensor(k).dtype for k in f.keys() if "posterior" in k or "." in k}
        pred = tmp_path / f"{cd}.csv"
        code, out = _run("predict", "-p", post, "--data", data, "-o", pred, "--quiet")
        assert code == 0, out
        preds[cd] = _probs(pred)
    assert torch.float64 in dtypes["float64"] and torch.float64 not in dtypes["float32"]
    diff = max(
        abs(a - b) for ra, rb in zip(preds["float32"], preds["float64"]) for a, b in zip(ra, rb)
    )
    assert diff <= 1e-4  # the curvature's precision only; the model's outputs are the same bf16
