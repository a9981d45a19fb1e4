"""Function-space (GP) Laplace: this package against laplace-torch 0.3, time and peak memory.

For ``fmnist_mlp`` (784-1024-256-10, ~1.07M parameters) and ``gpt2_lora`` (benchmarks/zoo.py,
2-layer GPT-2 + LoRA, here with 2 classes), subsets all and last layer, M = 200 context points:

* ``fit``: ``FunctionalLaplace`` / ``FunctionalLLLaplace(model, "classification", n_subset=200)``
  on N training rows (the same rows, the same batch size for both libraries);
* ``predict``: probit GLM predictive on 256 rows, in batches of 32 (laplace-torch materialises a
  (B, C, P) Jacobian per batch);
* ``marglik``: ``optimize_prior_precision(method="marglik", n_steps=10)``;
* ``grid``: ``optimize_prior_precision(method="gridsearch", grid_size=5)`` on 256 validation rows.

The models are at their seeded random init (no training): the costs measured do not depend on
the weights' values. MLP rows are Fashion-MNIST images when the Debian files are installed,
else seeded Gaussian images (the output says which); LoRA rows are zoo.synthetic_tokens.

Each (library, model, subset) runs in its own subprocess, so one library's peak cannot hide the
other's. Inside it the peak resident set (VmHWM) is reset before each phase
(/proc/self/clear_refs; ru_maxrss, which never goes down, where that is refused), so the
``peak`` of a phase is the process's highest RSS during that phase, model and data included.
The parent polls the child's RSS and kills it above ``--mem-cap-gb`` (an RLIMIT_AS of cap + 4 GB
backs that up), and kills it after ``--timeout`` seconds: such a run is reported as
"out of memory at X GB" / "timeout", never allowed to take the shared machine down.

Agreement: where both libraries finish a configuration, a second pair of subprocesses fits it in
float64 with M = N = 200 (so that both use the same context rows: the two libraries draw random
context subsets differently) and ``independent_outputs=True`` (laplace-torch 0.3's
``independent_outputs=False`` multi-output variance has an axis bug), and compares the
functional variances on 32 test rows: max|ours − theirs| / max|theirs|.

    python benchmarks/gp_laplace.py                       # both models, ~5 min on 2 CPU cores
    python benchmarks/gp_laplace.py --models fmnist_mlp --mem-cap-gb 8

Prints a table and writes benchmarks/results/gp_laplace.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

SCHEMA = 1
M_CONTEXT = 200
N_PREDICT = 256
PRED_BATCH = 32
MARGLIK_STEPS = 10
GRID_SIZE = 5
AGREE_N = 200
AGREE_ROWS = 32
#: (training rows, batch size, classes) per model
SIZES = {"fmnist_mlp": (2000, 100, 10), "gpt2_lora": (1000, 50, 2)}
#: Timed in float64 in both libraries: in float32 the last-layer context kernel of the random-init
#: GPT-2 (nearly collinear pooled features, so v K has a few huge eigenvalues and many zero ones)
#: loses v K + I's positive definiteness to round-off, in both libraries alike.
FLOAT64_MODELS = ("gpt2_lora",)
SUBSETS = ("all", "last_layer")
LIBS = ("ours", "laplace-torch")
PHASES = ("fit", "predict", "marglik", "grid")


# --- child side -------------------------------------------------------------------------------
def _status_kib(field: str, pid: str = "self") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel refuses (peak is then cumulative)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    hwm = _status_kib("VmHWM")
    kib = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024.0


def build(model_name: str, n_train: int, n_val: int, classes: int, dtype):
    """(model, train x, train y, val x, val y, test x, data note): seeded random init."""
    import torch
    import zoo

    torch.manual_seed(0)
    if model_name == "fmnist_mlp":
        model = zoo.fmnist_mlp(classes)
        if zoo.fmnist_available():
            d = zoo.fashion_mnist()
            x, y = d["train_x"][:n_train], d["train_y"][:n_train]
            vx, vy = d["val_x"][:n_val], d["val_y"][:n_val]
            sx = d["test_x"][:N_PREDICT]
            note = "Fashion-MNIST rows"
        else:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(n_train, 1, 28, 28, generator=g)
            y = torch.randint(0, classes, (n_train,), generator=g)
            vx = torch.randn(n_val, 1, 28, 28, generator=g)
            vy = torch.randint(0, classes, (n_val,), generator=g)
            sx = torch.randn(N_PREDICT, 1, 28, 28, generator=g)
            note = "seeded Gaussian images (Fashion-MNIST files absent)"
        x, vx, sx = x.to(dtype), vx.to(dtype), sx.to(dtype)
    else:
        model = zoo.gpt2_lora(classes)
        x, y = zoo.synthetic_tokens(n_train, seed=0, classes=classes)
        vx, vy = zoo.synthetic_tokens(n_val, seed=1, classes=classes)
        sx, _ = zoo.synthetic_tokens(N_PREDICT, seed=2, classes=classes)
        # Token 0 is GPT-2's pad id here: with none in the input the sequence classifier pools
        # the last position, which is what both libraries' last-layer pick_last reproduces.
        x, vx, sx = (torch.where(t == 0, 1, t) for t in (x, vx, sx))
        note = "zoo.synthetic_tokens (pad id 0 replaced by 1)"
    return model.to(dtype).eval(), x, y, vx, vy, sx, note


def make(lib: str, model_name: str, subset: str, model, n_subset: int, independent: bool):
    kw = {"n_subset": n_subset, "prior_precision": 1.0, "independent_outputs": independent}
    if model_name == "gpt2_lora" and subset == "last_layer":
        kw["feature_reduction"] = "pick_last"  # the score head sees (B, L, 64) features
    if lib == "ours":
        from laplace_cli.baselaplace import FunctionalLaplace
        from laplace_cli.lllaplace import FunctionalLLLaplace
    else:
        from laplace import FunctionalLaplace, FunctionalLLLaplace
        from laplace.curvature import CurvlinopsGGN

        kw["backend"] = CurvlinopsGGN  # BackPack (their default) cannot differentiate GPT-2
    cls = FunctionalLaplace if subset == "all" else FunctionalLLLaplace
    return cls(model, "classification", **kw)


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def worker(lib: str, model_name: str, subset: str, threads: int) -> None:
    """One (library, model, subset): each phase prints one JSON line as soon as it is done."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    n_train, bs, classes = SIZES[model_name]
    dtype = torch.float64 if model_name in FLOAT64_MODELS else torch.float32
    model, x, y, vx, vy, sx, note = build(model_name, n_train, N_PREDICT, classes, dtype)
    loader = DataLoader(TensorDataset(x, y), batch_size=bs)
    val = DataLoader(TensorDataset(vx, vy), batch_size=PRED_BATCH)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    emit({"phase": "setup", "n_params": n_params, "n_train": n_train, "classes": classes,
          "data": note, "dtype": str(dtype),
          "base_mb": round(_status_kib("VmRSS") / 1024.0, 1)})  # fmt: skip
    la = make(lib, model_name, subset, model, M_CONTEXT, False)
    ctx = torch.no_grad() if lib == "ours" else torch.enable_grad()  # theirs needs autograd

    def predict() -> None:
        with ctx:
            for i in range(0, N_PREDICT, PRED_BATCH):
                la(sx[i : i + PRED_BATCH], pred_type="gp", link_approx="probit")

    def marglik() -> None:
        la.optimize_prior_precision(method="marglik", n_steps=MARGLIK_STEPS)

    def grid() -> None:
        la.prior_precision = 1.0
        la.optimize_prior_precision(
            method="gridsearch", val_loader=val, grid_size=GRID_SIZE, pred_type="gp",
            link_approx="probit",
        )  # fmt: skip

    for phase, fn in (("fit", lambda: la.fit(loader)), ("predict", predict),
                      ("marglik", marglik), ("grid", grid)):  # fmt: skip
        exact = _reset_peak()
        t = time.perf_counter()
        try:
            fn()
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, MemoryError) or "alloc" in str(e).lower():
                emit({"phase": phase, "error": f"out of memory ({type(e).__name__})",
                      "peak_mb": round(_peak_mib(), 1)})  # fmt: skip
                return
            raise
        emit({"phase": phase, "seconds": round(time.perf_counter() - t, 3),
              "peak_mb": round(_peak_mib(), 1), "peak_exact": exact,
              "prior_precision": float(torch.as_tensor(la.prior_precision).reshape(-1)[0])})  # fmt: skip


