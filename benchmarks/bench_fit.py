"""Fit time and peak memory per structure and subset on the sample models.

Each configuration runs in a fresh subprocess so that its peak resident memory (max RSS) is its
own; the baseline RSS of a process that only loads the model and data is reported beside it.

    python benchmarks/bench_fit.py            # prints JSON, writes benchmarks/results/fit.json
    python benchmarks/bench_fit.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = [
    ("digits_mlp", "all", "diag"),
    ("digits_mlp", "all", "kron"),
    ("digits_mlp", "last_layer", "full"),
    ("digits_mlp", "all", "lowrank"),
    ("digits_cnn", "all", "diag"),
    ("digits_cnn", "all", "kron"),
    ("digits_cnn", "last_layer", "kron"),
    ("digits_cnn", "last_layer", "full"),
    ("diabetes_mlp", "all", "full"),
    ("diabetes_mlp", "all", "kron"),
]

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
sys.path.insert(0, {root!r})
from sample_models import models
from laplace_cli import Laplace
from safetensors.torch import load_file
name, subset, structure, repeats, do_fit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
torch.set_num_threads({threads})
folder = {root!r} + "/sample_models/" + name
model = getattr(models, name)()
model.load_state_dict(load_file(folder + "/model.safetensors"))
d = np.load(folder + "/train.npz")
x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=256)
lik = "regression" if name.startswith("diabetes") else "classification"
times = []
if do_fit:
    for _ in range(repeats):
        la = Laplace(model, lik, subset, structure, rank=50 if structure == "lowrank" else None)
        t = time.perf_counter(); la.fit(loader); times.append(time.perf_counter() - t)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"times": times, "max_rss": rss, "n_params": la.n_params if do_fit else None}}))
"""


def run(name: str, subset: str, structure: str, repeats: int, fit: bool, threads: int) -> dict:
    code = CHILD.format(root=str(ROOT), threads=threads)
    out = subprocess.run(
        [sys.executable, "-c", code, name, subset, structure, str(repeats), "1" if fit else "0"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fit.json"))
    args = parser.parse_args()
    import torch

    results = []
    baselines: dict[str, int] = {}
    for name, subset, structure in CONFIGS:
        if name not in baselines:
            baselines[name] = run(name, subset, structure, 0, False, args.threads)["max_rss"]
        r = run(name, subset, structure, args.repeats, True, args.threads)
        times = sorted(r["times"])
        results.append(
            {
                "model": name,
                "subset": subset,
                "structure": structure,
                "n_params": r["n_params"],
                "fit_seconds_median": times[len(times) // 2],
                "fit_seconds_min": times[0],
                "peak_rss_mib": round(r["max_rss"] / 2**20, 1),
                "peak_rss_over_baseline_mib": round((r["max_rss"] - baselines[name]) / 2**20, 1),
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr)
    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "note": "fit over the train split (batch 256), float32; peak RSS of a fresh process; baseline = "
        "process that loaded torch, the model and the data",
        "baseline_rss_mib": {k: round(v / 2**20, 1) for k, v in baselines.items()},
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
