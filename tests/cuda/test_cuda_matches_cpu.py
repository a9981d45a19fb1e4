"""CUDA results equal CPU results (float64, rtol 1e-6): every structure × subset × likelihood
(fit, GLM predictive, log marginal likelihood, marglik and grid-search tuning) and the CLI
pipeline `fit → tune → predict` with `--device cuda` on a sample model.

Marked `cuda` and skipped where `torch.cuda.is_available()` is False, so a CPU-only machine
collects them and skips them cleanly. Run them on a GPU machine with
`python -m pytest -q -m cuda tests/cuda`.

The reference is the same computation on CPU; both run in float64 on tiny seeded models, so
the only differences are the order of floating-point reductions (~1e-13 relative), far below
the bar.  Low-rank posteriors use rank = P (every eigenpair), so the result does not depend on
the random start block of the eigensolver, whose stream differs between CPU and CUDA
generators.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_cli import Laplace
from laplace_cli.laplace.approximation import supported_combinations

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"
RTOL = 1e-6

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def combinations() -> list[tuple[str, str]]:
    """(subset, structure) pairs this engine supports, from its own table."""
    out = []
    for part in supported_combinations().split("; "):
        subset, structures = part.split(": ")
        out += [(subset, s) for s in structures.split(", ")]
    return out


CASES = [(lik, s, h) for lik in ("classification", "regression") for s, h in combinations()]


def rel(a: Any, b: Any) -> float:
    """max|a − b| / max|b| over all entries (b: the CPU value)."""
    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def problem(likelihood: str):
    """A tiny seeded float64 model (P = 131 / 122) with train and validation rows."""
    g = torch.Generator().manual_seed(0)
    n_out = 3 if likelihood == "classification" else 2
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, n_out)
    )
    model = model.double().eval()
    x = torch.randn(60, 4, generator=g, dtype=torch.float64)
    if likelihood == "classification":
        y = torch.randint(0, n_out, (60,), generator=g)
    else:
        y = torch.randn(60, n_out, generator=g, dtype=torch.float64)
    return model, (x[:40], y[:40]), (x[40:], y[40:])


def run(device: str, likelihood: str, subset: str, structure: str) -> dict[str, Any]:
    """Everything the test compares, computed on `device` and moved to CPU."""
    model, (xt, yt), (xv, yv) = problem(likelihood)
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    kw: dict[str, Any] = {"prior_precision": 2.0}
    if likelihood == "regression":
        kw["sigma_noise"] = 0.7
    if subset == "subnetwork":
        kw["subnetwork_indices"] = torch.arange(0, n_params, 3, device=device)
    if structure == "lowrank":
        # Every eigenpair (see the module docstring): the default min(P, 100) is P for the
        # last layer (P = 27 / 18); all weights (P > 100) ask for P.
        kw["rank"] = n_params if subset == "all" else None
    train = DataLoader(TensorDataset(xt.to(device), yt.to(device)), batch_size=16)
    val = DataLoader(TensorDataset(xv.to(device), yv.to(device)), batch_size=16)
    la = Laplace(model, likelihood, subset_of_weights=subset, hessian_structure=structure, **kw)
    la.fit(train)
    x = xv.to(device)
    out: dict[str, Any] = {}
    f_mu, f_var = la.functional_variance(x)
    out["f_mu"], out["f_var"] = f_mu, f_var
    if likelihood == "classification":
        out["probit"] = la(x, pred_type="glm", link_approx="probit")
    else:
        out["pred_mean"], out["pred_var"] = la(x, pred_type="glm")
    out["log_marglik"] = la.log_marginal_likelihood(
        prior_precision=torch.tensor(3.0, device=device)
    )
    out["marglik_prior"] = (
        la.optimize_prior_precision(method="marglik", tune_sigma_noise=False) and la.prior_precision
    )
    la.prior_precision = 2.0
    grid = la.optimize_prior_precision(
        method="gridsearch", val_loader=val, grid_size=20, pred_type="glm"
    )
    out["grid_prior"] = la.prior_precision
    out["grid_curve"] = torch.tensor([row[-1] for row in grid["curve"]])
    return {k: torch.as_tensor(v).detach().cpu() for k, v in out.items()}


@pytest.mark.parametrize(
    ("likelihood", "subset", "structure"), CASES, ids=["-".join(c) for c in CASES]
)
def test_cuda_equals_cpu(likelihood: str, subset: str, structure: str) -> None:
    cpu = run("cpu", likelihood, subset, structure)
    cuda = run("cuda", likelihood, subset, structure)
    curve = cpu["grid_curve"].sort().values
    if curve[1] - curve[0] <= 1e-8 * curve[0].abs():
        # Two grid points score the same to round-off: either is a right answer on either device.
        del cpu["grid_prior"]
    errs = {k: rel(cuda[k], cpu[k]) for k in cpu}
    bad = {k: v for k, v in errs.items() if not v <= RTOL}
    assert not bad, f"CUDA differs from CPU above {RTOL}: {bad} (all: {errs})"


# --- the CLI pipeline ----------------------------------------------------------------------------
def small_data(folder: Path) -> Path:
    """digits_mlp's first 200 / 100 / 100 rows as a data spec in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["task: classification", "batch_size: 64", "splits:"]
    for split, n in (("train", 200), ("val", 100), ("test", 100)):
        d = np.load(SAMPLES / "digits_mlp" / f"{split}.npz")
        np.savez(folder / f"{split}.npz", x=d["x"][:n], y=d["y"][:n])
        lines.append(f"  {split}: {{path: {split}.npz, x: x, y: y}}")
    (folder / "data.yaml").write_text("\n".join(lines) + "\n")
    return folder / "data.yaml"


