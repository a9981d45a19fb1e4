"""Peak memory and time of `laplace predict --input big.csv` as the input grows (streaming check).

Run from the repository root:

    python benchmarks/bench_predict_stream.py                     # 1x, 10x, 100x; writes JSON
    python benchmarks/bench_predict_stream.py --multiples 1 10 100 --structure kron \
        --subset all --out benchmarks/results/predict_stream.json

`laplace predict` promises one row per input, in order, with memory bounded by one chunk of rows
whatever the input length (docs/design.md §1, `pipeline.iter_prediction_rows`). This script checks
that from the outside, on the process a user runs:

1. `laplace fit` on digits_mlp (model.pt2, the sample data spec) writes a posterior.
2. For each multiple m, a CSV with m copies of the digits test split (360 rows, 64 feature
   columns and the `label` column, which predict ignores) is written: 36,000 rows at 100x.
3. `laplace predict -p post.st --input big.csv -o out.jsonl --quiet` runs in a fresh process
   under a small Python wrapper that reports `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`,
   i.e. the peak resident set of that one `laplace` process (Linux reports KiB). The wrapper is
   needed because RUSAGE_CHILDREN is the maximum over *all* waited-for children of a process.
4. The output must have exactly one row per input, with ids 0..N-1 in order; the script exits 1
   otherwise.

For reference, the same measurement is taken for `laplace inspect post.st` (the interpreter,
torch and the CLI, no model and no data) and for `laplace predict` on the 1x input. Flat
memory means the 100x peak is close to the 1x peak (the JSON reports the ratio and the growth
in MiB); time should grow linearly with the rows.

Prints one JSON document on stdout and writes it to `--out` with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "digits_mlp"
MIB = 1024**2

# Runs `argv` as a child, waits for it, prints its peak RSS (bytes), wall time and exit code.
_WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - start
kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(json.dumps({"rc": proc.returncode, "wall_s": wall, "max_rss": kib * 1024,
                  "stderr": proc.stderr.decode(errors="replace")[-2000:]}))
"""


def laplace_cmd(*args: str) -> list[str]:
    """`laplace ...` through the current interpreter (the console script may not be on PATH)."""
    return [sys.executable, "-m", "laplace_cli", *args]


def measure(argv: list[str]) -> dict[str, Any]:
    """Peak RSS (bytes) and wall time of one fresh process running `argv`."""
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result['rc']}):\n{result['stderr']}")
    return result


def write_csv(path: Path, x: np.ndarray, y: np.ndarray, multiple: int) -> int:
    """`multiple` copies of (x, y) as CSV (features f0..f63, then label); returns the row count."""
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"]) + "\n"
    block = "".join(
        ",".join(f"{v:.6g}" for v in row) + f",{int(label)}\n" for row, label in zip(x, y)
    )
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(header)
        for _ in range(multiple):
            fh.write(block)
    return multiple * x.shape[0]


def check_rows(path: Path, n: int) -> None:
    """Exactly `n` JSONL rows with ids 0..n-1 in order."""
    ids = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            ids.append(json.loads(line)["id"])
    if ids != list(range(n)):
        bad = next((i for i, v in enumerate(ids) if v != i), len(ids))
        raise SystemExit(
            f"{path}: expected ids 0..{n - 1} in order, got {len(ids)} rows "
            f"(first mismatch at row {bad})"
        )


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
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
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--structure", default="kron")
    parser.add_argument("--subset", default="all")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per predict chunk")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/predict_stream.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    args = parser.parse_args(argv)

    test = np.load(SAMPLE / "test.npz")
    x, y = test["x"], test["y"]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        post = work / "post.st"
        fit = measure(
            laplace_cmd(
                "fit", str(SAMPLE / "model.pt2"), "--data", str(SAMPLE / "data.yaml"),
                "--subset", args.subset, "--structure", args.structure, "-o", str(post), "--quiet",
            )
        )  # fmt: skip
        baseline = measure(laplace_cmd("inspect", str(post)))
        results = []
        for m in args.multiples:
            csv_path = work / f"x{m}.csv"
            n = write_csv(csv_path, x, y, m)
            out = work / f"x{m}.jsonl"
            r = measure(
                laplace_cmd(
                    "predict", "-p", str(post), "--input", str(csv_path), "-o", str(out),
                    "--batch-size", str(args.batch_size), "--quiet",
                )
            )  # fmt: skip
            check_rows(out, n)
            results.append(
                {
                    "multiple": m,
                    "rows": n,
                    "input_mib": round(csv_path.stat().st_size / MIB, 2),
                    "output_mib": round(out.stat().st_size / MIB, 2),
                    "max_rss_mib": round(r["max_rss"] / MIB, 1),
                    "wall_s": round(r["wall_s"], 2),
                    "rows_per_s": round(n / r["wall_s"], 1),
                }
            )
            csv_path.unlink()
            out.unlink()
    first, last = results[0], results[-1]
    report = {
        "benchmark": "laplace predict --input CSV -o out.jsonl, peak RSS vs input size "
        "(bench_predict_stream.py)",
        "settings": {
            "model": "digits_mlp (model.pt2)",
            "subset": args.subset,
            "structure": args.structure,
            "batch_size": args.batch_size,
            "measure": "ru_maxrss of the laplace process (RUSAGE_CHILDREN of a one-child wrapper)",
        },
        "machine": machine_info(),
        "fit": {"max_rss_mib": round(fit["max_rss"] / MIB, 1), "wall_s": round(fit["wall_s"], 2)},
        "baseline_inspect": {
            "max_rss_mib": round(baseline["max_rss"] / MIB, 1),
            "wall_s": round(baseline["wall_s"], 2),
        },
        "results": results,
        "summary": {
            "rows_ratio": last["rows"] / first["rows"],
            "max_rss_ratio": round(last["max_rss_mib"] / first["max_rss_mib"], 3),
            "max_rss_growth_mib": round(last["max_rss_mib"] - first["max_rss_mib"], 1),
            "one_row_per_input_in_order": True,  # check_rows exits 1 otherwise
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
