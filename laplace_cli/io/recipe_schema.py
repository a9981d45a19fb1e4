"""The recipe keys: the top level, the model, and the stages that build the posterior (fit, tune).

Part of the schema declared in :mod:`laplace_cli.io.spec_schema` (which re-exports it); the
stages that use the posterior (evaluate, predict, doctor) are in
:mod:`laplace_cli.io.recipe_scoring_schema`. ``RECIPE_SECTIONS`` lists them all, in the order the
docs show them.
"""

from __future__ import annotations

from laplace_cli.core.enums import (
    Curvature,
    KronApprox,
    Likelihood,
    PriorStructure,
    Structure,
    Subset,
    TuneMethod,
)
from laplace_cli.io.recipe_scoring_schema import (
    LINK_APPROX_KEY,
    PRED_TYPE_KEY,
    RECIPE_DOCTOR,
    RECIPE_EVALUATE,
    RECIPE_PREDICT,
)
from laplace_cli.io.schema_keys import REQUIRED, Key, Section, enum_values

__all__ = [
    "RECIPE_FIT",
    "RECIPE_MODEL",
    "RECIPE_SECTIONS",
    "RECIPE_STAGES",
    "RECIPE_TOP",
    "RECIPE_TUNE",
]

RECIPE_STAGES = ("fit", "tune", "evaluate", "predict", "doctor")

RECIPE_TOP = Section(
    "",
    "Top level",
    "",
    (
        Key(
            "model",
            "dict",
            "The checkpoint to calibrate (keys in the `model` table).",
            {"path": "model.pt2"},
            default=REQUIRED,
        ),
        Key(
            "data",
            "path",
            "The dataset spec YAML ([data-spec.md](data-spec.md)), relative to the recipe.",
            "../sample_models/digits_mlp/data.yaml",
            default=REQUIRED,
        ),
        Key(
            "stages",
            "list",
            "Stages to run, in order; must start with `fit`, each once.",
            ["fit", "tune", "evaluate"],
            default_text="the stage sections present, else `[fit]`",
            choices=RECIPE_STAGES,
        ),
        Key("device", "str", "`auto`, `cpu`, `cuda`, `cuda:1`, ...", "cpu", default="auto"),
        Key(
            "dtype",
            "str",
            "Floating-point type of the model (bfloat16 / float16: the posterior stays float32, "
            "docs/half-precision.md).",
            "float64",
            default_text="the checkpoint's",
            choices=("float32", "float64", "bfloat16", "float16"),
        ),
        Key("seed", "int", "Seed of every random stream (MC samples, shuffles).", 1, default=0),
        Key(
            "batch_size",
            "int",
            "Rows per batch for every stage (overrides the spec's `batch_size`).",
            128,
            default_text="the spec's `batch_size`, else 256",
        ),
        Key("fit", "dict", "Settings of the fit stage (table below).", {"structure": "diag"}),
        Key("tune", "dict", "Settings of the tune stage.", {"method": "marglik"}),
        Key("evaluate", "dict", "Settings of the evaluate stage.", {"split": "test"}),
        Key("predict", "dict", "Settings of the predict stage.", {"format": "csv"}),
        Key("doctor", "dict", "Settings of the doctor stage.", {"fail_on": "warning"}),
        Key("name", "str", "A name for the recipe (not used by the run).", "digits_mlp_kron"),
        Key("description", "str", "Free text (not used by the run).", "K-FAC over all weights"),
    ),
)

RECIPE_MODEL = Section(
    "model",
    "The model",
    "",
    (
        Key(
            "path",
            "path",
            "Checkpoint file or folder (`.pt2`, TorchScript, safetensors / state_dict with "
            "`factory`, a pickled model with `trust_checkpoint`, a Hugging Face folder), "
            "relative to the recipe.",
            "../sample_models/digits_mlp/model.pt2",
            default=REQUIRED,
        ),
        Key(
            "factory",
            "str",
            "`pkg.module:function` or `file.py:function` building the model for a weights-only "
            "checkpoint (a `file.py` path is relative to the recipe).",
            "../sample_models/models.py:digits_mlp",
            default_text="—",
        ),
        Key("kwargs", "dict", "Keyword arguments for `factory`.", {"hidden": 64}, default={}),
        Key(
            "trust_checkpoint",
            "bool",
            "Allow a pickled (full-model) checkpoint, which runs code when loaded.",
            True,
            default=False,
        ),
    ),
)

