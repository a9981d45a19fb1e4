"""CLI options, inputs: the model, data spec, split, posterior(s), OOD data, conformal and
bootstrap settings, and a prediction's input file and columns."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laplace_cli.cli.option_panels import INPUTS, OUT, PRED

# --- inputs -----------------------------------------------------------------------------------
ModelArg = Annotated[
    Path,
    typer.Argument(
        help="Model checkpoint: .pt2 (torch.export), TorchScript, .safetensors or state_dict "
        ".pt (with --model-factory), or a pickled module (with --trust-checkpoint).",
        show_default=False,
    ),
]
DataOpt = Annotated[
    Path | None,
    typer.Option("--data", "-d", help="Dataset spec (YAML).", rich_help_panel=INPUTS),
]
SplitOpt = Annotated[
    str,
    typer.Option("--split", help="Split of the dataset spec.", rich_help_panel=INPUTS),
]
PosteriorOpt = Annotated[
    Path,
    typer.Option(
        "--posterior",
        "-p",
        help="Posterior file written by 'laplace fit'.",
        show_default=False,
        rich_help_panel=INPUTS,
    ),
]
PosteriorArg = Annotated[
    Path, typer.Argument(help="Posterior file written by 'laplace fit'.", show_default=False)
]
PosteriorsArg = Annotated[
    list[Path],
    typer.Argument(help="One or more posterior files to compare.", show_default=False),
]
PriorPosteriorOpt = Annotated[
    Path | None,
    typer.Option(
        "--prior",
        help="Posterior of an earlier task, used as the prior (continual learning).",
        rich_help_panel=INPUTS,
    ),
]
OodDataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--ood-data",
        help="Dataset spec of out-of-distribution inputs (AUROC, AUPR-in/out, FPR@95 per score), "
        "read from its 'test' split; repeatable as NAME=SPEC (e.g. rot=rot.yaml).",
        metavar="[NAME=]SPEC",
        show_default=False,
        rich_help_panel=INPUTS,
    ),
]
ConformalLevelOpt = Annotated[
    float,
    typer.Option(
        "--conformal-level",
        help="Coverage level of the split conformal sets / intervals calibrated on the "
        "validation split (the report's conformal table).",
        min=0.0,
        max=1.0,
        rich_help_panel=INPUTS,
    ),
]
ConformalCalibrateOpt = Annotated[
    list[float] | None,
    typer.Option(
        "--conformal",
        help="After tuning, calibrate split conformal sets / intervals at this level on --split "
        "and store them in the posterior (for 'laplace predict --conformal'); repeatable.",
        show_default=False,
        rich_help_panel=INPUTS,
    ),
]
ConformalPredictOpt = Annotated[
    float | None,
    typer.Option(
        "--conformal",
        help="Add conformal sets (classification: conformal_set, 0/1 per class; binary / "
        "multi-label: conformal_has_0 / conformal_has_1, 0/1 per label) or intervals "
        "(regression: conformal_lower / conformal_upper) at this level, as calibrated by "
        "'laplace tune --conformal'.",
        show_default=False,
        rich_help_panel=PRED,
    ),
]
ConformalScoreOpt = Annotated[
    str | None,
    typer.Option(
        "--conformal-score",
        help="Conformal score of the --conformal sets: lac (default; 1 − p_y) or aps "
        "(randomised adaptive sets, classification only; one uniform per row seeded by --seed "
        "and the row's index).",
        show_default=False,
        rich_help_panel=PRED,
    ),
]
PerLabelTemperatureOpt = Annotated[
    bool,
    typer.Option(
        "--per-label-temperature",
        help="Binary / multi-label: fit one temperature per label (default: one shared).",
        rich_help_panel=INPUTS,
    ),
]
BootstrapOpt = Annotated[
    int,
    typer.Option(
        "--bootstrap",
        help="Bootstrap resamples B for confidence intervals of every metric and of the paired "
        "differences between rows (gates: 'ece.upper>0.05', 'nll.diff_vs_map.lower>0'); "
        "1000 is typical, 0 turns them off. Seeded by --seed.",
        min=0,
        rich_help_panel=OUT,
    ),
]
ConfidenceOpt = Annotated[
    float,
    typer.Option(
        "--confidence",
        help="Central probability of the bootstrap intervals.",
        rich_help_panel=OUT,
    ),
]
IntervalMethodOpt = Annotated[
    str,
    typer.Option(
        "--interval-method",
        help="Bootstrap interval: percentile (confidence interval of the metric), basic "
        "(bias-reflected) or prediction (where a fresh split of the same size would land).",
        rich_help_panel=OUT,
    ),
]
BinsOpt = Annotated[
    int,
    typer.Option(
        "--bins", help="Calibration bins of ece / mce / aece.", min=1, rich_help_panel=OUT
    ),
]
BinningOpt = Annotated[
    str,
    typer.Option(
        "--binning",
        help="Bins of ece / mce: equal-width (k/B, (k+1)/B] or equal-mass (equal counts).",
        rich_help_panel=OUT,
    ),
]
InputOpt = Annotated[
    str | None,
    typer.Option(
        "--input",
        "-i",
        help="Inputs to predict on: .npz .npy .pt .safetensors .csv .jsonl, or - for stdin. "
        "A target column, if present, is ignored.",
        rich_help_panel=INPUTS,
    ),
]
XKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--x-key",
        help="Array holding the inputs in an .npz / .pt / .safetensors input (default: x).",
        rich_help_panel=INPUTS,
    ),
]
ColumnsOpt = Annotated[
    str | None,
    typer.Option(
        "--columns",
        help="Comma-separated output fields to keep, e.g. 'pred,max_prob,entropy' "
        "(CSV: column names like prob_3; default: all; id is always kept).",
        rich_help_panel=INPUTS,
    ),
]
HeaderOpt = Annotated[
    bool | None,
    typer.Option(
        "--header/--no-header",
        help="CSV / TSV input: whether the first line is a header. Default: a header, unless "
        "every field of it is a number (then it is data and columns are named 0, 1, ...).",
        show_default=False,
        rich_help_panel=INPUTS,
    ),
]
RecipeArg = Annotated[
    Path, typer.Argument(help="Recipe (YAML) listing the stages to run.", show_default=False)
]
