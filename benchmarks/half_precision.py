"""The LoRA transformer in bfloat16 vs float32: time, peak memory, predictive differences.

``gpt2_lora`` of benchmarks/zoo.py (2-layer GPT-2-style classifier, LoRA r=8 on c_attn plus a
trainable head; trained once and cached by zoo.load) is fitted in float32 and as a bfloat16
copy (`model.to(torch.bfloat16)`: forward and backward in bfloat16, curvature, marglik and
predictions in float32, docs/half-precision.md), for all/kron and all/diag (`--configs`; LoRA
weights + head), on the same rows. For each: fit seconds, probit GLM predictive seconds on the
test rows, peak RSS of each phase (VmHWM reset before it, so it includes the RSS at its start),
the log marginal likelihood at δ = 1, and against float32 the max |Δp| of the predictive
probabilities and of the MAP softmax, and the relative marglik difference.

    python benchmarks/half_precision.py                 # trains gpt2_lora once (cached)
    python benchmarks/half_precision.py --untrained --n-train 128 --n-test 128 --configs all/kron

Prints a table and writes benchmarks/results/half_precision.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from large_vocab import _peak_mib, _reset_peak  # noqa: E402

# (The LoRA classifier pools the last non-padding token inside the model, so its head's
# features are per token; last_layer needs a feature_reduction that matches that pooling.)
CONFIGS = ["all/kron", "all/diag"]


def run(model, subset, structure, train, test_x, batch) -> dict:
    from laplace_cli import Laplace

    _reset_peak()
    t0 = time.perf_counter()
    la = Laplace(model, "classification", subset, structure).fit(train)
    fit_s, fit_peak = time.perf_counter() - t0, _peak_mib()
    _reset_peak()
    t0 = time.perf_counter()
    probs = torch.cat([la(test_x[i : i + batch]) for i in range(0, len(test_x), batch)])
    pred_s, pred_peak = time.perf_counter() - t0, _peak_mib()
    with torch.no_grad():
        f_map = torch.cat(
            [la.subset.output(test_x[i : i + batch]) for i in range(0, len(test_x), batch)]
        )
    return {
        "la": la,
        "probs": probs,
        "map_probs": torch.softmax(f_map.float(), -1),
        "fit_s": fit_s,
        "predict_s": pred_s,
        "fit_peak_mib": fit_peak,
        "predict_peak_mib": pred_peak,
        "log_marglik": float(la.log_marginal_likelihood()),
        "probs_dtype": str(probs.dtype),
        "n_params": la.n_params,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--n-test", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=CONFIGS, help="subset/structure pairs")
    ap.add_argument(
        "--untrained", action="store_true", help="the seeded random init, no training run"
    )
    ap.add_argument("--out", default=str(HERE / "results" / "half_precision.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import zoo

    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")
    if args.untrained:
        # The seeded random init (costs do not depend on the weights; the differences do).
        model = zoo.gpt2_lora().eval()
        tx, ty = zoo.synthetic_tokens(args.n_train, seed=0)
        test = zoo.synthetic_tokens(args.n_test, seed=2)
        bench = zoo.Bench("gpt2_lora", model, "classification", (tx, ty), test, test, {})
        bench.info["trained"] = False
    else:
        bench = zoo.load("gpt2_lora", args.n_train, args.n_test)
    tx, ty = bench.train
    bs = args.batch_size
    train = [(tx[i : i + bs], ty[i : i + bs]) for i in range(0, len(tx), bs)]
    test_x = bench.test[0]
    rows = []
    for config in args.configs:
        subset, structure = config.split("/")
        res = {}
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            model = copy.deepcopy(bench.model).to(dtype).eval()
            res[name] = run(model, subset, structure, train, test_x, bs)
            res[name]["model_dtype_after_fit"] = str(next(model.parameters()).dtype)
        a, b = res["float32"], res["bfloat16"]
        row = {
            "subset": subset,
            "structure": structure,
            "n_params": a["n_params"],
            "max_abs_diff_probs": float((a["probs"] - b["probs"]).abs().max()),
            "max_abs_diff_map_probs": float((a["map_probs"] - b["map_probs"]).abs().max()),
            "rel_diff_log_marglik": abs(b["log_marglik"] - a["log_marglik"])
            / abs(a["log_marglik"]),
        }
        for name in ("float32", "bfloat16"):
            r = res[name]
            row[name] = {
                k: r[k]
                for k in (
                    "fit_s", "predict_s", "fit_peak_mib", "predict_peak_mib", "log_marglik",
                    "probs_dtype", "model_dtype_after_fit",
                )
            }  # fmt: skip
        rows.append(row)
        print(
            f"{subset}/{structure} ({row['n_params']} params): fit fp32 {a['fit_s']:.1f}s "
            f"bf16 {b['fit_s']:.1f}s; predict fp32 {a['predict_s']:.1f}s bf16 "
            f"{b['predict_s']:.1f}s; peak fit fp32 {a['fit_peak_mib']:.0f} MiB bf16 "
            f"{b['fit_peak_mib']:.0f} MiB; max|Δp| {row['max_abs_diff_probs']:.4f} (MAP "
            f"{row['max_abs_diff_map_probs']:.4f}); marglik rel diff "
            f"{row['rel_diff_log_marglik']:.2e}",
            flush=True,
        )
    result = {
        "schema": 1,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "load_average": list(load),
        "load_average_end": list(os.getloadavg()),
        "n_train": len(tx),
        "n_test": len(test_x),
        "model_info": bench.info,
        "rows": rows,
        "note": "peaks include the RSS at the phase's start (VmHWM reset to the current RSS)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
