"""Coverage of bootstrap intervals of the ECE: does the 95 % interval hold a fresh split's ECE?

Run from the repository root (a few minutes on 2 cores):

    python benchmarks/bootstrap_coverage.py            # 200 repetitions, B = 1000
    python benchmarks/bootstrap_coverage.py --reps 50 --resamples 300   # quicker

Two populations, each sampled with a known distribution:

* ``synthetic``: a calibrated 10-class classifier (softmax of N(0, 2.5²) logits, labels drawn
  from the softmax), so the population ECE is 0 and every split's ECE is pure sampling noise.
* ``digits_mlp``: the sample model's MAP softmax on the digits validation + test rows (720),
  with their labels; a split is n = 360 rows drawn with replacement from those rows, i.e. the
  population is their empirical distribution.

Each repetition draws an observed split and an independent *fresh* split of the same size,
computes the stratified bootstrap (``metrics.bootstrap``, seeded per repetition) on the
observed one, and checks whether each interval method's 95 % interval of ECE (15 equal-width
bins) contains the fresh split's ECE. Prints a table and writes
``benchmarks/results/bootstrap_coverage.json``.

Expected: ``prediction`` near or above 95 %; ``percentile`` and ``basic`` (confidence intervals
for the *population* ECE) well below, since a fresh split's ECE varies as much as the observed
one (√2 wider spread of the difference) and the ECE is biased.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from laplace_cli.io.atomic import atomic_write_bytes  # noqa: E402
from laplace_cli.metrics import bootstrap as BS  # noqa: E402
from laplace_cli.metrics import classification as M  # noqa: E402

LEVEL = 0.95
N_BINS = 15


def synthetic(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(n, 10, generator=generator, dtype=torch.float64) * 2.5
    probs = logits.softmax(dim=1)
    return probs, torch.multinomial(probs, 1, generator=generator).squeeze(1)


def digits_population() -> tuple[torch.Tensor, torch.Tensor]:
    folder = ROOT / "sample_models" / "digits_mlp"
    model = torch.export.load(str(folder / "model.pt2")).module()
    xs, ys = [], []
    for split in ("val", "test"):
        data = np.load(folder / f"{split}.npz")
        xs.append(torch.as_tensor(data["x"]))
        ys.append(torch.as_tensor(data["y"]))
    with torch.no_grad():
        probs = torch.softmax(model(torch.cat(xs)).double(), dim=1)
    return probs, torch.cat(ys)


def coverage(draw, n: int, reps: int, resamples: int) -> dict:
    hits = {m: 0 for m in BS.METHODS}
    widths = {m: [] for m in BS.METHODS}
    observed, fresh_values = [], []
    for rep in range(reps):
        g = torch.Generator().manual_seed(10_000 + rep)
        probs, labels = draw(n, g)
        fresh_probs, fresh_labels = draw(n, g)
        estimate = M.ece(probs, labels, N_BINS)
        fresh = M.ece(fresh_probs, fresh_labels, N_BINS)
        observed.append(estimate)
        fresh_values.append(fresh)
        stat = {"r": BS.classification_statistic(probs, labels, N_BINS)}
        values = BS.bootstrap_distributions(
            stat, [n], n_resamples=resamples, seed=rep, strata=[labels]
        )["r"]["ece"]
        for method in BS.METHODS:
            lo, hi = BS.interval(values, LEVEL, method=method, estimate=estimate)
            hits[method] += lo <= fresh <= hi
            widths[method].append(hi - lo)
    return {
        "n": n,
        "reps": reps,
        "resamples": resamples,
        "coverage": {m: hits[m] / reps for m in BS.METHODS},
        "mean_width": {m: float(np.mean(widths[m])) for m in BS.METHODS},
        "mean_observed_ece": float(np.mean(observed)),
        "mean_fresh_ece": float(np.mean(fresh_values)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--n", type=int, default=360, help="split size (digits test: 360)")
    parser.add_argument(
        "--output", default=str(ROOT / "benchmarks/results/bootstrap_coverage.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    population_probs, population_labels = digits_population()

    def digits(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, population_labels.shape[0], (n,), generator=g)
        return population_probs[idx], population_labels[idx]

    results = {}
    for name, draw in (("synthetic", synthetic), ("digits_mlp", digits)):
        start = time.perf_counter()
        results[name] = coverage(draw, args.n, args.reps, args.resamples)
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        cov = results[name]["coverage"]
        print(
            f"{name:>10}: coverage of a fresh split's ECE by the {LEVEL:.0%} interval  "
            + "  ".join(f"{m} {cov[m]:.3f}" for m in BS.METHODS)
            + f"  ({args.reps} reps, B = {args.resamples}, n = {args.n})"
        )
    payload = {
        "level": LEVEL,
        "n_bins": N_BINS,
        "binning": "equal-width",
        "stratified_by": "label",
        "results": results,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    atomic_write_bytes(args.output, (json.dumps(payload, indent=2) + "\n").encode())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