def agree_worker(lib: str, model_name: str, subset: str, threads: int) -> None:
    """Float64, M = N = AGREE_N, independent outputs: the functional variance on a slice."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    _, bs, classes = SIZES[model_name]
    model, x, y, _, _, sx, _ = build(model_name, AGREE_N, 1, classes, torch.float64)
    la = make(lib, model_name, subset, model, AGREE_N, True)
    la.fit(DataLoader(TensorDataset(x, y), batch_size=bs))
    xs = sx[:AGREE_ROWS]
    if lib == "ours":
        with torch.no_grad():
            _, var = la.functional_variance_at(xs)
    else:
        _, var = la._glm_predictive_distribution(xs)
    var = var.detach().double()
    if var.dim() == 3:  # (B, C, C) → its diagonal (B, C); independent outputs have no off-diagonal
        var = torch.diagonal(var, dim1=-2, dim2=-1)
    torch.save(var, os.environ["GP_BENCH_OUT"])
    emit({"phase": "agree", "shape": list(var.shape)})


# --- parent side ------------------------------------------------------------------------------
def run_child(args, mode: str, lib: str, model_name: str, subset: str, extra_env=None) -> dict:
    """Run a child under the RSS cap and timeout; its JSON lines, and how it ended."""
    cap_kib = int(args.mem_cap_gb * 2**20)
    cmd = [sys.executable, __file__, mode, lib, model_name, subset, "--threads", str(args.threads)]

    def limit() -> None:  # backstop for a spike faster than the poll
        cap = int((args.mem_cap_gb + 4) * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = dict(os.environ, **(extra_env or {}))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit, env=env)  # fmt: skip
    t0, max_rss, ended = time.monotonic(), 0, "ok"
    while proc.poll() is None:
        rss = _status_kib("VmRSS", str(proc.pid)) or 0
        max_rss = max(max_rss, rss)
        if rss > cap_kib:
            proc.kill()
            ended = f"out of memory at {rss / 2**20:.1f} GB (cap {args.mem_cap_gb:g} GB)"
            break
        if time.monotonic() - t0 > args.timeout:
            proc.kill()
            ended = f"timeout after {args.timeout} s"
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    lines = [json.loads(s) for s in out.splitlines() if s.startswith("{")]
    if ended == "ok" and proc.returncode != 0:
        tail = err.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        oom = "MemoryError" in err or "alloc" in tail[0].lower()
        ended = ("out of memory under RLIMIT_AS " if oom else "failed: ") + tail[0][:200]
    return {"lines": lines, "ended": ended, "wall_s": round(time.monotonic() - t0, 1),
            "max_rss_mb": round(max_rss / 1024.0, 1)}  # fmt: skip


def measure(args, lib: str, model_name: str, subset: str) -> dict:
    r = run_child(args, "--worker", lib, model_name, subset)
    row: dict = {"ended": r["ended"], "wall_s": r["wall_s"], "polled_max_rss_mb": r["max_rss_mb"]}
    for line in r["lines"]:
        phase = line.pop("phase")
        row[phase] = line
    for phase in PHASES:  # a phase the child never reported is where it died
        if phase not in row:
            row[phase] = {"error": r["ended"] if r["ended"] != "ok" else "not reached"}
            break
    return row


def agreement(args, model_name: str, subset: str) -> dict:
    import tempfile

    import torch

    vars_ = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lib in LIBS:
            path = str(Path(tmp) / f"{lib}.pt")
            r = run_child(args, "--agree", lib, model_name, subset, {"GP_BENCH_OUT": path})
            if r["ended"] != "ok" or not Path(path).is_file():
                return {"error": f"{lib}: {r['ended']}"}
            vars_[lib] = torch.load(path)
    a, b = vars_["ours"], vars_["laplace-torch"]
    if a.shape != b.shape:
        return {"error": f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"}
    rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
    return {"rel_err": rel, "rows": AGREE_ROWS, "n": AGREE_N, "m": AGREE_N, "dtype": "float64",
            "independent_outputs": True}  # fmt: skip


def cell(row: dict, phase: str) -> str:
    p = row.get(phase)
    if p is None:
        return "—"
    if "error" in p:
        return p["error"] if len(p["error"]) < 60 else p["error"][:57] + "..."
    return f"{p['seconds']:.2f} s / {p['peak_mb'] / 1024:.2f} GB"


def table(result: dict) -> str:
    out = [
        "| model | subset | library | fit | predict 256 | marglik 10 steps | grid 5 | "
        "var. agreement (f64) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        if "skipped" in m:
            out.append(f"| {m['model']} | — | — | skipped: {m['skipped']} | | | | |")
            continue
        for subset in SUBSETS:
            ag = m["agreement"].get(subset, {})
            agree = f"{ag['rel_err']:.1e}" if "rel_err" in ag else ag.get("error", "—")
            for lib in LIBS:
                row = m["runs"][subset][lib]
                cells = " | ".join(cell(row, ph) for ph in PHASES)
                out.append(f"| {m['model']} | {subset} | {lib} | {cells} | {agree} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mem-cap-gb", type=float, default=6.0)
    ap.add_argument("--timeout", type=int, default=180, help="seconds per subprocess")
    ap.add_argument("--no-agreement", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gp_laplace.json")
    args = ap.parse_args(argv)

    import torch
    import zoo

    result: dict = {
        "schema": SCHEMA,
        "command": "python benchmarks/gp_laplace.py " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
        },  # fmt: skip
        "settings": {
            "m_context": M_CONTEXT,
            "n_predict": N_PREDICT,
            "pred_batch": PRED_BATCH,
            "marglik_steps": MARGLIK_STEPS,
            "grid_size": GRID_SIZE,
            "mem_cap_gb": args.mem_cap_gb,
            "timeout_s": args.timeout,
            "weights": "seeded random init (not trained)",
            "laplace_torch_backend": "CurvlinopsGGN",
        },  # fmt: skip
        "models": [],
    }
    try:
        import laplace

        result["machine"]["laplace_torch"] = getattr(laplace, "__version__", "?")
    except ImportError:
        print("laplace-torch is not importable: pip install laplace-torch==0.3", file=sys.stderr)
        return 2
    print("weights: seeded random init, not trained (cost does not depend on weight values)")
    for name in args.models:
        why = zoo.transformers_available() if name == "gpt2_lora" else None
        if why:
            print(f"skipping {name}: {why}")
            result["models"].append({"model": name, "skipped": why})
            continue
        n_train, bs, classes = SIZES[name]
        m: dict = {"model": name, "n_train": n_train, "batch_size": bs, "classes": classes,
                   "runs": {}, "agreement": {}}  # fmt: skip
        for subset in SUBSETS:
            m["runs"][subset] = {}
            for lib in LIBS:
                print(f"{name} {subset} {lib} ...", flush=True)
                row = measure(args, lib, name, subset)
                m["runs"][subset][lib] = row
                setup = row.get("setup", {})
                m.setdefault("n_params", setup.get("n_params"))
                m.setdefault("data", setup.get("data"))
                print(f"  {row['ended']}; " + ", ".join(f"{ph}: {cell(row, ph)}" for ph in PHASES))
            both = all("seconds" in m["runs"][subset][lib].get("fit", {}) for lib in LIBS)
            if args.no_agreement:
                continue
            if both:
                print(f"{name} {subset} agreement (float64, M = N = {AGREE_N}) ...", flush=True)
                m["agreement"][subset] = agreement(args, name, subset)
                print(f"  {m['agreement'][subset]}")
            else:
                m["agreement"][subset] = {"error": "not both finished"}
        result["models"].append(m)
    text = table(result)
    result["table"] = text
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)  # atomic
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("--worker", "--agree"):
        mode, lib, model_name, subset = sys.argv[1:5]
        threads = int(sys.argv[sys.argv.index("--threads") + 1])
        (worker if mode == "--worker" else agree_worker)(lib, model_name, subset, threads)
        sys.exit(0)
    sys.exit(main())
