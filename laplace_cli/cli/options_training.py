"""CLI options, training (`laplace train`: marginal-likelihood training)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laplace_cli.cli.option_panels import OUT

# --- training (`laplace train`: marginal-likelihood training) ------------------------------------
_TRAIN = "Training"
TrainOutputOpt = Annotated[
    Path,
    typer.Option(
        "--output",
        "-o",
        help="Output folder (created): model.safetensors (the trained weights) and posterior.st.",
        show_default=False,
        rich_help_panel=OUT,
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
