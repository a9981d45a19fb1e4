"""Every CLI option declared once, as an `Annotated` alias that the commands share.

Defaults live in the command signatures, not here, so one alias serves commands with different
defaults (`--split` is `train` for fit and `test` for evaluate). Options whose value can also
come from a YAML file (`--likelihood` over the data spec's `task`, `--batch-size` over
`batch_size`) default to `None`, meaning "not given", so a flag always wins over YAML and YAML
over the built-in default.

Choices are the `str` enums of `laplace_cli.core.enums`, so `--help` lists them and Typer converts
and checks the value (case-insensitively).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laplace_cli.core.enums import (
    Backend,
    Curvature,
    Dtype,
    Likelihood,
    LinkApprox,
    OutputFormat,
    PredType,
    PriorStructure,
    Structure,
    Subset,
    TuneLoss,
    TuneMethod,
)

# Dtype, OutputFormat and TuneLoss lived here before moving to laplace_cli.core.enums; importing
# them from this module still works.

_CHOICE = {"case_sensitive": False}
_INPUTS = "Inputs"
_FIT = "Fitting"
_PRED = "Prediction"
_MODEL = "Model"
_OUT = "Output"
_RUN = "Execution"

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
    typer.Option("--data", "-d", help="Dataset spec (YAML).", rich_help_panel=_INPUTS),
]
SplitOpt = Annotated[
    str,
    typer.Option("--split", help="Split of the dataset spec.", rich_help_panel=_INPUTS),
]
PosteriorOpt = Annotated[
    Path,
    typer.Option(
        "--posterior",
        "-p",
        help="Posterior file written by 'laplace fit'.",
        show_default=False,
        rich_help_panel=_INPUTS,
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
        rich_help_panel=_INPUTS,
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
        rich_help_panel=_INPUTS,
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
        rich_help_panel=_INPUTS,
    ),
]
ConformalCalibrateOpt = Annotated[
    list[float] | None,
    typer.Option(
        "--conformal",
        help="After tuning, calibrate split conformal sets / intervals at this level on --split "
        "and store them in the posterior (for 'laplace predict --conformal'); repeatable.",
        show_default=False,
        rich_help_panel=_INPUTS,
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
        rich_help_panel=_PRED,
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
        rich_help_panel=_PRED,
    ),
]
PerLabelTemperatureOpt = Annotated[
    bool,
    typer.Option(
        "--per-label-temperature",
        help="Binary / multi-label: fit one temperature per label (default: one shared).",
        rich_help_panel=_INPUTS,
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
        rich_help_panel=_OUT,
    ),
]
ConfidenceOpt = Annotated[
    float,
    typer.Option(
        "--confidence",
        help="Central probability of the bootstrap intervals.",
        rich_help_panel=_OUT,
    ),
]
IntervalMethodOpt = Annotated[
    str,
    typer.Option(
        "--interval-method",
        help="Bootstrap interval: percentile (confidence interval of the metric), basic "
        "(bias-reflected) or prediction (where a fresh split of the same size would land).",
        rich_help_panel=_OUT,
    ),
]
BinsOpt = Annotated[
    int,
    typer.Option(
        "--bins", help="Calibration bins of ece / mce / aece.", min=1, rich_help_panel=_OUT
    ),
]
BinningOpt = Annotated[
    str,
    typer.Option(
        "--binning",
        help="Bins of ece / mce: equal-width (k/B, (k+1)/B] or equal-mass (equal counts).",
        rich_help_panel=_OUT,
    ),
]
InputOpt = Annotated[
    str | None,
    typer.Option(
        "--input",
        "-i",
        help="Inputs to predict on: .npz .npy .pt .safetensors .csv .jsonl, or - for stdin. "
        "A target column, if present, is ignored.",
        rich_help_panel=_INPUTS,
    ),
]
XKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--x-key",
        help="Array holding the inputs in an .npz / .pt / .safetensors input (default: x).",
        rich_help_panel=_INPUTS,
    ),
]
ColumnsOpt = Annotated[
    str | None,
    typer.Option(
        "--columns",
        help="Comma-separated output fields to keep, e.g. 'pred,max_prob,entropy' "
        "(CSV: column names like prob_3; default: all; id is always kept).",
        rich_help_panel=_INPUTS,
    ),
]
HeaderOpt = Annotated[
    bool | None,
    typer.Option(
        "--header/--no-header",
        help="CSV / TSV input: whether the first line is a header. Default: a header, unless "
        "every field of it is a number (then it is data and columns are named 0, 1, ...).",
        show_default=False,
        rich_help_panel=_INPUTS,
    ),
]
RecipeArg = Annotated[
    Path, typer.Argument(help="Recipe (YAML) listing the stages to run.", show_default=False)
]

# --- model ------------------------------------------------------------------------------------
ModelOverrideOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="Use this checkpoint instead of the one the posterior names (it must have the "
        "same fingerprint), e.g. after moving it. Posteriors record the model's path relative "
        "to the posterior file.",
        rich_help_panel=_MODEL,
    ),
]
ModelFactoryOpt = Annotated[
    str | None,
    typer.Option(
        "--model-factory",
        help="pkg.module:function or path/to/file.py:function building the model "
        "for a weights-only checkpoint; pkg.module is imported with the working directory "
        "first on the import path, as python -m does.",
        rich_help_panel=_MODEL,
    ),
]
ModelKwargsOpt = Annotated[
    str | None,
    typer.Option(
        "--model-kwargs",
        help="Keyword arguments for the factory, as a JSON object, e.g. '{\"hidden\": 64}'.",
        rich_help_panel=_MODEL,
    ),
]
TrustCheckpointOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint",
        help="Allow loading a whole pickled module (this runs code from the file). The "
        "classes it names are imported with the working directory first on the import path, "
        "as python -m does.",
        rich_help_panel=_MODEL,
    ),
]
LastLayerNameOpt = Annotated[
    str | None,
    typer.Option(
        "--last-layer-name",
        help="Module name of the last layer for --subset last_layer (default: the last nn.Linear).",
        rich_help_panel=_MODEL,
    ),
]

# --- fitting ----------------------------------------------------------------------------------
LikelihoodOpt = Annotated[
    Likelihood | None,
    typer.Option(
        "--likelihood",
        help="Likelihood; binary means independent sigmoid outputs (multi-label too). "
        "Default: the data spec's task.",
        show_default=False,
        rich_help_panel=_FIT,
        **_CHOICE,
    ),
]
SubsetOpt = Annotated[
    Subset,
    typer.Option(
        "--subset", help="Parameters the posterior covers.", rich_help_panel=_FIT, **_CHOICE
    ),
]
StructureOpt = Annotated[
    Structure,
    typer.Option(
        "--structure", help="Structure of the curvature.", rich_help_panel=_FIT, **_CHOICE
    ),
]
CurvatureOpt = Annotated[
    Curvature,
    typer.Option(
        "--curvature",
        help="GGN (exact Gauss-Newton), empirical Fisher or Monte Carlo Fisher.",
        rich_help_panel=_FIT,
        **_CHOICE,
    ),
]
BackendOpt = Annotated[
    Backend,
    typer.Option("--backend", help="Curvature implementation.", rich_help_panel=_FIT, **_CHOICE),
]
RankOpt = Annotated[
    int | None,
    typer.Option(
        "--rank",
        min=1,
        help="Number of eigenpairs for --structure lowrank (default: min(parameters, 100)).",
        rich_help_panel=_FIT,
    ),
]
SubnetworkOpt = Annotated[
    str | None,
    typer.Option(
        "--subnetwork",
        metavar="MASK:SIZE|FILE",
        help="Which parameters --subset subnetwork covers: largest_magnitude:N, random:N "
        "(seeded by --seed), largest_variance:N (ranks by a diagonal Laplace over all weights, "
        "one extra pass), last_layer[:MODULE], param:NAME[,NAME], module:NAME[,NAME]; or a file "
        "(.npy, .pt, .txt) of integer indices into the flattened trainable parameters "
        "(model.parameters() order) or a boolean mask over them.",
        show_default=False,
        rich_help_panel=_FIT,
    ),
]
PriorPrecisionOpt = Annotated[
    float | None,
    typer.Option(
        "--prior-precision",
        help="Prior precision delta, > 0 (default: 1.0; tune it with 'laplace tune').",
        rich_help_panel=_FIT,
    ),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option(
        "--temperature",
        help="Temperature T, > 0: the curvature is divided by T (default: 1.0).",
        rich_help_panel=_FIT,
    ),
]
MethodOpt = Annotated[
    TuneMethod,
    typer.Option(
        "--method",
        help="marglik maximises the marginal likelihood (no data needed); gridsearch "
        "minimises --loss on --split.",
        rich_help_panel=_FIT,
        **_CHOICE,
    ),
]
PriorStructureOpt = Annotated[
    PriorStructure,
    typer.Option(
        "--prior-structure",
        help="One prior precision (scalar, the default of both methods), one per parameter "
        "tensor (layerwise) or one per parameter (diag); layerwise and diag are marglik only "
        "and, on a full posterior, cost a Cholesky factorisation per step.",
        rich_help_panel=_FIT,
        **_CHOICE,
    ),
]
GridMinOpt = Annotated[
    float | None,
    typer.Option(
        "--grid-min",
        metavar="LOG10",
        help="gridsearch: log10 of the smallest prior precision on the grid (default: -4, "
        "i.e. 1e-4).",
        show_default=False,
        rich_help_panel=_FIT,
    ),
]
GridMaxOpt = Annotated[
    float | None,
    typer.Option(
        "--grid-max",
        metavar="LOG10",
        help="gridsearch: log10 of the largest prior precision on the grid (default: 4, i.e. 1e4).",
        show_default=False,
        rich_help_panel=_FIT,
    ),
]
GridSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--grid-size",
        metavar="N",
        help="gridsearch: number of log-spaced prior precisions from --grid-min to --grid-max, "
        ">= 2 (default: 100).",
        show_default=False,
        rich_help_panel=_FIT,
    ),
]
TuneLossOpt = Annotated[
    TuneLoss,
    typer.Option(
        "--loss",
        help="What gridsearch minimises (and what marglik with --data is scored by against "
        "the MAP).",
        rich_help_panel=_FIT,
        **_CHOICE,
    ),
]

# --- prediction -------------------------------------------------------------------------------
PredTypeOpt = Annotated[
    PredType,
    typer.Option(
        "--pred-type",
        help="glm: linearised network; nn: Monte Carlo over sampled weights.",
        rich_help_panel=_PRED,
        **_CHOICE,
    ),
]
LinkApproxOpt = Annotated[
    LinkApprox,
    typer.Option(
        "--link-approx",
        help="How the GLM predictive passes through the softmax / sigmoid.",
        rich_help_panel=_PRED,
        **_CHOICE,
    ),
]
SamplesOpt = Annotated[
    int,
    typer.Option(
        "--samples",
        min=1,
        help="Monte Carlo samples (pred-type nn, link-approx mc).",
        rich_help_panel=_PRED,
    ),
]
IntervalOpt = Annotated[
    float,
    typer.Option(
        "--interval",
        help="Level of the central interval of regression predictions, in (0, 1).",
        rich_help_panel=_PRED,
    ),
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        min=1,
        help="Batch size (default: the data spec's batch_size).",
        rich_help_panel=_RUN,
    ),
]

# --- outputs ----------------------------------------------------------------------------------
OutputFileOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Output file.", rich_help_panel=_OUT),
]
OutputDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Output folder (default: the recipe's output, else runs/<recipe name>).",
        rich_help_panel=_OUT,
    ),
]
FormatOpt = Annotated[
    OutputFormat | None,
    typer.Option(
        "--format",
        "-f",
        help="Row format (default: from the --output name; JSONL on stdout).",
        show_default=False,
        rich_help_panel=_OUT,
        **_CHOICE,
    ),
]
ReportOpt = Annotated[
    Path | None,
    typer.Option("--report", help="Write the metrics as JSON to this file.", rich_help_panel=_OUT),
]
PlotOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        help="Write a reliability diagram (PNG or PDF; needs matplotlib).",
        rich_help_panel=_OUT,
    ),
]
HtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--html",
        help="Write one self-contained HTML page (metrics, settings, embedded plots) for CI artefacts.",
        rich_help_panel=_OUT,
    ),
]
FailIfOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--fail-if",
        help="Exit 1 when this holds, e.g. 'ece>0.05' or 'nll>map.nll'; repeatable.",
        show_default=False,
        rich_help_panel=_OUT,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a recipe value, key=value with a dotted key, e.g. fit.structure=diag; "
        "repeatable. The value is read as YAML.",
        show_default=False,
        rich_help_panel=_RUN,
    ),
]

# --- execution --------------------------------------------------------------------------------
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="auto, cpu, cuda, cuda:N or mps (default: auto, CUDA when available).",
        rich_help_panel=_RUN,
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
        rich_help_panel=_RUN,
        **_CHOICE,
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
        rich_help_panel=_RUN,
        **_CHOICE,
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", help="Random seed (sampling, Monte Carlo).", rich_help_panel=_RUN),
]
CheckpointEveryOpt = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-every",
        min=1,
        metavar="N",
        help="Save the fit's partial sums every N batches to OUTPUT.ckpt (next to -o, written "
        "atomically), so an interrupted fit can continue with --resume.",
        rich_help_panel=_RUN,
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted fit from OUTPUT.ckpt (same settings; a fresh fit when "
        "there is no checkpoint). The posterior equals an uninterrupted fit's.",
        rich_help_panel=_RUN,
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
        rich_help_panel=_RUN,
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
        rich_help_panel=_OUT,
    ),
]
StrictBaselineOpt = Annotated[
    bool,
    typer.Option(
        "--strict-baseline",
        help="Refuse (exit 2) a baseline computed on other data, another split size or other "
        "settings instead of warning.",
        rich_help_panel=_OUT,
    ),
]
HistoryOpt = Annotated[
    Path | None,
    typer.Option(
        "--history",
        help="Append this run to an SQLite run history (created if absent); see `laplace history`.",
        show_default=False,
        rich_help_panel=_OUT,
    ),
]
JunitOpt = Annotated[
    Path | None,
    typer.Option(
        "--junit",
        help="Write a JUnit XML file for CI: one test case per --fail-if gate.",
        show_default=False,
        rich_help_panel=_OUT,
    ),
]
SummaryMdOpt = Annotated[
    Path | None,
    typer.Option(
        "--summary-md",
        help="Write a Markdown summary (also appended to $GITHUB_STEP_SUMMARY when set).",
        show_default=False,
        rich_help_panel=_OUT,
    ),
]
LogOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--log",
        help="Log the report to a tracker: mlflow, wandb or tensorboard (an optional extra, "
        "e.g. pip install 'laplace-cli[mlflow]'); repeatable.",
        show_default=False,
        rich_help_panel=_OUT,
    ),
]

# --- training (`laplace train`: marginal-likelihood training) ------------------------------------
_TRAIN = "Training"
TrainOutputOpt = Annotated[
    Path,
    typer.Option(
        "--output",
        "-o",
        help="Output folder (created): model.safetensors (the trained weights) and posterior.st.",
        show_default=False,
        rich_help_panel=_OUT,
    ),
]
EpochsOpt = Annotated[
    int, typer.Option("--epochs", min=1, help="Training epochs.", rich_help_panel=_TRAIN)
]
LrOpt = Annotated[
    float, typer.Option("--lr", help="Adam learning rate of the network.", rich_help_panel=_TRAIN)
]
LrHypOpt = Annotated[
    float,
    typer.Option(
        "--lr-hyp",
        help="Adam learning rate of the hyperparameters (log prior precision, log sigma).",
        rich_help_panel=_TRAIN,
    ),
]
HyperstepsOpt = Annotated[
    int,
    typer.Option(
        "--hypersteps",
        min=1,
        help="Hyperparameter steps per marginal-likelihood estimate.",
        rich_help_panel=_TRAIN,
    ),
]
MarglikFrequencyOpt = Annotated[
    int,
    typer.Option(
        "--marglik-frequency",
        min=1,
        help="Estimate the marginal likelihood every N epochs.",
        rich_help_panel=_TRAIN,
    ),
]
BurninOpt = Annotated[
    int,
    typer.Option(
        "--burnin",
        min=0,
        help="Epochs of plain training before the first estimate.",
        rich_help_panel=_TRAIN,
    ),
]
PatienceOpt = Annotated[
    int | None,
    typer.Option(
        "--patience",
        min=1,
        help="Stop after N estimates without a better marginal likelihood (default: train "
        "all epochs). The best state is kept either way.",
        show_default=False,
        rich_help_panel=_TRAIN,
    ),
]
SigmaNoiseInitOpt = Annotated[
    float | None,
    typer.Option(
        "--sigma-noise",
        help="Initial observation noise for regression, > 0 (default: 1.0).",
        show_default=False,
        rich_help_panel=_TRAIN,
    ),
]
FixSigmaNoiseOpt = Annotated[
    bool,
    typer.Option(
        "--fix-sigma-noise",
        help="Keep --sigma-noise fixed instead of learning it (regression).",
        rich_help_panel=_TRAIN,
    ),
]
