"""Realistic benchmark: this project vs laplace-torch 0.3, side by side in one process.

For each model of benchmarks/zoo.py (Fashion-MNIST CNN with BatchNorm, ResNet-20, a 1M-parameter
MLP, a GPT-2-style LoRA classifier, the sample models) it times, alternating the two libraries
(ours, theirs, ours, ...) and taking the median of `--repeats`:

* ``fit/<subset>/<structure>``: construct + `fit` over the training rows (all/diag, all/kron,
  last_layer/kron, last_layer/full, all/lowrank — lowrank is ours only);
* ``epoch``: one forward + backward pass of the cross-entropy (MSE) loss over the same rows and
  batches; the "passes" column is fit time ÷ this;
* ``forward``: one plain forward pass over the test rows (the bound for last-layer prediction);
  ``last_layer_ratio``: our last-layer prediction ÷ that forward pass, both timed alternating
  in one loop (median of `LL_RATIO_CALLS` each);
* ``predict/<subset>/kron``: GLM predictive on the test rows (probit for classification);
* ``marglik``: `optimize_prior_precision(method="marglik")` on all/kron with each library's
  defaults (ours L-BFGS, laplace-torch 100 Adam steps), scalar prior;
* ``grid20`` / ``grid100``: grid search of a scalar prior (log-spaced in [1e-4, 1e4]) on the
  validation NLL of the last-layer K-FAC GLM probit predictive;
* ``scale_n``: kron fit at half and all the training rows, GLM prediction at half and all the
  test rows; ``scale_c`` (fmnist_mlp): the same at C = 10 and 100 classes (seeded random init,
  random labels: curvature cost does not depend on training).

laplace-torch gets the BatchNorm-folded twin of models with BatchNorm (it cannot K-FAC
BatchNorm; the twin computes the same function, zoo.check_twin); ours gets the model itself.
Before timing, both libraries fit the same float64 slice of the data (on the twin, so that both
see the same parameters) and the posterior precision, the GLM mean and variance, the probit /
Gaussian predictive and the log marginal likelihood at δ = 3 must agree to rtol 1e-4 (relative
error max|a − b| / max|b|); the JSON records every error and whether it passed.

Peak memory: a fresh subprocess per (library, configuration) does that fit and prediction once
and reports its growth of peak RSS (VmHWM reset after loading; else `resource.getrusage`) on CPU or `torch.cuda.max_memory_allocated`
on CUDA (tracemalloc does not see torch's allocations).

Usage:
    python benchmarks/realistic.py --models fmnist_cnn fmnist_mlp --out benchmarks/results/realistic.json
    python benchmarks/realistic.py --quick --models digits_mlp   # ~1 minute, the smoke test
    python benchmarks/realistic.py --device cuda
    python benchmarks/realistic.py --markdown benchmarks/results/realistic.json  # → realistic.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
import zoo  # noqa: E402

SCHEMA = 1
RTOL = 1e-4
FIT_CONFIGS = (
    ("all", "diag"),
    ("all", "kron"),
    ("last_layer", "kron"),
    ("last_layer", "full"),
    ("all", "lowrank"),
)
THEIRS_CAN = {c for c in FIT_CONFIGS if c[1] != "lowrank"}
LOWRANK_RANK = 20
#: (training rows, test rows, batch size) per model; --quick uses QUICK_SIZES.
SIZES = {
    "fmnist_cnn": (2000, 500, 128),
    "fmnist_resnet20": (1000, 250, 64),
    "fmnist_mlp": (2000, 500, 128),
    "gpt2_lora": (1000, 250, 64),
    "digits_mlp": (1000, 300, 128),
    "digits_cnn": (1000, 300, 128),
    "diabetes_mlp": (300, 89, 64),
}
QUICK_SIZES = (128, 64, 64)
#: laplace-torch's GLM predictive materialises (B, C, P) Jacobians: prediction batches are sized
#: so that this stays under JAC_BYTES (both libraries get the same batches).
JAC_BYTES = 4e8
#: A timed run shorter than this is repeated in an inner loop until it lasts this long (its
#: time is the mean per call): a 20 ms prediction timed once is mostly timer and cache noise.
MIN_TIMED_SECONDS = 0.25
#: A library whose first timed run takes longer than this is not run again for that phase
#: (laplace-torch's all-weights GLM prediction takes minutes on a conv net); the row records
#: how many runs its median is of.
SLOW_SECONDS = 30.0
#: A single run is stopped after this many seconds (SIGALRM; `--side-timeout`) and the cell shows
#: "> N": laplace-torch's all-weights GLM prediction at C = 100 took 425 s, at C = 1000 it would
#: take over an hour (a (C, P) Jacobian per test row).
SIDE_TIMEOUT = 240.0
#: Alternating (forward, last-layer prediction) pairs timed for the ratio of the two.
LL_RATIO_CALLS = 51


class SideTimeout(Exception):
    """One library's run went past `--side-timeout`."""


