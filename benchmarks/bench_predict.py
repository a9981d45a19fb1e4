"""GLM prediction time and peak memory of the structured (kron / diag) functional variance.

Run from the repository root:

    python benchmarks/bench_predict.py                 # all configurations, writes the JSON
    python benchmarks/bench_predict.py --runs 5 --batch-size 256 --threads 1 \
        --out benchmarks/results/predict.json

For each sample model (digits_mlp, digits_cnn; weights from model.safetensors + the factory in
sample_models/models.py), structure (kron, diag) and subset (all, last_layer), a fresh Python
process fits the Laplace approximation on the train split, then times the GLM probit predictive
`la(x, pred_type="glm", link_approx="probit")` over the test split in batches (median of
`--runs` passes, after one warm-up pass) and measures the peak memory of those passes:

* CPU: the growth of the resident set above its level just before prediction. The peak is
  reset first by writing 5 to /proc/self/clear_refs (Linux ≥ 4.0) and read from VmHWM, so the
  larger peak of fitting does not hide it; where that is not possible, ru_maxrss is used and the
  JSON says so (it can then only show growth beyond the fitting peak). Workers run with a fixed
  glibc mmap threshold (`WORKER_ENV`) so that freed tensors leave the resident set; a 32 MiB
  calibration allocation checks that the probe sees torch's CPU allocations.
* CUDA (`--device cuda`): torch.cuda.max_memory_allocated after reset_peak_memory_stats.

The same measurement is taken for a plain MAP forward pass over the same batches (what running
the model costs anyway) and for one call to the dense per-sample Jacobian (B, C, P) that the
structured path avoids. Reference sizes in the JSON: the model's parameters, one batch of
activations (every module's output, plus the input), and a dense (B, C, P) Jacobian.

Prints one JSON document on stdout and writes it to `--out` with the machine's description.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
MODELS = ["digits_mlp", "digits_cnn"]
STRUCTURES = ["kron", "diag"]
SUBSETS = ["all", "last_layer"]
MIB = 1024**2
#: glibc would otherwise keep freed blocks resident (its mmap threshold grows after each free of
#: a large block), so the resident set would not fall back and peaks would hide in it: a fixed
#: threshold serves every block ≥ 64 KiB by mmap and returns it to the system when freed.
WORKER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


# --- memory probes ---------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class PeakMemory:
    """Peak memory growth of a block of code, in bytes (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
            self.base = _status_kib("VmRSS") * 1024
            self.method = "VmHWM after clear_refs (peak RSS growth)"
        except OSError:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "ru_maxrss growth (cannot be reset: lower bound)"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak = _status_kib("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.bytes = max(0, peak - self.base)


# --- one configuration (runs in its own process) ---------------------------------------------


def load_model(name: str) -> nn.Module:
    spec = importlib.util.spec_from_file_location("sample_models_factories", SAMPLES / "models.py")
    factories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factories)
    model = getattr(factories, name)()
    model.load_state_dict(load_file(SAMPLES / name / "model.safetensors"))
    return model.eval()


def load_split(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(SAMPLES / name / f"{split}.npz")
    return torch.from_numpy(data["x"]), torch.from_numpy(data["y"])


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of one batch of activations: the input and every leaf module's output."""
    total = [x.numel() * x.element_size()]
    hooks = [
        m.register_forward_hook(lambda m, a, o: total.append(o.numel() * o.element_size()))
        for m in model.modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return sum(total)


def run_config(
    model_name: str, structure: str, subset: str, batch_size: int, runs: int, device: str
) -> dict[str, Any]:
    from laplace_cli import Laplace

    dev = torch.device(device)
    model = load_model(model_name).to(dev)
    x_train, y_train = load_split(model_name, "train")
    x_test, _ = load_split(model_name, "test")
    train = [
        (x_train[i : i + batch_size].to(dev), y_train[i : i + batch_size].to(dev))
        for i in range(0, len(x_train), batch_size)
    ]
    batches = [x_test[i : i + batch_size].to(dev) for i in range(0, len(x_test), batch_size)]

    t0 = time.perf_counter()
    la = Laplace(model, "classification", subset, structure).fit(train)
    fit_s = time.perf_counter() - t0

    def predict() -> None:
        for xb in batches:
            la(xb, pred_type="glm", link_approx="probit")
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    predict()  # warm-up: allocator, row-chunk probe, kernels
    times = []
    with PeakMemory(dev) as mem:
        for _ in range(runs):
            t0 = time.perf_counter()
            predict()
            times.append(time.perf_counter() - t0)

    with PeakMemory(dev) as map_mem, torch.no_grad():
        for xb in batches:
            model(xb)

    with PeakMemory(dev) as calibration:
        block = torch.ones(8 * MIB, dtype=torch.float32, device=dev)  # 32 MiB
        del block

    with PeakMemory(dev) as dense_mem:
        _, J = la.subset.jacobians(batches[0])
        dense_shape = list(J.shape)
        del J

    n_params_model = sum(p.numel() for p in model.parameters())
    itemsize = next(model.parameters()).element_size()
    n_classes = la.n_outputs or 1
    model_bytes = n_params_model * itemsize
    act_bytes = activation_bytes(model, batches[0])
    dense_bytes = len(batches[0]) * n_classes * la.n_params * itemsize
    rows_cache = getattr(la, "_factor_row_bytes", {})
    factor_per_row = next(iter(rows_cache.values()))[0] if rows_cache else None
    peak = mem.bytes
    return {
        "model": model_name,
        "structure": structure,
        "subset": subset,
        "n_params_model": n_params_model,
        "n_params_laplace": la.n_params,
        "n_classes": n_classes,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "n_test": len(x_test),
        "batch_size": batch_size,
        "fit_s": round(fit_s, 4),
        "predict_s_median": round(statistics.median(times), 5),
        "predict_s_min": round(min(times), 5),
        "predict_s_runs": [round(t, 5) for t in times],
        "predict_ms_per_row": round(1000 * statistics.median(times) / len(x_test), 4),
        "peak_mem_predict_bytes": peak,
        "peak_mem_map_forward_bytes": map_mem.bytes,
        "peak_mem_dense_jacobian_one_batch_bytes": dense_mem.bytes,
        "dense_jacobian_shape": dense_shape,
        "memory_method": mem.method,
        "memory_calibration_32MiB_bytes": calibration.bytes,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "model_bytes": model_bytes,
        "activation_bytes_one_batch": act_bytes,
        "dense_jacobian_bytes_one_batch": dense_bytes,
        "factor_bytes_one_batch_estimate": (
            factor_per_row * batch_size if factor_per_row is not None else None
        ),
        "peak_over_model_plus_activations": round(peak / (model_bytes + act_bytes), 3),
        "peak_over_dense_jacobian": round(peak / dense_bytes, 4),
    }


# --- driver ----------------------------------------------------------------------------------


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/predict.json")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "STRUCTURE", "SUBSET"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker:
        result = run_config(*args.worker, args.batch_size, args.runs, args.device)
        print(json.dumps(result))
        return 0

    machine_before = machine_info(args.device)
    results = []
    for model_name in MODELS:
        for structure in STRUCTURES:
            for subset in SUBSETS:
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    model_name,
                    structure,
                    subset,
                    "--batch-size",
                    str(args.batch_size),
                    "--runs",
                    str(args.runs),
                    "--device",
                    args.device,
                ]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=WORKER_ENV)
                if done.returncode != 0:
                    sys.stderr.write(done.stderr)
                    return done.returncode
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                r = results[-1]
                print(
                    f"{model_name:11s} {structure:4s} {subset:10s} "
                    f"{1000 * r['predict_s_median']:8.1f} ms  "
                    f"peak {r['peak_mem_predict_bytes'] / MIB:6.1f} MiB  "
                    f"(model+act {(r['model_bytes'] + r['activation_bytes_one_batch']) / MIB:.1f} MiB, "
                    f"dense J {r['dense_jacobian_bytes_one_batch'] / MIB:.1f} MiB)",
                    file=sys.stderr,
                )
    doc = {
        "benchmark": "glm probit prediction over the test split (bench_predict.py)",
        "settings": {
            "batch_size": args.batch_size,
            "runs": args.runs,
            "device": args.device,
            "threads": args.threads,
        },
        "machine": machine_before,
        "load_average_after": machine_info(args.device).get("load_average_1_5_15"),
        "results": results,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
