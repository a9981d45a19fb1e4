"""Low-rank vs full GGN on the bundled sample models: accuracy of the matrix-free eigensolver.

Run from the repository root:

    python benchmarks/lowrank_vs_full.py > benchmarks/lowrank_vs_full.json

For each model the dense GGN is fitted once (structure "full"); then structure "lowrank" is
fitted for several ranks k and compared with the dense eigendecomposition: relative error of the
top-k eigenvalues, the largest principal angle between the eigenspaces (sin θ), the log
marginal likelihood at the same prior, and wall time. Prints one JSON document on stdout.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from laplace_cli import Laplace  # noqa: E402
from sample_models import models  # noqa: E402


def load(name: str, likelihood: str, n_rows: int) -> tuple[torch.nn.Module, list]:
    model = getattr(models, name)()
    model.load_state_dict(load_file(ROOT / "sample_models" / name / "model.safetensors"))
    model = model.double()
    data = np.load(ROOT / "sample_models" / name / "train.npz")
    x = torch.from_numpy(data["x"][:n_rows]).double()
    y = torch.from_numpy(data["y"][:n_rows])
    y = y.long() if likelihood == "classification" else y.double()
    return model, [(x[i : i + 128], y[i : i + 128]) for i in range(0, len(x), 128)]


def run(name: str, likelihood: str, subset: str, ranks: list[int], n_rows: int) -> dict:
    model, batches = load(name, likelihood, n_rows)
    t0 = time.perf_counter()
    full = Laplace(model, likelihood, subset, "full", prior_precision=1.0).fit(batches)
    t_full = time.perf_counter() - t0
    vals, vecs = torch.linalg.eigh(full.posterior.curvature_dense())
    vals, vecs = vals.flip(0), vecs.flip(1)
    out = {
        "model": name,
        "subset": subset,
        "n_params": full.n_params,
        "n_data": full.n_data,
        "full_seconds": round(t_full, 3),
        "full_log_marglik": float(full.log_marginal_likelihood()),
        "top_eigenvalues": [round(float(v), 6) for v in vals[:5]],
        "ranks": [],
    }
    for k in ranks:
        t0 = time.perf_counter()
        la = Laplace(model, likelihood, subset, "lowrank", rank=k, prior_precision=1.0)
        la.fit(batches)
        seconds = time.perf_counter() - t0
        lam, U = la.posterior.eigvals, la.posterior.U
        rel = ((lam - vals[:k]).abs() / vals[:k].clamp_min(1e-30)).max()
        # sin of the largest principal angle between span(U) and the true top-k eigenspace.
        sin_theta = torch.linalg.matrix_norm(U - vecs[:, :k] @ (vecs[:, :k].T @ U), ord=2)
        out["ranks"].append(
            {
                "k": k,
                "seconds": round(seconds, 3),
                "max_rel_eigenvalue_error": float(rel),
                "sin_largest_angle": float(sin_theta),
                "log_marglik": float(la.log_marginal_likelihood()),
            }
        )
    return out


def main() -> None:
    torch.manual_seed(0)
    results = {
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "dtype": "float64",
        },
        "runs": [
            run("diabetes_mlp", "regression", "all", [10, 50, 200], n_rows=264),
            run("digits_mlp", "classification", "last_layer", [10, 50], n_rows=512),
        ],
    }
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