RECIPE_FIT = Section(
    "fit",
    "Fit",
    "As `laplace fit`.",
    (
        Key(
            "likelihood",
            "str",
            "Overrides the spec's `task:`.",
            "regression",
            default_text="the spec's `task:`, else `classification`",
            choices=enum_values(Likelihood),
        ),
        Key(
            "subset",
            "str",
            "Which weights get a posterior.",
            "all",
            default="last_layer",
            choices=enum_values(Subset),
        ),
        Key(
            "structure",
            "str",
            "Curvature structure.",
            "diag",
            default="kron",
            choices=enum_values(Structure),
        ),
        Key(
            "curvature",
            "str",
            "Curvature: generalised Gauss-Newton, empirical Fisher, Monte Carlo Fisher, or the "
            "exact Hessian of the loss (structures full and diag only; it may be indefinite).",
            "ef",
            default="ggn",
            choices=enum_values(Curvature),
        ),
        Key(
            "backend",
            "str",
            "Curvature backend.",
            "native",
            default="auto",
            choices=("auto", "native", "asdl"),
        ),
        Key("prior_precision", "float", "Prior precision δ before tuning.", 0.5, default=1.0),
        Key(
            "temperature",
            "float",
            "Posterior temperature T (scales the curvature by 1/T).",
            0.5,
            default=1.0,
        ),
        Key(
            "sigma_noise",
            "float",
            "Observation noise σ (regression).",
            0.7,
            default=1.0,
        ),
        Key(
            "context_points",
            "int",
            "`structure: gp`: the M training rows the GP is conditioned on (stored in the "
            "posterior file).",
            200,
            default_text="every row of the split",
        ),
        Key(
            "context",
            "str",
            "`structure: gp`: which M rows, the first M or M drawn with the recipe's seed.",
            "random",
            default="first",
            choices=("first", "random"),
        ),
        Key(
            "last_layer_name",
            "str",
            "Module name of the last layer for `subset: last_layer`.",
            "head.out",
            default_text="the last `nn.Linear`",
        ),
        Key(
            "kron_approx",
            "str",
            "K-FAC over shared weights (sequence models).",
            "reduce",
            default="expand",
            choices=enum_values(KronApprox),
        ),
        Key(
            "rank",
            "int",
            "Eigenpairs kept by `structure: lowrank`.",
            50,
            default_text="min(parameters, 100)",
        ),
        Key(
            "subnetwork",
            "str",
            "Which parameters `subset: subnetwork` covers, as `laplace fit --subnetwork`: "
            "`largest_magnitude:N`, `random:N` (the recipe's `seed`), `largest_variance:N`, "
            "`last_layer[:MODULE]`, `param:NAME[,NAME]`, `module:NAME[,NAME]`, or an index file "
            "(`.npy`, `.pt`, `.txt`; relative to the recipe's folder).",
            "largest_magnitude:128",
            default_text="none; required with `subset: subnetwork`",
        ),
        Key(
            "output_positions",
            "str",
            "Dense outputs (B, C, *S), e.g. segmentation maps: the likelihood per position, "
            "positions independent or their mean per input, as `laplace fit "
            "--output-positions` (docs/dense-outputs.md).",
            "independent",
            default_text="none: (batch, outputs) models",
            choices=("independent", "mean"),
        ),
        Key(
            "ignore_index",
            "int",
            "With `output_positions`: the label of a masked position.",
            255,
            default_text="the data spec's `ignore_index`, else -100",
        ),
        Key("split", "str", "Split to fit on.", "train_full", default="train"),
        Key(
            "batch_size",
            "int",
            "Rows per batch for the fit.",
            64,
            default_text="the top-level `batch_size`",
        ),
    ),
)

RECIPE_TUNE = Section(
    "tune",
    "Tune",
    "As `laplace tune`: tunes the prior precision (and σ for regression) and rewrites the "
    "posterior.",
    (
        Key(
            "method",
            "str",
            "Marginal likelihood or a validation grid search.",
            "gridsearch",
            default="marglik",
            choices=enum_values(TuneMethod),
        ),
        Key(
            "prior_structure",
            "str",
            "One prior precision, one per parameter tensor, or one per parameter (the last "
            "two: `marglik` only).",
            "layerwise",
            default="scalar",
            choices=enum_values(PriorStructure),
        ),
        Key("split", "str", "Validation split (grid search).", "val", default="val"),
        PRED_TYPE_KEY,
        LINK_APPROX_KEY,
        Key(
            "loss",
            "str",
            "Validation loss the grid search minimises.",
            "brier",
            default="nll",
            choices=("nll", "ece", "brier", "mse"),
        ),
        Key(
            "grid_min",
            "float",
            "Grid search: log10 of the smallest prior precision on the grid.",
            -2,
            default=-4,
        ),
        Key(
            "grid_max",
            "float",
            "Grid search: log10 of the largest prior precision on the grid.",
            6,
            default=4,
        ),
        Key(
            "grid_size",
            "int",
            "Grid search: log-spaced points from `grid_min` to `grid_max`, at least 2.",
            50,
            default=100,
        ),
        Key(
            "refine",
            "int",
            "Extra log-spaced points scored around the best grid value.",
            10,
            default=0,
        ),
        Key(
            "conformal",
            "list",
            "Levels (each strictly between 0 and 1) at which to store split conformal "
            "thresholds calibrated on `split`, for `predict --conformal`; as `tune --conformal`.",
            [0.9, 0.95],
            default=[],
        ),
    ),
)


RECIPE_SECTIONS = (
    RECIPE_TOP,
    RECIPE_MODEL,
    RECIPE_FIT,
    RECIPE_TUNE,
    RECIPE_EVALUATE,
    RECIPE_PREDICT,
    RECIPE_DOCTOR,
)
