"""Speed and memory side by side with laplace-torch 0.3 on the bundled sample models.

For each configuration, both libraries (float32, full training split, batch size 128) time,
after one untimed warm-up fit that pays each process's one-time costs:

* fit: one pass of curvature accumulation over the training split;
* marglik: `optimize_prior_precision(method="marglik")` with each library's defaults (ours:
  L-BFGS to convergence; laplace-torch: 100 Adam steps, lr 0.1), scalar prior;
* grid: `optimize_prior_precision(method="gridsearch")`, 100 log-spaced points in [1e-4, 1e4],
  validation NLL of the GLM probit (classification) / GLM Gaussian (regression);
* predict: GLM predictive on the test split (probit for classification).

Each run is a fresh subprocess (so peak RSS is that of one library), the libraries alternate
(ours, theirs, ours, ...), and the median of `--repeats` runs is reported.  Peak memory is the
growth of the process's max RSS over the work (after imports and data loading).

Usage: python benchmarks/compare_laplace_torch.py [--repeats 3] [--threads 2]
Writes benchmarks/results/compare_laplace_torch.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("fit", "marglik", "grid", "predict")
CONFIGS = [
    ("digits_mlp", "classification", "all", "kron"),
    ("digits_mlp", "classification", "last_layer", "full"),
    ("digits_cnn", "classification", "all", "kron"),
    ("diabetes_mlp", "regression", "all", "kron"),
    ("diabetes_mlp", "regression", "all", "full"),
]
#: laplace-torch's grid search recomputes the GLM predictive of the validation split at every
#: point, so its cost is linear in the number of points. Where 100 points take too long (the
#: CNN: fit, marglik and grid search together did not finish within 500 s on 2 cores), it runs
#: the first GRID_POINTS_THEIRS points of the same grid and the time is scaled to 100 points;
#: the table marks such entries "(est.)".
GRID_POINTS_THEIRS = {"digits_cnn": 10}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(lib: str, name: str, likelihood: str, subset: str, structure: str) -> dict:
    """Run the four phases once in this process; return seconds per phase and peak MB."""
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader, TensorDataset

    sys.path.insert(0, str(ROOT))
    from sample_models import models

    if lib == "ours":
        from laplace_cli import Laplace as Cls

        extra: dict = {}
    else:
        from laplace import Laplace as Cls
        from laplace.curvature import CurvlinopsGGN

        extra = {"backend": CurvlinopsGGN}
    model = getattr(models, name)()
    model.load_state_dict(load_file(ROOT / "sample_models" / name / "model.safetensors"))
    model.eval()

    def loader(split: str) -> DataLoader:
        d = np.load(ROOT / "sample_models" / name / f"{split}.npz")
        return DataLoader(
            TensorDataset(torch.from_numpy(d["x"]), torch.from_numpy(d["y"])), batch_size=128
        )

    train, val, test = loader("train"), loader("val"), loader("test")
    x_test = torch.cat([x for x, _ in test])
    kw = {"subset_of_weights": subset, "hessian_structure": structure, "prior_precision": 1.0}
    if likelihood == "regression":
        kw["sigma_noise"] = 0.65
    rss0 = _maxrss_mb()
    times: dict[str, float] = {}

    def make():
        la = Cls(model, likelihood, **kw, **extra)
        la.fit(train)
        return la

    # One untimed fit first: both libraries pay one-time costs on their first autograd call
    # (torch imports sympy lazily for batched grad_outputs; laplace-torch's imports already did).
    make()
    t = time.perf_counter()
    la = make()
    times["fit"] = time.perf_counter() - t

    la = make()
    t = time.perf_counter()
    if lib == "ours":
        la.optimize_prior_precision(method="marglik", tune_sigma_noise=False)
    else:
        la.optimize_prior_precision(method="marglik")
    times["marglik"] = time.perf_counter() - t

    la = make()
    grid_kw = {"pred_type": "glm", "val_loader": val}
    if likelihood == "classification":
        grid_kw["link_approx"] = "probit"
    t = time.perf_counter()
    if lib == "ours":
        la.optimize_prior_precision(method="gridsearch", grid_size=100, **grid_kw)
    else:
        points = GRID_POINTS_THEIRS.get(name, 100)
        la.optimize_prior_precision(
            method="gridsearch",
            grid_size=points,
            log_prior_prec_min=-4,
            log_prior_prec_max=-4 + 8 * (points - 1) / 99,  # the first points of the 100-grid
            **grid_kw,
        )
    times["grid"] = (time.perf_counter() - t) * (100 / points if lib != "ours" else 1)

    la.prior_precision = 1.0
    t = time.perf_counter()
    with torch.no_grad() if lib == "ours" else torch.enable_grad():
        if likelihood == "classification":
            la(x_test, pred_type="glm", link_approx="probit")
        else:
            la(x_test, pred_type="glm")
    times["predict"] = time.perf_counter() - t
    return {"times": times, "peak_mb": _maxrss_mb() - rss0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/compare_laplace_torch.json"))
    ap.add_argument(
        "--only",
        nargs="+",
        metavar="CONFIG",
        help="rerun these configurations (e.g. diabetes_mlp/all/kron) and replace their rows "
        "in an existing --out file",
    )
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(worker(*args.worker)))
        return

    import laplace
    import torch

    machine = (
        f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"laplace-torch {getattr(laplace, '__version__', '0.3')}"
    )
    rows = []
    configs = CONFIGS
    if args.only:
        names = {"/".join(c[:1] + c[2:]): c for c in CONFIGS}
        unknown = set(args.only) - set(names)
        if unknown:
            ap.error(f"unknown configuration(s) {sorted(unknown)}; known: {sorted(names)}")
        previous = json.loads(Path(args.out).read_text())
        if previous.get("repeats") != args.repeats:
            ap.error(f"{args.out} has {previous.get('repeats')} repeats; pass the same --repeats")
        rows = [r for r in previous["rows"] if r["config"] not in args.only]
        configs = [names[c] for c in args.only]
    for cfg in configs:
        runs: dict[str, list[dict]] = {"ours": [], "laplace-torch": []}
        for _ in range(args.repeats):
            for lib in ("ours", "laplace-torch"):  # alternate the libraries
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--worker"]
                out = subprocess.run(
                    [*cmd, "ours" if lib == "ours" else "theirs", *cfg],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[lib].append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = {"config": "/".join(cfg[:1] + cfg[2:])}
        for lib, rs in runs.items():
            row[lib] = {p: statistics.median(r["times"][p] for r in rs) for p in PHASES}
            row[lib]["peak_mb"] = statistics.median(r["peak_mb"] for r in rs)
        row["speedup"] = {p: row["laplace-torch"][p] / row["ours"][p] for p in PHASES}
        rows.append(row)
        order = ["/".join(c[:1] + c[2:]) for c in CONFIGS]
        rows.sort(key=lambda r: order.index(r["config"]))
        print(json.dumps(row), flush=True)
        # Written after every configuration so that an interrupted run keeps what it measured.
        Path(args.out).write_text(
            json.dumps({"machine": machine, "repeats": args.repeats, "rows": rows}, indent=2) + "\n"
        )
    print(f"\n{machine}; median of {args.repeats}; seconds (speed-up = theirs / ours)\n")
    head = "| config | " + " | ".join(f"{p} ours / theirs (×)" for p in PHASES)
    print(head + " | peak MB ours / theirs |")
    print("|" + " --- |" * (len(PHASES) + 2))
    for r in rows:
        est = r["config"].split("/")[0] in GRID_POINTS_THEIRS
        cells = [
            f"{r['ours'][p]:.3f} / {r['laplace-torch'][p]:.3f}"
            + (" (est.)" if est and p == "grid" else "")
            + f" ({r['speedup'][p]:.1f}×)"
            for p in PHASES
        ]
        mem = f"{r['ours']['peak_mb']:.0f} / {r['laplace-torch']['peak_mb']:.0f}"
        print(f"| {r['config']} | " + " | ".join(cells) + f" | {mem} |")


if __name__ == "__main__":
    main()