#: The all-weights diag fit is timed on at most this many training rows: laplace-torch's
#: curvlinops diag GGN needs more than 24 GB on the Fashion-MNIST CNN at 256 rows.
DIAG_ROWS = 64


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def alternating_ratio(
    forward: Callable[[], object],
    predict: Callable[[], object],
    device: torch.device,
    calls: int = LL_RATIO_CALLS,
) -> dict:
    """Last-layer prediction ÷ one plain forward pass, both timed once per call, alternating
    (forward, predict, forward, ...) `calls` times after 3 untimed pairs: the ratio of the two
    medians. Timing the two phases minutes apart, as `Timer.pair` rows are, let machine noise
    move a 24 ms prediction by 40 %."""
    times: dict[str, list[float]] = {"forward": [], "predict": []}
    with torch.no_grad():
        for i in range(calls + 3):
            for name, fn in (("forward", forward), ("predict", predict)):
                sync(device)
                t = time.perf_counter()
                fn()
                sync(device)
                if i >= 3:
                    times[name].append(time.perf_counter() - t)
    fw, pr = statistics.median(times["forward"]), statistics.median(times["predict"])
    return {"forward_s": fw, "predict_s": pr, "ratio": pr / fw, "calls": calls}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_err(a, b) -> float:
    """max|a − b| / max|b| (b: laplace-torch's value)."""
    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# --- the two libraries behind one interface -----------------------------------------------
def make_la(lib: str, model, likelihood: str, subset: str, structure: str, loader=None):
    """Construct (and fit, when `loader` is given) one library's Laplace."""
    kw = {"subset_of_weights": subset, "hessian_structure": structure, "prior_precision": 1.0}
    reduction = getattr(model, "laplace_feature_reduction", None)  # zoo: sequence models
    if subset == "last_layer" and reduction is not None:
        kw["feature_reduction"] = reduction
    if likelihood == "regression":
        kw["sigma_noise"] = 0.65
    if lib == "ours":
        from laplace_cli import Laplace

        if structure == "lowrank":
            kw["rank"] = LOWRANK_RANK
        la = Laplace(model, likelihood, **kw)
    else:
        from laplace import Laplace
        from laplace.curvature import CurvlinopsGGN

        la = Laplace(model, likelihood, backend=CurvlinopsGGN, **kw)
    if loader is not None:
        la.fit(loader)
    return la


def fit_lml(lib: str, model, likelihood: str, subset: str, loader) -> float:
    """Construct, fit (K-FAC) and evaluate the log marginal likelihood once."""
    la = make_la(lib, model, likelihood, subset, "kron", loader)
    return float(la.log_marginal_likelihood())


def last_layer_params(model: torch.nn.Module) -> int:
    """Parameters of the model's last Linear layer (what a last-layer Jacobian spans)."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return sum(p.numel() for p in last[-1].parameters()) if last else 1


def predict(lib: str, la, likelihood: str, batches: list[torch.Tensor]) -> list:
    out = []
    ctx = torch.no_grad() if lib == "ours" else torch.enable_grad()  # theirs needs autograd
    with ctx:
        for x in batches:
            if likelihood == "classification":
                out.append(la(x, pred_type="glm", link_approx="probit"))
            else:
                out.append(la(x, pred_type="glm"))
    return out


def marglik(lib: str, la) -> None:
    la.prior_precision = 1.0
    if lib == "ours":
        la.optimize_prior_precision(method="marglik", tune_sigma_noise=False)
    else:
        la.optimize_prior_precision(method="marglik")


def gridsearch(lib: str, la, likelihood: str, val: DataLoader, points: int) -> None:
    la.prior_precision = 1.0
    kw = {"pred_type": "glm", "val_loader": val, "grid_size": points}
    if likelihood == "classification":
        kw["link_approx"] = "probit"
    la.optimize_prior_precision(method="gridsearch", **kw)


def epoch(model, likelihood: str, loader: DataLoader) -> None:
    """One forward + backward pass of the training loss over `loader` (the "passes" unit)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for x, y in loader:
        out = model(x)
        loss = F.cross_entropy(out, y) if likelihood == "classification" else F.mse_loss(out, y)
        torch.autograd.grad(loss, params)


