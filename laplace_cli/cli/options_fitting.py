"""CLI options, model and fitting: model overrides and factories, likelihood, subset,
structure, curvature, backend, and the prior's tuning (method, grid, loss)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laplace_cli.cli.option_panels import CHOICE, FIT, MODEL
from laplace_cli.core.enums import (
    Backend,
    Curvature,
    Likelihood,
    PriorStructure,
    Structure,
    Subset,
    TuneLoss,
    TuneMethod,
)

# --- model ------------------------------------------------------------------------------------
ModelOverrideOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="Use this checkpoint instead of the one the posterior names (it must have the "
        "same fingerprint), e.g. after moving it. Posteriors record the model's path relative "
        "to the posterior file.",
        rich_help_panel=MODEL,
    ),
]
ModelFactoryOpt = Annotated[
    str | None,
    typer.Option(
        "--model-factory",
        help="pkg.module:function or path/to/file.py:function building the model "
        "for a weights-only checkpoint; pkg.module is imported with the working directory "
        "first on the import path, as python -m does.",
        rich_help_panel=MODEL,
    ),
]
ModelKwargsOpt = Annotated[
    str | None,
    typer.Option(
        "--model-kwargs",
        help="Keyword arguments for the factory, as a JSON object, e.g. '{\"hidden\": 64}'.",
        rich_help_panel=MODEL,
    ),
]
TrustCheckpointOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint",
        help="Allow loading a whole pickled module (this runs code from the file). The "
        "classes it names are imported with the working directory first on the import path, "
        "as python -m does.",
        rich_help_panel=MODEL,
    ),
]
LastLayerNameOpt = Annotated[
    str | None,
    typer.Option(
        "--last-layer-name",
        help="Module name of the last layer for --subset last_layer (default: the last nn.Linear).",
        rich_help_panel=MODEL,
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
        rich_help_panel=FIT,
        **CHOICE,
    ),
]
SubsetOpt = Annotated[
    Subset,
    typer.Option(
        "--subset", help="Parameters the posterior covers.", rich_help_panel=FIT, **CHOICE
    ),
]
StructureOpt = Annotated[
    Structure,
    typer.Option("--structure", help="Structure of the curvature.", rich_help_panel=FIT, **CHOICE),
]
CurvatureOpt = Annotated[
    Curvature,
    typer.Option(
        "--curvature",
        help="GGN (exact Gauss-Newton), empirical Fisher, Monte Carlo Fisher, or the exact "
        "Hessian of the loss (hessian: --structure full or diag only; may be indefinite, then "
        "exit 3 unless the prior precision makes the posterior positive definite).",
        rich_help_panel=FIT,
        **CHOICE,
    ),
]
BackendOpt = Annotated[
    Backend,
    typer.Option("--backend", help="Curvature implementation.", rich_help_panel=FIT, **CHOICE),
]
RankOpt = Annotated[
    int | None,
    typer.Option(
        "--rank",
        min=1,
        help="Number of eigenpairs for --structure lowrank (default: min(parameters, 100)).",
        rich_help_panel=FIT,
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
        rich_help_panel=FIT,
    ),
]
PriorPrecisionOpt = Annotated[
    float | None,
    typer.Option(
        "--prior-precision",
        help="Prior precision delta, > 0 (default: 1.0; tune it with 'laplace tune').",
        rich_help_panel=FIT,
    ),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option(
        "--temperature",
        help="Temperature T, > 0: the curvature is divided by T (default: 1.0).",
        rich_help_panel=FIT,
    ),
]
MethodOpt = Annotated[
    TuneMethod,
    typer.Option(
        "--method",
        help="marglik maximises the marginal likelihood (no data needed); gridsearch "
        "minimises --loss on --split.",
        rich_help_panel=FIT,
        **CHOICE,
    ),
]
PriorStructureOpt = Annotated[
    PriorStructure,
    typer.Option(
        "--prior-structure",
        help="One prior precision (scalar, the default of both methods), one per parameter "
        "tensor (layerwise) or one per parameter (diag); layerwise and diag are marglik only "
        "and, on a full posterior, cost a Cholesky factorisation per step.",
        rich_help_panel=FIT,
        **CHOICE,
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
        rich_help_panel=FIT,
    ),
]
GridMaxOpt = Annotated[
    float | None,
    typer.Option(
        "--grid-max",
        metavar="LOG10",
        help="gridsearch: log10 of the largest prior precision on the grid (default: 4, i.e. 1e4).",
        show_default=False,
        rich_help_panel=FIT,
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
        rich_help_panel=FIT,
    ),
]
TuneLossOpt = Annotated[
    TuneLoss,
    typer.Option(
        "--loss",
        help="What gridsearch minimises (and what marglik with --data is scored by against "
        "the MAP).",
        rich_help_panel=FIT,
        **CHOICE,
    ),
]
