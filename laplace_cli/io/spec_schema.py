"""The keys of the dataset spec and of recipes, declared once: the validators and the docs read them.

Each YAML section is a tuple of :class:`Key` entries (name, kind, default, description, example,
allowed values). :mod:`laplace_cli.io.dataset_specs` and :mod:`laplace_cli.pipeline.recipes` take their
allowed keys (and, for recipes, the type and choice checks) from here, and
:mod:`laplace_cli.io.schema_docs` renders ``docs/data-spec.md`` and ``docs/recipes.md`` from
the same entries, so the documentation cannot drift from what the validator accepts (a test
regenerates the files and compares).

Adding a key is one entry here (plus the code that uses its value); the validators then accept
it and the docs list it after ``python -m laplace_cli.io.schema_docs --write``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from laplace_cli.core.enums import (
    Curvature,
    KronApprox,
    Likelihood,
    LinkApprox,
    PredType,
    PriorStructure,
    Structure,
    Subset,
    TuneMethod,
)

__all__ = [
    "DATA_SPEC_SECTIONS",
    "KINDS",
    "Key",
    "RECIPE_SECTIONS",
    "RECIPE_STAGES",
    "Section",
    "keys_of",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


REQUIRED: Any = _Required()
"""Default of a key that must be given."""
UNSET: Any = _Unset()
"""Default of an optional key whose absence means "not used" (described in ``default_text``)."""

KINDS = {
    "str": "string",
    "path": "path",
    "int": "integer",
    "float": "number",
    "bool": "true / false",
    "list": "list",
    "dict": "mapping",
    "str|list": "string or list of strings",
    "path|dict": "path, or mapping of name to path",
}
"""Value kinds and how the docs name them (recipes check values against these kinds)."""


@dataclass(frozen=True)
class Key:
    """One YAML key.

    Attributes:
        name: The key as written in YAML.
        kind: One of :data:`KINDS`.
        description: What it does (Markdown, one paragraph).
        example: A value to show in the docs (YAML-rendered).
        default: The value used when the key is absent, :data:`REQUIRED`, or :data:`UNSET`.
        default_text: How the docs state the default when it is not a plain value.
        choices: Allowed values, if the key takes one of a fixed set.
    """

    name: str
    kind: str
    description: str
    example: Any
    default: Any = UNSET
    default_text: str | None = None
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: unknown kind {self.kind!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Section:
    """The keys of one YAML mapping: ``path`` is the dotted prefix ("" for the top level)."""

    path: str
    title: str
    intro: str
    keys: tuple[Key, ...]

    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def key(self, name: str) -> Key:
        for k in self.keys:
            if k.name == name:
                return k
        raise KeyError(name)


def _values(enum: Any) -> tuple[str, ...]:
    return tuple(m.value for m in enum)


# Kept here (not imported from laplace_cli.io.data_formats, which imports torch) so that the
# schema stays cheap to import; tests/io/test_schema_docs.py checks it matches FORMATS.
DATA_FORMATS = ("npz", "npy", "pt", "safetensors", "idx", "csv", "tsv", "jsonl")

# --------------------------------------------------------------------------- dataset spec

DATA_SPEC_TOP = Section(
    "",
    "Top level",
    "",
    (
        Key(
            "task",
            "str",
            "The likelihood: `classification` (one integer class label per row, softmax "
            "outputs), `regression` (real targets, Gaussian noise) or `binary` (independent "
            "0/1 targets through a sigmoid, multi-label included). `--likelihood` overrides "
            "it. Without either, `fit` assumes `classification` and says so; targets that are "
            "not whole numbers are then refused with the fix (`task: regression`).",
            "regression",
            default_text="`classification` (assumed, with a note)",
            choices=_values(Likelihood),
        ),
        Key(
            "batch_size",
            "int",
            "Rows per batch (a positive integer). `--batch-size` overrides it.",
            64,
            default=256,
        ),
        Key(
            "n_classes",
            "int",
            "Number of classes; classification labels are checked to lie in `0..n_classes-1`.",
            10,
            default_text="not checked (labels only ≥ 0)",
        ),
        Key(
            "splits",
            "dict",
            "Split name (`train`, `val`, `test`, any other) to the split's keys (next table). "
            "`fit` reads `train`, `tune` `val`, `evaluate` `test` (and `val` for the "
            "temperature-scaling baseline); `--split` picks another.",
            {"train": {"path": "train.npz"}},
            default=REQUIRED,
        ),
    ),
)

DATA_SPEC_SPLIT = Section(
    "splits.<name>",
    "Per split",
    "Each split is a data file (`path:`), a Python callable returning a `torch` Dataset "
    "(`callable:`), or a text file tokenised locally (`path:` + `text:` + `tokenizer:`).",
    (
        Key(
            "path",
            "path",
            "The data file, relative to the YAML file's folder: `.npz`, `.npy`, `.pt`, "
            "`.safetensors`, `.csv`, `.tsv`, `.jsonl`, or an IDX file (MNIST format, plain "
            "or `.gz`: `.idx`, `*-idx3-ubyte.gz`). Give `path:` or `callable:`.",
            "train.npz",
            default_text="required unless `callable:`",
        ),
        Key(
            "format",
            "str",
            "The file format when the suffix does not say (`ndjson`, `pth` and `st` are "
            "accepted as aliases).",
            "csv",
            default_text="from the suffix of `path:`",
            choices=DATA_FORMATS,
        ),
        Key(
            "x",
            "str|list",
            "Features: the key in an array file (`.npz`, `.pt`, `.safetensors`) or JSONL "
            "object, or a list of feature columns (CSV / TSV / JSONL). A `.npy` or IDX file "
            "is the features itself and takes no `x:`.",
            ["f0", "f1", "f2"],
            default_text="key `x`; for tables, every numeric column but the target and id",
        ),
        Key(
            "y",
            "str",
            "The target key or column (`target:` means the same; give one). For a `.npy` "
            "or IDX split: the path of a second file of that format with the targets "
            "(`train-labels-idx1-ubyte.gz`). A split without "
            "targets can be used by `predict` and as `--ood-data`, not by fit / tune / "
            "evaluate.",
            "label",
            default_text="`y` when present (tables: also `label`, `target`, `labels`, "
            "`targets`), else no targets",
        ),
        Key(
            "target",
            "str",
            "Same as `y:`.",
            "label",
            default_text="see `y`",
        ),
        Key(
            "id",
            "str",
            "Id column (CSV / TSV / JSONL): copied to predictions, never a feature.",
            "row_id",
            default="id",
        ),
        Key(
            "header",
            "bool",
            "CSV / TSV: whether the first line is a header row. `false`: every line is data "
            'and the columns are named by position, `"0"`, `"1"`, ... (quote them in '
            "`x:`, `y:`, `id:`). When absent, the first line is data if every field of it is "
            "a number or empty, else a header; set `header: true` for a header whose names "
            "are all numbers (`2019,2020`).",
            False,
            default_text="a header unless the first line is all numbers",
        ),
        Key(
            "rows",
            "str",
            "Only these rows of the file, `start:stop` as in Python (0-based, `stop` "
            "excluded; either may be left out): a subset of a large file without copying it. "
            "A `stop` past the file's end is refused. Not with `callable:` or `text:`.",
            "0:10000",
            default_text="all rows",
        ),
        Key(
            "scale",
            "float",
            "Multiply the features by this positive number after reading (`0.00392156862745098`"
            " = 1/255 turns 8-bit pixels into [0, 1]). Not with `callable:` or `text:`.",
            0.00392156862745098,
            default=1.0,
        ),
        Key(
            "callable",
            "str",
            "`pkg.module:function` (imported with the working directory on the import path) "
            "or `file.py:function` (relative to the YAML's folder), called with `kwargs:`; "
            "it returns a `torch.utils.data.Dataset` of `(x, y)` pairs. Not combined with "
            "`path`, `format`, `x`, `y`, `target`, `id`.",
            "mypkg.data:make_split",
            default_text="—",
        ),
        Key(
            "kwargs",
            "dict",
            "Keyword arguments for `callable:`.",
            {"n": 1000},
            default={},
        ),
        Key(
            "text",
            "str",
            "Text field (JSONL) or column (CSV / TSV) of a text split; needs `tokenizer:`.",
            "text",
            default_text="— (not a text split)",
        ),
        Key(
            "tokenizer",
            "str",
            "Tokenizer of a text split: a local folder (relative to the YAML) or "
            "`package:NAME/sub/dir` inside an installed package; never downloaded.",
            "./tok",
            default_text="—",
        ),
        Key(
            "max_length",
            "int",
            "Token limit of a text split (longer texts are truncated).",
            64,
            default=128,
        ),
    ),
)

DATA_SPEC_SECTIONS = (DATA_SPEC_TOP, DATA_SPEC_SPLIT)


# --------------------------------------------------------------------------- recipes

RECIPE_STAGES = ("fit", "tune", "evaluate", "predict", "doctor")

_PRED_TYPE = Key(
    "pred_type",
    "str",
    "Predictive: `glm` (linearised) or `nn` (sampled networks).",
    "glm",
    default_text="what the posterior was tuned with, else `glm`",
    choices=_values(PredType),
)
_LINK_APPROX = Key(
    "link_approx",
    "str",
    "How the GLM predictive passes through softmax / sigmoid (classification and binary; "
    "regression has no link function and ignores it).",
    "probit",
    default_text="what the posterior was tuned with, else `probit` (`mc` for `nn`)",
    choices=_values(LinkApprox),
)
_SAMPLES = Key(
    "samples",
    "int",
    "Monte Carlo samples for `link_approx: mc` and `pred_type: nn`.",
    200,
    default=100,
)

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
            choices=_values(Likelihood),
        ),
        Key(
            "subset",
            "str",
            "Which weights get a posterior.",
            "all",
            default="last_layer",
            choices=_values(Subset),
        ),
        Key(
            "structure",
            "str",
            "Curvature structure.",
            "diag",
            default="kron",
            choices=_values(Structure),
        ),
        Key(
            "curvature",
            "str",
            "Curvature: generalised Gauss-Newton, empirical Fisher or Monte Carlo Fisher.",
            "ef",
            default="ggn",
            choices=_values(Curvature),
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
            choices=_values(KronApprox),
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
            choices=_values(TuneMethod),
        ),
        Key(
            "prior_structure",
            "str",
            "One prior precision, one per parameter tensor, or one per parameter (the last "
            "two: `marglik` only).",
            "layerwise",
            default="scalar",
            choices=_values(PriorStructure),
        ),
        Key("split", "str", "Validation split (grid search).", "val", default="val"),
        _PRED_TYPE,
        _LINK_APPROX,
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
        _PRED_TYPE,
        _LINK_APPROX,
        _SAMPLES,
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
        Key("format", "str", "Output format.", "jsonl", default="csv", choices=("csv", "jsonl")),
        Key(
            "output",
            "str",
            "Output file, relative to the output folder.",
            "preds.csv",
            default_text="`predictions.<format>`",
        ),
        _PRED_TYPE,
        _LINK_APPROX,
        _SAMPLES,
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

RECIPE_SECTIONS = (
    RECIPE_TOP,
    RECIPE_MODEL,
    RECIPE_FIT,
    RECIPE_TUNE,
    RECIPE_EVALUATE,
    RECIPE_PREDICT,
    RECIPE_DOCTOR,
)


def keys_of(sections: tuple[Section, ...], path: str) -> tuple[str, ...]:
    """The key names of the section at ``path`` (a validator's allowed keys)."""
    for section in sections:
        if section.path == path:
            return section.names()
    raise KeyError(path)
