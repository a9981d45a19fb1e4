"""Prediction writers: one row per input, streamed as CSV or JSONL, flushed batch by batch.

Column names are normative (docs/design.md §1b "Output names"). Classification rows carry `id`,
`pred`, `prob_<k>`, `var_<k>`, `entropy`, `max_prob` and `mutual_info` (when MC samples exist);
regression rows `id`, `mean_<k>`, `var_<k>` (epistemic), `var_total_<k>` (with observation noise),
`lower_<k>`, `upper_<k>`; single-output regression drops the `_<k>`. JSONL keeps per-class values
as lists (`probs`, `var`, ...), except single-output regression, whose values are numbers in both
formats (`"mean": 1.5`, as the CSV column `mean`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from laplace_cli.core.errors import BadInputError

FORMATS = ("csv", "jsonl")

# JSONL list fields and the CSV column prefix each expands to.
LIST_FIELDS = {
    "probs": "prob",
    "var": "var",
    "mean": "mean",
    "var_total": "var_total",
    "lower": "lower",
    "upper": "upper",
    # `predict --conformal`: the set as 0/1 per class, or the interval per output.
    "conformal_set": "conformal_set",
    "conformal_lower": "conformal_lower",
    "conformal_upper": "conformal_upper",
    # binary / multi-label: per label, 0/1 whether value 0 / value 1 is in the label's set.
    "conformal_has_0": "conformal_has_0",
    "conformal_has_1": "conformal_has_1",
}


def format_from_path(path: str | None, fmt: str | None) -> str:
    """`--format` if given, else from the file name (.csv / .jsonl / .json), JSONL for stdout."""
    if fmt:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise BadInputError(f"--format: expected csv or jsonl, got {fmt!r}")
        return fmt
    if path in (None, "-"):
        return "jsonl"
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise BadInputError(
        f"{path}: cannot tell the output format from the name; pass --format csv|jsonl"
    )


def _number(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def flatten_row(row: dict[str, Any], single_output: bool) -> dict[str, Any]:
    """JSONL-style row (lists for per-class values) → flat CSV columns."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, list) and key in LIST_FIELDS:
            prefix = LIST_FIELDS[key]
            if single_output and key != "probs" and len(value) == 1:
                out[prefix] = value[0]
            else:
                for k, v in enumerate(value):
                    out[f"{prefix}_{k}"] = v
        else:
            out[key] = value
    return out


def scalar_row(row: dict[str, Any]) -> dict[str, Any]:
    """Single-output regression: one-element lists (`mean`, `var`, ...) become numbers."""
    return {
        k: v[0] if isinstance(v, list) and len(v) == 1 and k in LIST_FIELDS else v
        for k, v in row.items()
    }


def check_columns(
    row: dict[str, Any], columns: Sequence[str] | None, fmt: str, single_output: bool = False
) -> None:
    """Raise `BadInputError` when a `--columns` field is not in `row` (a JSONL-style row, as
    `iter_prediction_rows` yields it; flattened first for CSV).

    Lets a command check the columns against its first row before it opens the output file.
    """
    if columns:
        _require_fields(flatten_row(row, single_output) if fmt == "csv" else row, columns)


def _require_fields(row: dict[str, Any], columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise BadInputError(
            f"--columns: unknown field(s) {', '.join(missing)}; available: {', '.join(row)}"
        )


class RowWriter:
    """Writes rows to a text stream; each row is written whole and the stream flushed per batch.

    Args:
        stream: an open text stream (a file or stdout).
        fmt: "csv" or "jsonl".
        columns: keep only these fields (JSONL keys or CSV columns; `id` always kept).
        single_output: regression with one output: drop the `_0` suffix in CSV, numbers
            instead of one-element lists in JSONL.
    """

    def __init__(
        self,
        stream: TextIO,
        fmt: str,
        columns: Sequence[str] | None = None,
        single_output: bool = False,
    ) -> None:
        self.stream = stream
        self.fmt = fmt
        self.columns = list(columns) if columns else None
        self.single_output = single_output
        self._csv_fields: list[str] | None = None
        self.rows_written = 0

    def _select(self, row: dict[str, Any]) -> dict[str, Any]:
        if not self.columns:
            return row
        if self.rows_written == 0:
            _require_fields(row, self.columns)
        keep = {"id", *self.columns}
        return {k: v for k, v in row.items() if k in keep}

    def write_batch(self, rows: list[dict[str, Any]]) -> None:
        """Write a batch of rows and flush. Each row goes out in one `write` call, so a failure
        (a full disk, a closed pipe) leaves only complete rows behind in JSONL."""
        for row in rows:
            if self.fmt == "jsonl":
                row = self._select(scalar_row(row) if self.single_output else row)
                line = json.dumps({k: _jsonable(v) for k, v in row.items()}, allow_nan=False) + "\n"
            else:
                flat = self._select(flatten_row(row, self.single_output))
                if self._csv_fields is None:
                    self._csv_fields = list(flat)
                    self.stream.write(_csv_line(self._csv_fields))
                line = _csv_line([_number(flat.get(k)) for k in self._csv_fields])
            self.stream.write(line)
            self.rows_written += 1
        self.stream.flush()


def _jsonable(v: Any) -> Any:
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return _number(v)


def _csv_line(values: Sequence[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return buf.getvalue()
