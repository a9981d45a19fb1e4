"""The keys of the dataset spec (docs/data-spec.md), declared once.

Part of the schema declared in :mod:`laplace_cli.io.spec_schema` (which re-exports it);
:mod:`laplace_cli.io.dataset_specs` validates specs against these keys.
"""

from __future__ import annotations

from laplace_cli.core.enums import Likelihood
from laplace_cli.io.schema_keys import REQUIRED, Key, Section, enum_values

__all__ = ["DATA_FORMATS", "DATA_SPEC_SECTIONS", "DATA_SPEC_SPLIT", "DATA_SPEC_TOP"]

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
            choices=enum_values(Likelihood),
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
            "ignore_index",
            "int",
            "Per-position label maps (a model with dense outputs, `fit --output-positions`): "
            "the label of a masked position, left out of the fit, the tuning and the metrics "
            "(docs/dense-outputs.md). `fit --ignore-index` overrides it.",
            255,
            default_text="-100",
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
