"""Benchmark: a 100-point grid search of the prior precision vs one GLM predictive pass.

    python benchmarks/bench_tuning.py                       # prints JSON on stdout
    python benchmarks/bench_tuning.py --threads 1 2 -o benchmarks/results/tuning.json
    python benchmarks/bench_tuning.py --structure diag      # or full; --subset last_layer

On the digits MLP sample model (default: K-FAC over all weights, the model's own float32), it
times

* `glm_pass_s`: one GLM predictive pass over the validation split, `la(x, "glm", "probit")` for
  every batch of the split's loader (batch size 256, as in the sample's data.yaml);
  `glm_pass_whole_split_s` the same as one call on all 360 rows;
* `gridsearch_s`: `la.optimize_prior_precision(method="gridsearch", val_loader=...)` with the
  default 100-point grid, *including* the one validation pass that builds the cache;
* `naive_gridsearch_s`: the same grid scored by calling `la(...)` at every grid point
  (`use_cache=False`), what the reference implementation does.

Timings are medians (and minima: on a shared machine other load only adds time) over interleaved
repeats; the naive search is run fewer times, it is slow. The acceptance target is
gridsearch_s < 3 × glm_pass_s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from laplace_cli import Laplace  # noqa: E402
from laplace_cli.tuning.api import TuningWarning  # noqa: E402


def load_sample(name: str) -> tuple[torch.nn.Module, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The sample model from its safetensors + factory, and its train/val arrays."""
    spec = importlib.util.spec_from_file_location(
        "sample_models_factories", ROOT / "sample_models" / "models.py"
    )
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    model = getattr(models, name)()
    model.load_state_dict(load_file(str(ROOT / "sample_models" / name / "model.safetensors")))
    data = {}
    for split in ("train", "val"):
        arrays = np.load(ROOT / "sample_models" / name / f"{split}.npz")
        data[split] = (torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]))
    return model, data


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(threads: int, args: argparse.Namespace) -> dict:
    """One measurement at a given number of intra-op threads."""
    torch.set_num_threads(threads)
    load_before = _load_average()
    model, data = load_sample("digits_mlp")
    train = batches(*data["train"], args.batch_size)
    val = batches(*data["val"], args.batch_size)
    la = Laplace(model, "classification", args.subset, args.structure)
    fit_s = timed(lambda: la.fit(train))
    x_val = data["val"][0]

    def glm_pass() -> None:
        for x, _ in val:
            la(x, pred_type="glm", link_approx="probit")

    def glm_pass_whole() -> None:
        la(x_val, pred_type="glm", link_approx="probit")

    def gridsearch(use_cache: bool = True) -> dict:
        return la.optimize_prior_precision(
            method="gridsearch", val_loader=val, grid_size=args.grid_size, use_cache=use_cache
        )

    # Warm-up (allocator, first-call overheads), then interleaved repeats.
    glm_pass()
    result = gridsearch()
    pass_times, whole_times, grid_times = [], [], []
    for _ in range(args.repeats):
        pass_times.append(timed(glm_pass))
        whole_times.append(timed(glm_pass_whole))
        grid_times.append(timed(gridsearch))
    naive_times, naive = [], None
    for _ in range(args.naive_repeats):
        start = time.perf_counter()
        naive = gridsearch(use_cache=False)
        naive_times.append(time.perf_counter() - start)
    cached_curve = [row[1] for row in result["curve"]]
    naive_curve = [row[1] for row in naive["curve"]]
    max_rel = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(cached_curve, naive_curve))
    glm_s, grid_s = statistics.median(pass_times), statistics.median(grid_times)
    glm_min, grid_min = min(pass_times), min(grid_times)
    naive_s = statistics.median(naive_times)
    return {
        "threads": torch.get_num_threads(),
        # Other processes on the machine (1-minute load average before and after the run):
        # with more runnable processes than cores, every timing here stretches.
        "load_average_1min": [load_before, _load_average()],
        "fit_s": round(fit_s, 4),
        "glm_pass_s": round(glm_s, 5),
        "gridsearch_s": round(grid_s, 5),
        "ratio_gridsearch_to_pass": round(grid_s / glm_s, 3),
        "glm_pass_whole_split_s": round(statistics.median(whole_times), 5),
        "ratio_gridsearch_to_whole_split_pass": round(grid_s / statistics.median(whole_times), 3),
        "glm_pass_min_s": round(glm_min, 5),
        "gridsearch_min_s": round(grid_min, 5),
        "ratio_of_minima": round(grid_min / glm_min, 3),
        "naive_gridsearch_s": round(naive_s, 4),
        "speedup_vs_naive": round(naive_s / grid_s, 1),
        "chosen_prior_precision": result["prior_precision"][0],
        "naive_chosen_prior_precision": naive["prior_precision"][0],
        "max_rel_diff_cached_vs_naive_loss": max_rel,
        "glm_pass_s_all": [round(t, 5) for t in pass_times],
        "gridsearch_s_all": [round(t, 5) for t in grid_times],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed repeats (after a warm-up)")
    parser.add_argument("--naive-repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--grid-size", type=int, default=100)
    parser.add_argument("--structure", default="kron", choices=["kron", "diag", "full"])
    parser.add_argument("--subset", default="all", choices=["all", "last_layer"])
    parser.add_argument(
        "--threads", type=int, nargs="+", default=None, help="torch intra-op threads (one run each)"
    )
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    warnings.simplefilter("ignore", TuningWarning)
    threads = args.threads or [torch.get_num_threads()]
    n_val = int(len(np.load(ROOT / "sample_models" / "digits_mlp" / "val.npz")["y"]))
    out = {
        "benchmark": "tuning: 100-point grid search vs one GLM predictive pass",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "model": f"sample_models/digits_mlp ({args.structure}, subset {args.subset}, float32)",
        "n_val": n_val,
        "batch_size": args.batch_size,
        "grid_size": args.grid_size,
        "repeats": args.repeats,
        "target_ratio": 3.0,
        "runs": [run(t, args) for t in threads],
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "cpu": _cpu_name(),
            "device": "cpu",
        },
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
