"""Fit time of `laplace fit` with 1 and 2 processes (torchrun, gloo) and 1×, 4×, 16× the data.

Run from the repository root:

    python benchmarks/bench_distributed.py                       # writes the JSON below
    python benchmarks/bench_distributed.py --scales 1 4 16 --procs 1 2 --structure kron \
        --out benchmarks/results/distributed.json

The model is sample_models/digits_mlp (weights from model.safetensors + the factory in
sample_models/models.py, 8,970 parameters, subset all). "1× the data" is its train split
(1,077 rows) tiled `--base-tiles` times (default 8: 8,616 rows, so that the cost per row, not
the one-off warm-up of the first batch of about a second, dominates the fit time); scale k
tiles it k times more, into a temporary data spec. Each configuration runs the real command line in a fresh
process group — `python -m laplace_cli fit ... --json` for 1 process,
`torchrun --standalone --nproc-per-node N -m laplace_cli fit ... --json` for N — with one
thread per process (OMP_NUM_THREADS=1), so N processes use N cores. Reported per run:

* `fit_seconds`: the fit itself as the command reports it (loop over this rank's shard,
  all-reduce of the raw sums, decomposition; model and data loading excluded), rank 0's clock;
* `wall_seconds`: the whole command, interpreter and process-group start included;
* `seconds_per_1k_rows`: fit_seconds per 1,000 training rows, and for N > 1 the speed-up over
  1 process at the same size.

The best (smallest) fit time of `--repeats` runs is kept. Per process count, a least-squares line
fit_seconds = a + b·rows gives the fixed cost a (first-batch warm-up, decomposition, all-reduce)
and the cost per row b; linear growth in the data shows as small residuals of that line.

Prints one JSON document on stdout and writes it to `--out` with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "digits_mlp"


def tiled_spec(folder: Path, scale: int, base_tiles: int) -> Path:
    """A data spec whose train split is the digits train split repeated scale·base_tiles times."""
    train = np.load(SAMPLE / "train.npz")
    k = scale * base_tiles
    x, y = np.concatenate([train["x"]] * k), np.concatenate([train["y"]] * k)
    np.savez(folder / f"train{scale}.npz", x=x, y=y)
    spec = folder / f"data{scale}.yaml"
    spec.write_text(
        f"task: classification\nbatch_size: 256\nsplits:\n  train: {{path: train{scale}.npz}}\n"
    )
    return spec


def run_fit(spec: Path, procs: int, structure: str, out: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    args = [
        "fit",
        str(SAMPLE / "model.safetensors"),
        "--model-factory",
        f"{ROOT / 'sample_models' / 'models.py'}:digits_mlp",
        "--data",
        str(spec),
        "--subset",
        "all",
        "--structure",
        structure,
        "--device",
        "cpu",
        "-o",
        str(out),
        "--json",
        "-q",
    ]
    if procs == 1:
        cmd = [sys.executable, "-m", "laplace_cli", *args]
    else:
        runner = shutil.which("torchrun")
        launcher = [runner] if runner else [sys.executable, "-m", "torch.distributed.run"]
        cmd = [*launcher, "--standalone", "--nproc-per-node", str(procs), "-m", "laplace_cli"]
        cmd += args
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    return {
        "fit_seconds": round(summary["fit_seconds"], 3),
        "wall_seconds": round(wall, 3),
        "n_data": summary["n_data"],
        "shard_sizes": summary.get("shard_sizes", [summary["n_data"]]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--structure", default="kron")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--base-tiles", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed.json"))
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for scale in args.scales:
            spec = tiled_spec(folder, scale, args.base_tiles)
            for procs in args.procs:
                out = folder / f"post-{scale}-{procs}.st"
                tries = [run_fit(spec, procs, args.structure, out) for _ in range(args.repeats)]
                r = min(tries, key=lambda t: t["fit_seconds"])
                r["fit_seconds_all"] = [t["fit_seconds"] for t in tries]
                r.update(scale=scale, procs=procs)
                r["seconds_per_1k_rows"] = round(1000 * r["fit_seconds"] / r["n_data"], 4)
                runs.append(r)
                print(json.dumps(r), file=sys.stderr)
    base = {(r["scale"], 1): r["fit_seconds"] for r in runs if r["procs"] == 1}
    for r in runs:
        if r["procs"] > 1 and (r["scale"], 1) in base:
            r["speedup_vs_1_process"] = round(base[(r["scale"], 1)] / r["fit_seconds"], 3)
    lines = {}
    for procs in args.procs:
        pts = [(r["n_data"], r["fit_seconds"]) for r in runs if r["procs"] == procs]
        if len(pts) >= 2:
            n, t = np.array(pts, dtype=float).T
            b, a = np.polyfit(n, t, 1)
            lines[str(procs)] = {
                "fixed_seconds": round(float(a), 3),
                "seconds_per_1k_rows": round(1000 * float(b), 4),
                "max_abs_residual_seconds": round(float(np.abs(t - (a + b * n)).max()), 3),
            }
    result = {
        "benchmark": "bench_distributed",
        "model": "digits_mlp (8,970 parameters, subset all)",
        "structure": args.structure,
        "batch_size": 256,
        "train_rows_at_scale_1": 1077 * args.base_tiles,
        "runs": runs,
        "linear_fit_by_procs": lines,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "threads_per_process": 1,
            "backend": "gloo (CPU)",
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