def cli_pipeline(device: str, root: Path, data: Path) -> tuple[dict, dict, list[dict]]:
    """fit (all weights, kron, float64) → tune (grid search on val) → predict (test split)."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from laplace_cli.cli.app import app

    def invoke(*args: Any) -> Any:
        res = CliRunner().invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, f"{args[0]} --device {device}: {res.stderr}"
        return res

    post = root / f"{device}.st"
    model = SAMPLES / "digits_mlp" / "model.pt2"
    invoke("fit", model, "--data", data, "--subset", "all", "--structure", "kron",
           "--dtype", "float64", "--device", device, "-o", post)  # fmt: skip
    tune = invoke("tune", "-p", post, "--method", "gridsearch", "--data", data, "--split", "val",
                  "--device", device, "--json")  # fmt: skip
    pred = invoke("predict", "-p", post, "--data", data, "--split", "test", "--device", device)
    tensors = {k: v.double() for k, v in load_file(post).items() if v.is_floating_point()}
    for k in [k for k in tensors if k.endswith(".eigvecs")]:
        # Eigenvectors are defined up to sign (and rotation within repeated eigenvalues), which
        # cuSOLVER and LAPACK choose differently: compare the factor V diag(λ) Vᵀ they encode.
        vecs, vals = tensors.pop(k), tensors[k.removesuffix("eigvecs") + "eigvals"]
        tensors[k.removesuffix("eigvecs") + "factor"] = vecs @ torch.diag_embed(vals) @ vecs.mT
    rows = [json.loads(line) for line in pred.stdout.splitlines()]
    return tensors, json.loads(tune.stdout), rows


def test_cli_pipeline_cuda_equals_cpu(tmp_path: Path) -> None:
    data = small_data(tmp_path / "data")
    cpu_t, cpu_tune, cpu_rows = cli_pipeline("cpu", tmp_path, data)
    cuda_t, cuda_tune, cuda_rows = cli_pipeline("cuda", tmp_path, data)
    assert cpu_t.keys() == cuda_t.keys()
    errs = {k: rel(cuda_t[k], cpu_t[k]) for k in cpu_t if cpu_t[k].abs().max() > 0}
    assert all(v <= RTOL for v in errs.values()), errs
    assert rel(cuda_tune["prior_precision"], cpu_tune["prior_precision"]) <= RTOL
    assert len(cuda_rows) == len(cpu_rows) == 100
    probs = rel([r["probs"] for r in cuda_rows], [r["probs"] for r in cpu_rows])
    assert probs <= RTOL, probs
    assert [r["pred"] for r in cuda_rows] == [r["pred"] for r in cpu_rows]


def test_conv_input_gram_cuda_equals_cpu() -> None:
    """The correlation route of stride-1 conv input factors (`subsets.conv_input_gram`)."""
    from laplace_cli.subsets.conv_input_gram import conv_input_gram

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, 3, padding=1).double()
    x = torch.randn(6, 8, 24, 24, dtype=torch.float64)
    cpu = conv_input_gram(conv, x)
    assert rel(conv_input_gram(conv.cuda(), x.cuda()), cpu) < RTOL
