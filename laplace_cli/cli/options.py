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
    Path | None,
    typer.Option(
        "--ood-data",
        help="Dataset spec of out-of-distribution inputs (reports AUROC); uses the same --split.",
        rich_help_panel=_INPUTS,
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
        help="Compute dtype (default: the model's).",
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
