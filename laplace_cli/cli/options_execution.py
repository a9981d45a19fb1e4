"""CLI options, execution: device, dtypes, seed, checkpoints and resume, threads, logging,
and the CI helpers (baselines, history, JUnit, Markdown summary)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laplace_cli.cli.option_panels import CHOICE, OUT, RUN
from laplace_cli.core.enums import (
    Dtype,
)

# --- execution --------------------------------------------------------------------------------
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="auto, cpu, cuda, cuda:N or mps (default: auto, CUDA when available).",
        rich_help_panel=RUN,
    ),
]
DtypeOpt = Annotated[
    Dtype | None,
    typer.Option(
        "--dtype",
        help=(
            "Dtype the model runs in (default: the checkpoint's). bfloat16 / float16: forward "
            "and backward passes in half precision, curvature and predictions in float32 "
            "(docs/half-precision.md)."
        ),
        show_default=False,
        rich_help_panel=RUN,
        **CHOICE,
    ),
]
CurvatureDtypeOpt = Annotated[
    Dtype | None,
    typer.Option(
        "--curvature-dtype",
        help=(
            "Dtype of the curvature, the posterior and the predictions: float32 or float64 "
            "(default: the model's; float32 for a bfloat16 / float16 model)."
        ),
        show_default=False,
        rich_help_panel=RUN,
        **CHOICE,
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", help="Random seed (sampling, Monte Carlo).", rich_help_panel=RUN),
]
CheckpointEveryOpt = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-every",
        min=1,
        metavar="N",
        help="Save the fit's partial sums every N batches to OUTPUT.ckpt (next to -o, written "
        "atomically), so an interrupted fit can continue with --resume.",
        rich_help_panel=RUN,
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted fit from OUTPUT.ckpt (same settings; a fresh fit when "
        "there is no checkpoint). The posterior equals an uninterrupted fit's.",
        rich_help_panel=RUN,
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        metavar="N",
        help="CPU threads for torch (default: OMP_NUM_THREADS if set, else the CPUs this "
        "process may use, at most 8; on a busy shared machine 1 can be much faster).",
        show_default=False,
        rich_help_panel=RUN,
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", help="Print machine-readable JSON on stdout (people's output stays on stderr)."
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bars or informational messages."),
]
DebugOpt = Annotated[
    bool,
    typer.Option("--debug", help="Show the full traceback on any error (or set LAPLACE_DEBUG=1)."),
]
BaselineOpt = Annotated[
    str | None,
    typer.Option(
        "--baseline",
        help="Compare with a previous run: a report.json, or 'last', 'best' (lowest laplace.nll) "
        "or an ISO date from --history. Gates may read baseline.ROW.METRIC, e.g. "
        "'laplace.ece > baseline.laplace.ece + 0.01'; the report shows the deltas.",
        show_default=False,
        rich_help_panel=OUT,
    ),
]
StrictBaselineOpt = Annotated[
    bool,
    typer.Option(
        "--strict-baseline",
        help="Refuse (exit 2) a baseline computed on other data, another split size or other "
        "settings instead of warning.",
        rich_help_panel=OUT,
    ),
]
HistoryOpt = Annotated[
    Path | None,
    typer.Option(
        "--history",
        help="Append this run to an SQLite run history (created if absent); see `laplace history`.",
        show_default=False,
        rich_help_panel=OUT,
    ),
]
JunitOpt = Annotated[
    Path | None,
    typer.Option(
        "--junit",
        help="Write a JUnit XML file for CI: one test case per --fail-if gate.",
        show_default=False,
        rich_help_panel=OUT,
    ),
]
SummaryMdOpt = Annotated[
    Path | None,
    typer.Option(
        "--summary-md",
        help="Write a Markdown summary (also appended to $GITHUB_STEP_SUMMARY when set).",
        show_default=False,
        rich_help_panel=OUT,
    ),
]
LogOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--log",
        help="Log the report to a tracker: mlflow, wandb or tensorboard (an optional extra, "
        "e.g. pip install 'laplace-cli[mlflow]'); repeatable.",
        show_default=False,
        rich_help_panel=OUT,
    ),
]
