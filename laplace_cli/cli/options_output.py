"""CLI options, prediction and output: predictive type, link approximation, samples,
intervals, batch size, and where and how results are written (files, formats, report, gates)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laplace_cli.cli.option_panels import CHOICE, OUT, PRED, RUN
from laplace_cli.core.enums import (
    LinkApprox,
    OutputFormat,
    PredType,
)

# --- prediction -------------------------------------------------------------------------------
PredTypeOpt = Annotated[
    PredType,
    typer.Option(
        "--pred-type",
        help="glm: linearised network; nn: Monte Carlo over sampled weights.",
        rich_help_panel=PRED,
        **CHOICE,
    ),
]
LinkApproxOpt = Annotated[
    LinkApprox,
    typer.Option(
        "--link-approx",
        help="How the GLM predictive passes through the softmax / sigmoid.",
        rich_help_panel=PRED,
        **CHOICE,
    ),
]
SamplesOpt = Annotated[
    int,
    typer.Option(
        "--samples",
        min=1,
        help="Monte Carlo samples (pred-type nn, link-approx mc).",
        rich_help_panel=PRED,
    ),
]
IntervalOpt = Annotated[
    float,
    typer.Option(
        "--interval",
        help="Level of the central interval of regression predictions, in (0, 1).",
        rich_help_panel=PRED,
    ),
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        min=1,
        help="Batch size (default: the data spec's batch_size).",
        rich_help_panel=RUN,
    ),
]

# --- outputs ----------------------------------------------------------------------------------
OutputFileOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Output file.", rich_help_panel=OUT),
]
OutputDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Output folder (default: the recipe's output, else runs/<recipe name>).",
        rich_help_panel=OUT,
    ),
]
FormatOpt = Annotated[
    OutputFormat | None,
    typer.Option(
        "--format",
        "-f",
        help="Row format (default: from the --output name; JSONL on stdout). npz: for dense "
        "outputs (segmentation), arrays per input instead of rows (docs/dense-outputs.md).",
        show_default=False,
        rich_help_panel=OUT,
        **CHOICE,
    ),
]
ReportOpt = Annotated[
    Path | None,
    typer.Option("--report", help="Write the metrics as JSON to this file.", rich_help_panel=OUT),
]
PlotOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        help="Write a reliability diagram (PNG or PDF; needs matplotlib).",
        rich_help_panel=OUT,
    ),
]
HtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--html",
        help="Write one self-contained HTML page (metrics, settings, embedded plots) for CI artefacts.",
        rich_help_panel=OUT,
    ),
]
FailIfOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--fail-if",
        help="Exit 1 when this holds, e.g. 'ece>0.05' or 'nll>map.nll'; repeatable.",
        show_default=False,
        rich_help_panel=OUT,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a recipe value, key=value with a dotted key, e.g. fit.structure=diag; "
        "repeatable. The value is read as YAML.",
        show_default=False,
        rich_help_panel=RUN,
    ),
]
