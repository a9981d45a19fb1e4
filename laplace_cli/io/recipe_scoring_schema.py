"""The recipe keys of the stages that use a fitted posterior: evaluate, predict and doctor.

Part of the schema declared in :mod:`laplace_cli.io.spec_schema` (which re-exports it); the
top level, the model and the stages that build the posterior are in
:mod:`laplace_cli.io.recipe_schema`.
"""

from __future__ import annotations

from laplace_cli.core.enums import LinkApprox, PredType
from laplace_cli.io.schema_keys import Key, Section, enum_values

__all__ = [
    "LINK_APPROX_KEY",
    "PRED_TYPE_KEY",
    "RECIPE_DOCTOR",
    "RECIPE_EVALUATE",
    "RECIPE_PREDICT",
    "SAMPLES_KEY",
]

# The predictive keys, shared by tune, evaluate and predict.
PRED_TYPE_KEY = Key(
    "pred_type",
    "str",
    "Predictive: `glm` (linearised) or `nn` (sampled networks).",
    "glm",
    default_text="what the posterior was tuned with, else `glm`",
    choices=enum_values(PredType),
)
LINK_APPROX_KEY = Key(
    "link_approx",
    "str",
    "How the GLM predictive passes through softmax / sigmoid (classification and binary; "
    "regression has no link function and ignores it).",
    "probit",
    default_text="what the posterior was tuned with, else `probit` (`mc` for `nn`)",
    choices=enum_values(LinkApprox),
)
SAMPLES_KEY = Key(
    "samples",
    "int",
    "Monte Carlo samples for `link_approx: mc` and `pred_type: nn`.",
    200,
    default=100,
)

RECIPE_EVALUATE = Section(
    "evaluate",
    "Evaluate",
    "As `laplace evaluate`; output names are relative to the output folder.",
    (
        Key("split", "str", "Split to score.", "test", default="test"),
        Key(
            "ood_data",
            "path|dict",
            "Dataset specs of out-of-distribution inputs (targets not needed): one path, or "
            "several by name (`{rot: rot.yaml, noise: noise.yaml}`, as `--ood-data NAME=SPEC`) "
            "for AUROC, AUPR-in/out and FPR@95 per set and per score.",
            {"rot": "rot.yaml", "noise": "noise.yaml"},
            default_text="—",
        ),
        Key("ood_split", "str", "Split of `ood_data`.", "test", default="test"),
        Key(
            "conformal_level",
            "float",
            "Nominal coverage of the split conformal table (calibrated on the `val` split), "
            "strictly between 0 and 1; as `--conformal-level`.",
            0.95,
            default=0.9,
        ),
        PRED_TYPE_KEY,
        LINK_APPROX_KEY,
        SAMPLES_KEY,
        Key(
            "fail_if",
            "list",
            "Gates: the run exits 1 when one holds (`metric>value`, on the `laplace` row "
            "unless prefixed, e.g. `map.nll<0.1`).",
            ["ece>0.05"],
            default=[],
        ),
        Key(
            "bootstrap",
            "int",
            "Bootstrap resamples B for intervals of every metric and of the paired differences "
            "between rows; gates may then read `ece.upper`, `nll.diff_vs_map.lower`. 0: off.",
            1000,
            default=0,
        ),
        Key("confidence", "float", "Central probability of the intervals.", 0.9, default=0.95),
        Key(
            "interval_method",
            "str",
            "`percentile` (confidence interval), `basic` (bias-reflected) or `prediction` "
            "(where a fresh split of the same size would land).",
            "percentile",
            default="prediction",
            choices=("percentile", "basic", "prediction"),
        ),
        Key("bins", "int", "Calibration bins of `ece` / `mce` / `aece`.", 10, default=15),
        Key(
            "binning",
            "str",
            "Bins of `ece` / `mce`: equal-width or equal-mass (equal counts).",
            "equal-mass",
            default="equal-width",
            choices=("equal-width", "equal-mass"),
        ),
        Key("plot", "str", "Reliability / coverage plot (PNG).", "reliability.png"),
        Key("html", "str", "Self-contained HTML report.", "report.html"),
        Key("report", "str", "JSON report.", "report.json", default="report.json"),
        Key(
            "history",
            "path",
            "SQLite run history to append the evaluation to (relative to the recipe; docs/ci.md).",
            "runs.db",
            default_text="—",
        ),
        Key(
            "baseline",
            "str",
            "A previous report.json (relative to the recipe), or `last`, `best` or an ISO date "
            "of `history`; gates may read `baseline.<row>.<metric>`.",
            "last",
            default_text="—",
        ),
        Key(
            "strict_baseline",
            "bool",
            "Refuse a baseline on other data, split size or settings (else a warning).",
            True,
            default=False,
        ),
        Key("junit", "str", "JUnit XML, one test case per gate.", "gates.xml", default_text="—"),
        Key("summary_md", "str", "Markdown summary.", "summary.md", default_text="—"),
        Key(
            "log",
            "list",
            "Trackers to log the report to: mlflow, wandb, tensorboard (optional extras).",
            ["tensorboard"],
            default=[],
        ),
    ),
)

RECIPE_PREDICT = Section(
    "predict",
    "Predict",
    "As `laplace predict --data`; targets of the split are not needed.",
    (
        Key("split", "str", "Split to predict.", "test", default="test"),
        Key(
            "format",
            "str",
            "Output format; `npz` (arrays) for a posterior with dense outputs, where it is the "
            "default.",
            "jsonl",
            default_text="`csv` (`npz` for dense outputs)",
            choices=("csv", "jsonl", "npz"),
        ),
        Key(
            "output",
            "str",
            "Output file, relative to the output folder.",
            "preds.csv",
            default_text="`predictions.<format>`",
        ),
        PRED_TYPE_KEY,
        LINK_APPROX_KEY,
        SAMPLES_KEY,
        Key(
            "interval",
            "float",
            "Central probability of the regression interval columns.",
            0.9,
            default=0.95,
        ),
        Key(
            "columns",
            "list",
            "Output columns to keep, in order.",
            ["id", "pred", "max_prob"],
            default_text="all",
        ),
    ),
)

RECIPE_DOCTOR = Section(
    "doctor",
    "Doctor",
    "As `laplace doctor` ([doctor.md](doctor.md)) on the run's posterior, last (after tune, "
    "evaluate and predict): the findings are printed and written to the output folder. With `fail_on: "
    "warning`, a warning (or worse) makes the run exit 1, after every file is written.",
    (
        Key(
            "split",
            "str",
            "Split to diagnose the predictive on (the `train` split is used too, when present).",
            "test",
            default="val",
            choices=("val", "test"),
        ),
        Key(
            "fail_on",
            "str",
            "Exit 1 when a finding of this severity or worse exists (`never`: report only); "
            "as `laplace doctor --fail-on`.",
            "warning",
            default="never",
            choices=("never", "warning", "error"),
        ),
        Key(
            "output",
            "str",
            "The findings (as `laplace doctor --json`), relative to the output folder.",
            "doctor.json",
            default="doctor.json",
        ),
    ),
)
