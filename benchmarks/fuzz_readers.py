"""Fuzz the two readers of untrusted files for N minutes and print what happened as JSON.

    python benchmarks/fuzz_readers.py --minutes 5            # all five targets, a fifth each
    python benchmarks/fuzz_readers.py --minutes 1 --target posterior

Targets (tests/hardening/fuzz_targets.py): `load_dataset_spec` on random YAML (random
structures of the spec's keys and values, damaged valid specs, arbitrary text and bytes),
`read_posterior` on random bytes and byte- and header-level mutations of a valid file,
`load_recipe` on random recipes (with their model and data files checked), `parse_gate` +
`evaluate_gates` on gate expressions, and predict's stdin reader on CSV / TSV / JSONL text,
NPZ / .npy bytes and arbitrary bytes. The
property: a value or a `BadInputError` naming the file, nothing else. Hypothesis runs in rounds
of `--round` examples with fresh random seeds until the time is up; a failing round is shrunk
and reported, and fuzzing goes on.

Output: {"targets": {name: {"cases", "ok", "refused", "seconds", "cases_per_s", "failures"}},
"environment": {...}}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "hardening"))

from fuzz_targets import (  # noqa: E402
    check_gate,
    check_posterior,
    check_prediction_input,
    check_recipe,
    check_spec,
    gate_texts,
    posterior_bytes,
    prediction_inputs,
    recipe_folder,
    recipe_texts,
    spec_texts,
    valid_posterior_bytes,
)

TARGETS = ["spec", "posterior", "recipe", "gate", "input"]
from hypothesis import HealthCheck, given, settings  # noqa: E402


def fuzz(name: str, seconds: float, round_size: int, folder: Path) -> dict:
    """Run one target for `seconds`, in rounds of `round_size` hypothesis examples."""
    outcomes: Counter[str] = Counter()
    failures: list[dict[str, str]] = []
    if name == "spec":
        strategy, target = spec_texts, check_spec
    elif name == "recipe":
        strategy, target = recipe_texts, check_recipe
        folder = recipe_folder(folder / "recipes")
    elif name == "gate":
        strategy, target = gate_texts, lambda case, _: check_gate(case)
    elif name == "input":
        strategy, target = prediction_inputs, lambda case, _: check_prediction_input(case)
    else:
        strategy, target = posterior_bytes(valid_posterior_bytes(folder)), check_posterior

    @settings(
        max_examples=round_size,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(case=strategy)
    def one_round(case) -> None:
        outcomes[target(case, folder)] += 1

    start = time.perf_counter()
    rounds = 0
    while time.perf_counter() - start < seconds:
        rounds += 1
        try:
            one_round()
        except Exception as exc:  # a falsifying example, already shrunk by hypothesis
            failures.append(
                {
                    "error": f"{type(exc).__name__}: {exc}",
                    "notes": "\n".join(getattr(exc, "__notes__", [])),
                    "traceback": "".join(traceback.format_exception(exc))[-2000:],
                }
            )
            if len(failures) >= 20:
                break
    elapsed = time.perf_counter() - start
    cases = sum(outcomes.values())
    return {
        "cases": cases,
        "ok": outcomes["ok"],
        "refused": outcomes["refused"],
        "rounds": rounds,
        "seconds": round(elapsed, 1),
        "cases_per_s": round(cases / elapsed, 1),
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="total fuzzing time")
    parser.add_argument(
        "--target", choices=[*TARGETS, "all", "both"], default="all", help="both: spec+posterior"
    )
    parser.add_argument("--round", type=int, default=500, help="hypothesis examples per round")
    args = parser.parse_args()

    import hypothesis
    import torch

    names = {"all": TARGETS, "both": ["spec", "posterior"]}.get(args.target, [args.target])
    seconds = args.minutes * 60 / len(names)
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: fuzz(name, seconds, args.round, Path(tmp)) for name in names}
    print(
        json.dumps(
            {
                "targets": results,
                "total_cases": sum(r["cases"] for r in results.values()),
                "total_failures": sum(len(r["failures"]) for r in results.values()),
                "environment": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "hypothesis": hypothesis.__version__,
                    "machine": platform.machine(),
                    "minutes": args.minutes,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
