"""The memory guard's estimate against what a fit really allocates.

For each (model, subset, structure) a fresh subprocess loads the model and the train split,
records its peak resident set (``resource.getrusage``, ``ru_maxrss``) and, on CUDA, resets
``torch.cuda.max_memory_allocated``; then runs the fit stage exactly as ``laplace fit`` does
(curvature and the summary's log marginal likelihood) and records the peaks again. The growth
of the peak is what the fit needed on top of the model and data; the guard's estimate is
``structure_bytes`` (one copy of the curvature), and the guard refuses when 3 × the estimate
exceeds the budget. The ratio growth / estimate is the factor docs/hardening.md states.

    python benchmarks/memory_guard.py            # CPU
    python benchmarks/memory_guard.py --device cuda

Prints one JSON object per line, then a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    ("digits_mlp", "all", "full"),
    ("digits_mlp", "all", "kron"),
    ("digits_cnn", "all", "full"),
    ("diabetes_mlp", "all", "full"),
    ("digits_mlp", "last_layer", "full"),
]

CHILD = """
import json, resource, sys, torch
from laplace_cli.pipeline.fit_stage import FitOptions, fit
from laplace_cli.pipeline.model_loading import ModelSpec
from laplace_cli.posterior.memory import structure_bytes
model, subset, structure, device = sys.argv[1:5]
root = sys.argv[5]
folder = f"{root}/sample_models/{model}"
likelihood = "regression" if model == "diabetes_mlp" else "classification"
opts = FitOptions(subset=subset, structure=structure, likelihood=likelihood, split="train")
# Warm-up: imports, the model, the data and one small fit of the same kind, so that the
# baseline peak holds everything but the curvature of the real fit.
spec = ModelSpec(f"{folder}/model.pt2")
fit(spec, f"{folder}/data.yaml", FitOptions(subset=subset, structure="diag", likelihood=likelihood), device=device)
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base_cuda = torch.cuda.memory_allocated()
result = fit(spec, f"{folder}/data.yaml", opts, device=device)
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
la = result.la
est = structure_bytes(structure, la.subset.groups, la._itemsize)
out = {"model": model, "subset": subset, "structure": structure, "params": la.n_params,
       "estimate": est, "rss_growth": peak_rss - base_rss}
if device == "cuda":
    torch.cuda.synchronize()
    out["cuda_growth"] = torch.cuda.max_memory_allocated() - base_cuda
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rows = []
    for model, subset, structure in CASES:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, model, subset, structure, args.device, str(ROOT)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    mib = 1024**2
    print("\n| model | subset | structure | params | estimate | RSS growth | ratio |", end="")
    print(" CUDA peak | ratio |" if args.device == "cuda" else "")
    for r in rows:
        ratio = r["rss_growth"] / r["estimate"] if r["estimate"] else float("nan")
        line = (
            f"| {r['model']} | {r['subset']} | {r['structure']} | {r['params']} | "
            f"{r['estimate'] / mib:.2f} MiB | {r['rss_growth'] / mib:.1f} MiB | {ratio:.2f} |"
        )
        if "cuda_growth" in r:
            line += f" {r['cuda_growth'] / mib:.1f} MiB | {r['cuda_growth'] / r['estimate']:.2f} |"
        print(line)


if __name__ == "__main__":
    main()