# --- agreement in float64 -------------------------------------------------------------------
def agreement(bench: zoo.Bench, configs, n_train: int, device: torch.device) -> list[dict]:
    """Both libraries on the same float64 twin and rows; relative errors of every quantity."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # laplace-torch makes some buffers in the default
    try:
        model = copy.deepcopy(bench.twin()).double().to(device).eval()
        x, y = bench.train[0][:n_train], bench.train[1][:n_train]
        x = x.double() if x.is_floating_point() else x
        y = y.double() if y.is_floating_point() else y
        loader = DataLoader(TensorDataset(x.to(device), y.to(device)), batch_size=32)
        n_out = model(x[:1].to(device)).shape[-1]
        n_test = max(1, min(16, int(JAC_BYTES / (n_out * bench.n_params * 8))))
        xt = bench.test[0][:n_test].to(device)
        xt = xt.double() if xt.is_floating_point() else xt
        rows = []
        for subset, structure in configs:
            if (subset, structure) not in THEIRS_CAN:
                continue
            row = {"config": f"{subset}/{structure}", "n_train": len(x), "n_test": n_test}
            try:
                ours = make_la("ours", model, bench.likelihood, subset, structure, loader)
                theirs = make_la("theirs", model, bench.likelihood, subset, structure, loader)
                errs = {}
                P = ours.n_params
                if structure == "diag":  # the (P,) diagonal, from the engine's own posterior
                    errs["precision"] = rel_err(
                        ours.posterior.diag_precision(ours.prior_precision, ours.curvature_scale()),
                        theirs.posterior_precision,
                    )
                elif structure == "full":
                    errs["precision"] = rel_err(
                        ours.posterior_precision, theirs.posterior_precision
                    )
                elif P <= 3000:  # kron (both a KronDecomposed): dense (P, P) only where small
                    errs["precision"] = rel_err(
                        ours.posterior_precision.to_matrix(),
                        theirs.posterior_precision.to_matrix(),
                    )
                f_mu, f_var = ours.functional_variance(xt)
                with torch.enable_grad():
                    t_mu, t_var = theirs._glm_predictive_distribution(xt)
                errs["f_mu"], errs["f_var"] = rel_err(f_mu, t_mu), rel_err(f_var, t_var)
                p_ours = predict("ours", ours, bench.likelihood, [xt])[0]
                p_theirs = predict("theirs", theirs, bench.likelihood, [xt])[0]
                if bench.likelihood == "classification":
                    errs["probit"] = rel_err(p_ours, p_theirs)
                else:
                    errs["pred_mean"] = rel_err(p_ours[0], p_theirs[0])
                    errs["pred_var"] = rel_err(p_ours[1], p_theirs[1])
                d = torch.tensor(3.0, device=device)
                errs["log_marglik"] = rel_err(
                    ours.log_marginal_likelihood(prior_precision=d),
                    theirs.log_marginal_likelihood(prior_precision=d),
                )
                row["errors"] = errs
                row["passed"] = all(v <= RTOL for v in errs.values())
            except Exception as e:  # recorded, and the check counts as failed
                row["error"] = f"{type(e).__name__}: {e}"
                row["passed"] = False
            rows.append(row)
            log(f"  agree {row['config']}: {row.get('errors', row.get('error'))}")
        return rows
    finally:
        torch.set_default_dtype(old)


# --- timing -----------------------------------------------------------------------------------
class Timer:
    """Runs (ours, theirs) pairs alternately, `repeats` times; keeps the median of each."""

    def __init__(self, repeats: int, device: torch.device, timeout: float = SIDE_TIMEOUT) -> None:
        self.repeats, self.device, self.timeout = repeats, device, timeout
        self.results: dict[str, dict] = {}

    def once(self, fn: Callable[[], object]) -> float:
        sync(self.device)
        t = time.perf_counter()
        _run_with_timeout(fn, self.timeout)
        sync(self.device)
        elapsed = time.perf_counter() - t
        if elapsed >= MIN_TIMED_SECONDS:
            return elapsed
        calls = max(2, int(MIN_TIMED_SECONDS / max(elapsed, 1e-6)) + 1)
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(self.device)
        return (time.perf_counter() - t) / calls

    def pair(
        self, key: str, ours: Callable | None, theirs: Callable | None, warmup=False, **extra
    ) -> dict:
        """Median seconds of each library; `warmup`: one untimed run of each first (cheap
        phases, where one-time costs such as the first autograd call would dominate)."""
        runs: dict[str, list[float]] = {"ours": [], "laplace-torch": []}
        errors: dict[str, str] = {}
        timed_out: dict[str, float] = {}
        for lib, fn in (("ours", ours), ("laplace-torch", theirs)):
            if warmup and fn is not None:
                try:
                    fn()
                except Exception as e:
                    errors[lib] = f"{type(e).__name__}: {e}"
        for _ in range(self.repeats):
            for lib, fn in (("ours", ours), ("laplace-torch", theirs)):
                if fn is None or lib in errors or (runs[lib] and runs[lib][0] > SLOW_SECONDS):
                    continue
                try:
                    runs[lib].append(self.once(fn))
                except SideTimeout:
                    timed_out[lib] = self.timeout
                    errors[lib] = f"stopped after {self.timeout:g} s"
                except Exception as e:
                    errors[lib] = f"{type(e).__name__}: {e}"
                    log(traceback.format_exc(limit=3))
        row = {lib: (statistics.median(v) if v else None) for lib, v in runs.items()}
        if row["ours"] and row["laplace-torch"]:
            row["speedup"] = row["laplace-torch"] / row["ours"]
        if errors:
            row["errors"] = errors
        row["runs"] = {lib: len(v) for lib, v in runs.items()}
        if timed_out:
            row["timed_out_after"] = timed_out
            if row["ours"] and "laplace-torch" in timed_out:  # a lower bound of the speed-up
                row["speedup_at_least"] = timed_out["laplace-torch"] / row["ours"]
        row.update(extra)
        self.results[key] = row
        o, t = row["ours"], row["laplace-torch"]
        log(
            f"  {key}: ours {o if o is None else f'{o:.3f}'} s, laplace-torch "
            f"{t if t is None else f'{t:.3f}'} s"
            + (f" ({row['speedup']:.1f}×)" if "speedup" in row else "")
            + (f" errors {errors}" if errors else "")
        )
        return row


def _run_with_timeout(fn: Callable[[], object], seconds: float) -> None:
    """fn(), raising SideTimeout after `seconds` (SIGALRM; main thread, POSIX; no limit else)."""
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        fn()
        return

    def stop(signum, frame):
        raise SideTimeout

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sizes(name: str, args) -> tuple[int, int, int]:
    n_train, n_test, bs = QUICK_SIZES if args.quick else SIZES[name]
    return args.n_train or n_train, args.n_test or n_test, bs


def pred_batches(x: torch.Tensor, n_out: int, n_params: int, itemsize: int) -> list:
    b = max(1, min(len(x), int(JAC_BYTES / (n_out * n_params * itemsize))))
    return list(torch.split(x, b))


def bench_model(
    name: str, args, device: torch.device, save: Callable[[dict], None] | None = None
) -> dict:
    """Every phase of one model; `save(partial)` is called before the memory runs (a worker
    killed for memory must not cost the timings)."""
    n_train, n_test, bs = sizes(name, args)
    bench = zoo.load(name, n_train, n_test, log=log)
    model = bench.model.to(device).eval()
    twin = bench.twin().to(device).eval()
    lik = bench.likelihood

    def to_dev(t):
        return tuple(v.to(device) for v in t)

    train, val, test = to_dev(bench.train), to_dev(bench.val), to_dev(bench.test)
    if lik == "regression":
        train = (train[0], train[1].reshape(len(train[1]), -1).float())
        val = (val[0], val[1].reshape(len(val[1]), -1).float())
    loader = DataLoader(TensorDataset(*train), batch_size=bs)
    val_loader = DataLoader(TensorDataset(*val), batch_size=bs)
    with torch.no_grad():
        n_out = model(test[0][:1]).shape[-1]
    batches = pred_batches(test[0], n_out, bench.n_params, 4)
    # Last-layer Jacobians span one layer's parameters: bigger batches stay under JAC_BYTES.
    ll_batches = pred_batches(test[0], n_out, last_layer_params(model), 4)
    configs = (
        [c for c in FIT_CONFIGS if "/".join(c) in args.configs] if args.configs else FIT_CONFIGS
    )
    log(f"{name}: {bench.n_params} params, {n_train} train / {n_test} test rows, {bench.info}")

    out: dict = {
        "model": name,
        "n_params": bench.n_params,
        "n_outputs": n_out,
        "likelihood": lik,
        "n_train": n_train,
        "n_test": n_test,
        "batch_size": bs,
        "predict_batch": len(batches[0]),
        "predict_batch_last_layer": len(ll_batches[0]),
        "batchnorm_folded_for_laplace_torch": zoo.has_batchnorm(bench.model),
        "info": bench.info,
    }
    log(" agreement (float64)")
    rows = args.agree_rows or (16 if args.quick else 64)
    out["agreement"] = agreement(bench, configs, rows, device)
    timer = Timer(args.repeats, device, args.side_timeout)
    timer.pair(
        "epoch", lambda: epoch(model, lik, loader), lambda: epoch(twin, lik, loader), warmup=True
    )
    with torch.no_grad():
        timer.pair(
            "forward",
            lambda: [model(x) for x in batches],
            lambda: [twin(x) for x in batches],
            warmup=True,
        )
        # The bound of last-layer prediction: one plain forward over the same batches.
        timer.pair(
            "forward/last_layer_batches",
            lambda: [model(x) for x in ll_batches],
            lambda: [twin(x) for x in ll_batches],
            warmup=True,
        )
    fitted: dict = {}
    for subset, structure in configs:
        key = f"{subset}/{structure}"
        can = (subset, structure) in THEIRS_CAN and not args.ours_only
        rows, data = n_train, loader
        if (subset, structure) == ("all", "diag") and n_train > args.diag_rows:
            rows = args.diag_rows
            data = DataLoader(TensorDataset(train[0][:rows], train[1][:rows]), batch_size=bs)
            key += f"/n={rows}"
        timer.pair(
            f"fit/{key}",
            lambda s=subset, h=structure, d=data: make_la("ours", model, lik, s, h, d),
            (lambda s=subset, h=structure, d=data: make_la("theirs", twin, lik, s, h, d))
            if can
            else None,
            n=rows,
        )
        if structure == "kron":
            # laplace-torch eigendecomposes the K-FAC factors inside `fit`; this project on
            # first use. Fit + the first log marginal likelihood is the like-for-like time.
            timer.pair(
                f"fit+lml/{key}",
                lambda s=subset: fit_lml("ours", model, lik, s, loader),
                (lambda s=subset: fit_lml("theirs", twin, lik, s, loader)) if can else None,
            )
    for lib, m in (("ours", model), ("theirs", twin)):
        if lib == "theirs" and args.ours_only:
            continue
        for subset in ("all", "last_layer"):
            try:
                fitted[lib, subset] = make_la(lib, m, lik, subset, "kron", loader)
            except Exception as e:
                log(f"  {lib} {subset}/kron fit failed: {e}")

    def theirs_or_none(subset: str, fn: Callable) -> Callable | None:
        return fn if ("theirs", subset) in fitted else None

    for subset in ("all", "last_layer"):
        if ("ours", subset) not in fitted:
            continue
        b = batches if subset == "all" else ll_batches
        timer.pair(
            f"predict/{subset}/kron",
            lambda s=subset, b=b: predict("ours", fitted["ours", s], lik, b),
            theirs_or_none(
                subset, lambda s=subset, b=b: predict("theirs", fitted["theirs", s], lik, b)
            ),
            warmup=True,
        )
    if ("ours", "last_layer") in fitted:
        out["last_layer_ratio"] = alternating_ratio(
            lambda: [model(x) for x in ll_batches],
            lambda: predict("ours", fitted["ours", "last_layer"], lik, ll_batches),
            device,
        )
    if ("ours", "all") in fitted:
        timer.pair(
            "marglik/all/kron",
            lambda: marglik("ours", fitted["ours", "all"]),
            theirs_or_none("all", lambda: marglik("theirs", fitted["theirs", "all"])),
        )
    if ("ours", "last_layer") in fitted:
        for points in (20, 100):
            timer.pair(
                f"grid{points}/last_layer/kron",
                lambda p=points: gridsearch(
                    "ours", fitted["ours", "last_layer"], lik, val_loader, p
                ),
                theirs_or_none(
                    "last_layer",
                    lambda p=points: gridsearch(
                        "theirs", fitted["theirs", "last_layer"], lik, val_loader, p
                    ),
                ),
            )
    fitted.clear()
    # Cost vs the number of rows: kron fit on half / all training rows, prediction on half / all.
    if "all/kron" in {"/".join(c) for c in configs}:
        for frac in (0.5, 1.0):
            n = max(1, int(n_train * frac))
            sub = DataLoader(TensorDataset(train[0][:n], train[1][:n]), batch_size=bs)
            timer.pair(
                f"scale_n/fit/all/kron/n={n}",
                lambda d=sub: make_la("ours", model, lik, "all", "kron", d),
                None
                if args.ours_only
                else (lambda d=sub: make_la("theirs", twin, lik, "all", "kron", d)),
                n=n,
            )
    out["timings"] = timer.results
    for key, row in timer.results.items():
        if key.startswith(("fit/", "scale_n/fit/")) and "epoch" in timer.results:
            ep = timer.results["epoch"]
            n_rows = row.get("n", n_train)
            row["passes"] = {
                lib: (row[lib] / (ep[lib] * n_rows / n_train) if row[lib] and ep[lib] else None)
                for lib in ("ours", "laplace-torch")
            }
    if save is not None:
        save(out)
    if args.memory != "none" and not args.quick_memory_skip:
        mem_configs = [("all", "kron"), ("last_layer", "kron")]
        if args.memory == "first":
            mem_configs = mem_configs[:1]
        out["peak_mb"] = {}
        for subset, structure in mem_configs:
            key = f"fit+predict/{subset}/{structure}"
            out["peak_mb"][key] = {}
            for lib in ("ours", "theirs"):
                if lib == "theirs" and args.ours_only:
                    continue
                out["peak_mb"][key]["ours" if lib == "ours" else "laplace-torch"] = memory_run(
                    lib, name, subset, structure, args
                )
            log(f"  peak MB {key}: {out['peak_mb'][key]}")
    return out


def scale_c(args, device: torch.device) -> dict:
    """kron fit and GLM prediction of the 1M MLP at C = 10, 100 and 1000 classes."""
    n_train, n_test, bs = QUICK_SIZES if args.quick else (args.n_train or 1000, 50, 128)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_test, 1, 28, 28, generator=g).to(device)
    timer = Timer(args.repeats, device, args.side_timeout)
    for classes in args.scale_c_classes if not args.quick else (10, 20):
        torch.manual_seed(0)
        model = zoo.fmnist_mlp(classes).to(device).eval()
        y = torch.randint(0, classes, (n_train,), generator=g).to(device)
        loader = DataLoader(TensorDataset(x[:n_train], y), batch_size=bs)
        P = sum(p.numel() for p in model.parameters())
        batches = pred_batches(x[n_train:], classes, P, 4)
        timer.pair(
            f"scale_c/fit/all/kron/C={classes}",
            lambda m=model, d=loader: make_la("ours", m, "classification", "all", "kron", d),
            None
            if args.ours_only
            else (
                lambda m=model, d=loader: make_la("theirs", m, "classification", "all", "kron", d)
            ),
            C=classes,
        )
        ours = make_la("ours", model, "classification", "all", "kron", loader)
        theirs = (
            None
            if args.ours_only
            else make_la("theirs", model, "classification", "all", "kron", loader)
        )
        timer.pair(
            f"scale_c/predict/all/kron/C={classes}",
            lambda la=ours, b=batches: predict("ours", la, "classification", b),
            None
            if theirs is None
            else (lambda la=theirs, b=batches: predict("theirs", la, "classification", b)),
            C=classes,
            predict_batch=len(batches[0]),
        )
    return {"n_train": n_train, "n_test": n_test, "timings": timer.results}


# --- peak memory in a fresh process -----------------------------------------------------------
def memory_run(lib: str, name: str, subset: str, structure: str, args) -> float | None:
    cmd = [
        sys.executable,
        __file__,
        "--memory-worker",
        lib,
        name,
        subset,
        structure,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ] + (["--quick"] if args.quick else [])
    cmd += ["--n-train", str(args.n_train)] if args.n_train else []
    cmd += ["--n-test", str(args.n_test)] if args.n_test else []  # fmt: skip
    try:
        limit = 1800 if args.side_timeout <= 0 else 2 * args.side_timeout + 120
        res = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            check=True,
            timeout=limit,
            preexec_fn=_limit_address_space if args.device == "cpu" else None,
        )
        return json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]
    except subprocess.CalledProcessError as e:
        last = (e.stderr or "").strip().splitlines()[-1:] or [""]
        log(f"  memory run {lib} {name} {subset}/{structure} failed: {last[0][:300]}")
        if any(s in (e.stderr or "") for s in OUT_OF_MEMORY):
            return f"> {_address_space_cap() / 2**20:,.0f} (cap)"  # a bound, not a failure
        return None
    except (subprocess.SubprocessError, ValueError, KeyError) as e:
        log(f"  memory run {lib} {name} {subset}/{structure} failed: {e}")
        return None


#: What a worker's stderr says when an allocation failed under the address-space cap.
OUT_OF_MEMORY = ("MemoryError", "can't allocate memory", "not enough memory", "std::bad_alloc")


def mb_cell(v: float | str | None) -> str:
    """A peak-memory cell: MB, a bound ("> N (cap)") or — when nothing was measured."""
    return "—" if v is None else v if isinstance(v, str) else f"{v:,.0f}"


#: A memory worker may address at most this share of the machine's RAM: laplace-torch's
#: all-weights prediction on ResNet-20 outgrew 24 GB, and the kernel's OOM killer then took the
#: parent benchmark process (and its unwritten results) instead of the worker.
WORKER_RAM_SHARE = 0.75


def _address_space_cap() -> int:
    """Bytes a memory worker may address: `WORKER_RAM_SHARE` of the machine's RAM."""
    return int(WORKER_RAM_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _limit_address_space() -> None:
    """preexec_fn of a memory worker: cap its virtual memory (an allocation beyond fails)."""
    cap = _address_space_cap()
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> int:
    """Baseline in KiB. On Linux the peak (VmHWM) is reset to the current RSS first, so that
    loading the data (a transient larger than many fits) does not hide the fit's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = _status_kib("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_kib() -> int:
    hwm = _status_kib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_worker(lib: str, name: str, subset: str, structure: str, args) -> dict:
    device = torch.device(args.device)
    n_train, n_test, bs = sizes(name, args)
    bench = zoo.load(name, n_train, n_test, log=log)
    model = (bench.model if lib == "ours" else bench.twin()).to(device).eval()
    train = tuple(v.to(device) for v in bench.train)
    if bench.likelihood == "regression":
        train = (train[0], train[1].reshape(len(train[1]), -1).float())
    x = bench.test[0].to(device)
    loader = DataLoader(TensorDataset(*train), batch_size=bs)
    with torch.no_grad():
        n_out = model(x[:1]).shape[-1]
    batches = pred_batches(x, n_out, bench.n_params, 4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _reset_peak_rss()
    la = make_la(lib, model, bench.likelihood, subset, structure, loader)
    predict(lib, la, bench.likelihood, batches)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = (_peak_rss_kib() - base) / 1024.0  # KiB → MiB
    return {"peak_mb": round(peak, 1)}


# --- report -------------------------------------------------------------------------------------
def fmt_pair(row: dict | None) -> str:
    if not row:
        return "—"

    def s(v):
        return "—" if v is None else (f"{v:.3g}" if v < 100 else f"{v:.0f}")

    theirs = row.get("laplace-torch")
    stopped = (row.get("timed_out_after") or {}).get("laplace-torch")
    cell = f"{s(row.get('ours'))} / {s(theirs) if theirs or not stopped else f'> {stopped:g}'}"
    if "speedup" in row:
        cell += f" ({row['speedup']:.1f}×)"
    elif "speedup_at_least" in row:
        cell += f" (> {row['speedup_at_least']:.0f}×)"
    runs = {lib: n for lib, n in (row.get("runs") or {}).items() if n}
    single = [lib for lib, n in runs.items() if n == 1]
    if single and len(set(runs.values())) > 1:  # one side cut short (SLOW_SECONDS)
        cell += " (" + ", ".join(single) + ": 1 run)"
    failed = [k for k in row.get("errors") or {} if k not in (row.get("timed_out_after") or {})]
    if failed:
        cell += " (error: " + "; ".join(failed) + ")"
    return cell


SUMMARY_COLUMNS = (
    ("kron fit", "fit/all/kron"),
    ("kron fit + lml", "fit+lml/all/kron"),
    ("diag fit", "fit/all/diag"),
    ("GLM predict", "predict/all/kron"),
    ("marglik", "marglik/all/kron"),
    ("100-pt grid", "grid100/last_layer/kron"),
)


def _speedup(row: dict | None) -> str:
    if not row:
        return "—"
    if "speedup" in row:
        return f"{row['speedup']:.1f}×"
    if "speedup_at_least" in row:
        return f"> {row['speedup_at_least']:.0f}×"
    return "—"


def _last_layer_ratio(m: dict) -> str:
    """The alternating measurement where the run has one, else the two `Timer.pair` rows."""
    if m.get("last_layer_ratio"):
        return f"{m['last_layer_ratio']['ratio']:.2f}"
    t = m["timings"]
    ll, fw = t.get("predict/last_layer/kron"), t.get("forward/last_layer_batches")
    return f"{ll['ours'] / fw['ours']:.2f}" if ll and fw and ll["ours"] and fw["ours"] else "—"


def summary(result: dict) -> str:
    """One row per model: speed-ups (laplace-torch ÷ ours) of the headline phases, last-layer
    prediction ÷ one plain forward pass, and peak memory; the README's table."""
    head = [name for name, _ in SUMMARY_COLUMNS]
    lines = [
        "| model | params | " + " | ".join(head) + " | last-layer predict ÷ forward | peak MB |",
        "| --- | --- | " + " | ".join("---" for _ in head) + " | --- | --- |",
    ]
    for m in result["models"]:
        if "skipped" in m:
            continue
        t = m["timings"]
        cells = []
        for _, key in SUMMARY_COLUMNS:
            found = [k for k in t if k == key or k.startswith(key + "/n=")]
            cells.append(_speedup(t[found[0]]) if found else "—")
        ratio = _last_layer_ratio(m)
        mem = (m.get("peak_mb") or {}).get("fit+predict/all/kron") or {}
        peak = " / ".join(mb_cell(v) for v in mem.values()) or "—"
        lines.append(
            f"| {m['model']} | {m['n_params']:,} | " + " | ".join(cells) + f" | {ratio} | {peak} |"
        )
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    lines = [
        "# Realistic benchmark: laplace-cli vs laplace-torch 0.3",
        "",
        f"Generated by `python benchmarks/realistic.py {result['argv']}` "
        f"on {result['machine']['description']} "
        f"(load average before / after: {result['machine']['loadavg_before']} / "
        f"{result['machine']['loadavg_after']}). Seconds, median of {result['repeats']}, "
        "ours / laplace-torch (speed-up = theirs ÷ ours); float32; what each column means: "
        "docs/benchmarks.md.",
        "",
        "Speed-up (laplace-torch ÷ ours) by model; last-layer prediction ÷ one plain forward pass "
        "over the same rows (ours); peak MB of one all/kron fit + prediction, ours / laplace-torch:",
        "",
        summary(result),
        *[
            f"- {m['model']}, peak memory: {m['peak_mb_note']}"
            for m in result["models"]
            if m.get("peak_mb_note")
        ],
        *[
            f"- {m['model']}, last-layer prediction ÷ forward: "
            f"{r['predict_s'] * 1e3:.2f} / {r['forward_s'] * 1e3:.2f} ms, "
            f"medians of {r['calls']} alternating calls"
            for m in result["models"]
            if (r := m.get("last_layer_ratio"))
        ],
        "",
        "| model | params | phase | ours / laplace-torch (×) | passes ours / theirs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in result["models"]:
        if "skipped" in m:
            lines.append(f"| {m['model']} | — | skipped: {m['skipped']} | | |")
            continue
        for key, row in m["timings"].items():
            p = row.get("passes")
            passes = " / ".join("—" if v is None else f"{v:.1f}" for v in p.values()) if p else ""
            lines.append(
                f"| {m['model']} | {m['n_params']:,} | {key} | {fmt_pair(row)} | {passes} |"
            )
        for key, mem in (m.get("peak_mb") or {}).items():
            cell = " / ".join(mb_cell(v) for v in mem.values())
            lines.append(f"| {m['model']} | | peak MB {key} | {cell} | |")
    if result.get("scale_c"):
        for key, row in result["scale_c"]["timings"].items():
            lines.append(f"| fmnist_mlp (random init) | | {key} | {fmt_pair(row)} | |")
    lines += ["", "Agreement (float64, same rows, both on the BatchNorm-folded twin):", ""]
    lines += [
        "| model | config | max relative error | passed | why not |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in result["models"]:
        for a in m.get("agreement", []):
            err = max(a["errors"].values()) if "errors" in a else a.get("error")
            err = f"{err:.1e}" if isinstance(err, float) else err
            why = "" if a["passed"] else KNOWN_DIFFERENCES.get((m["model"], a["config"]), "")
            lines.append(f"| {m['model']} | {a['config']} | {err} | {a['passed']} | {why} |")
    return "\n".join(lines) + "\n"


#: Disagreements that were looked into, and why (docs/migrating.md).
KNOWN_DIFFERENCES = {
    ("gpt2_lora", "last_layer/kron"): (
        "laplace-torch's K-FAC input factor sums all B·T token features, not the reduced "
        "features its prediction uses (its precision equals that to 1.9e-15); ours is the "
        "K-FAC of the reduced features (brute force to 1.9e-15)"
    ),
}


def machine(args) -> dict:
    import laplace

    desc = (
        f"{platform.machine()} {os.cpu_count()} CPUs, {args.threads} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"laplace-torch {getattr(laplace, '__version__', '0.3')}"
    )
    if args.device == "cuda":
        desc += f", {torch.cuda.get_device_name()}"
    return {"description": desc, "loadavg_before": [round(v, 2) for v in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", nargs="+", default=list(zoo.ALL_MODELS), metavar="NAME")
    ap.add_argument(
        "--configs", nargs="+", help="fit configurations, e.g. all/kron last_layer/full"
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-train", type=int, help="training rows (default: per model, SIZES)")
    ap.add_argument("--n-test", type=int, help="validation and test rows (default: per model)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--memory", choices=["all", "first", "none"], default="all")
    ap.add_argument("--no-scale-c", action="store_true", help="skip the cost-vs-C section")
    ap.add_argument("--scale-c-classes", type=int, nargs="+", default=[10, 100, 1000], metavar="C")
    ap.add_argument("--ours-only", action="store_true", help="time this project alone")
    ap.add_argument("--out", default=str(HERE / "results" / "realistic.json"))
    ap.add_argument(
        "--markdown",
        nargs="+",
        metavar="JSON",
        help="only write the Markdown table of these result files (merged) next to --out",
    )
    ap.add_argument("--agree-rows", type=int, help="training rows of the float64 checks (64)")
    ap.add_argument(
        "--diag-rows", type=int, default=DIAG_ROWS, help="training rows of the all/diag fit"
    )
    ap.add_argument(
        "--side-timeout",
        type=float,
        default=SIDE_TIMEOUT,
        help="stop one library's run after this many seconds (0: never)",
    )
    ap.add_argument(
        "--scale-c-only", action="store_true", help="only the cost-vs-C section (fmnist_mlp)"
    )
    ap.add_argument("--memory-worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.quick_memory_skip = False
    torch.set_num_threads(args.threads)
    if args.markdown:
        results = [json.loads(Path(p).read_text()) for p in args.markdown]
        result = results[0]
        result["models"] = [m for r in results for m in r["models"]]
        result["scale_c"] = next((r["scale_c"] for r in results if r.get("scale_c")), None)
        if len(results) > 1:
            result["argv"] = " + ".join(r["argv"] for r in results)
        md = Path(args.out).with_suffix(".md")
        md.write_text(markdown(result))
        print(md)
        return 0
    if args.memory_worker:
        print(json.dumps(memory_worker(*args.memory_worker, args)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    unknown = [m for m in args.models if m not in zoo.ALL_MODELS]
    if unknown:
        print(f"unknown model(s) {unknown}; known: {', '.join(zoo.ALL_MODELS)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    result = {
        "schema": SCHEMA,
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
        "device": args.device,
        "quick": args.quick,
        "repeats": args.repeats,
        "rtol": RTOL,
        "machine": machine(args),
        "models": [],
    }
    t0 = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in [] if args.scale_c_only else args.models:
        why = zoo.unavailable(name)
        if why:
            log(f"skipping {why}")
            result["models"].append({"model": name, "skipped": why})
            continue
        n_done = len(result["models"])

        def save(partial: dict, n_done: int = n_done) -> None:
            result["models"][n_done:] = [partial]
            _write(out, result)

        save(bench_model(name, args, device, save))
        _write(out, result)
    wants_c = "fmnist_mlp" in args.models or args.scale_c_only
    if wants_c and not args.no_scale_c and not zoo.unavailable("fmnist_mlp"):
        log("fmnist_mlp: cost vs C")
        result["scale_c"] = scale_c(args, device)
    result["machine"]["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    result["agreement_passed"] = all(
        a["passed"] for m in result["models"] for a in m.get("agreement", [])
    )
    _write(out, result)
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


def _write(path: Path, result: dict) -> None:
    """Atomic: an interrupted run keeps the models measured so far, never half a file."""
    result.setdefault("machine", {}).setdefault("loadavg_after", None)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
