"""Check a dataset spec's files against what its splits name, without loading the files.

Every split (train, val, test, ood, ...) is checked before any model is loaded or any fit
starts, so that a nightly job does not fit for an hour and then fail at ``evaluate`` over a
test split's column. Only headers are read: a CSV's first line, a JSONL file's first record,
an NPZ's zip directory and the ``.npy`` headers of its members
(:func:`numpy.lib.format.read_array_header_1_0`), a safetensors header. Class labels are
checked against ``n_classes`` only where that is cheap (an NPZ / ``.npy`` target array of at
most :data:`MAX_LABEL_CHECK` values, read alone).

Each problem is one line ``<spec>: splits.<name>.<key>: <what is wrong>``; the caller joins
them with the spec's own key errors into a single message (exit 2).
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from laplace_cli.io.data_formats import did_you_mean, file_not_found
from laplace_cli.io.table_common import is_numeric_cell

__all__ = ["MAX_LABEL_CHECK", "split_input_problems"]

MAX_LABEL_CHECK = 10_000_000
"""Largest target array (values) whose labels are range-checked before loading the split."""

_HEAD_BYTES = 1 << 20  # a header line longer than 1 MiB is not a header we can check cheaply


def split_input_problems(split: Any, at: str, n_classes: int | None) -> list[str]:
    """Problems of one split's file(s): missing file, missing key / column, row counts, labels.

    Args:
        split: A :class:`~laplace_cli.io.dataset_specs.SplitSpec`.
        at: Message prefix, ``<spec>: splits.<name>``.
        n_classes: The spec's ``n_classes`` (labels are range-checked when given).

    Returns:
        One line per problem (empty when the split looks loadable). Callable splits and
        ``.pt`` files (which would have to be unpickled to be looked into) are not looked into.
    """
    if split.path is None:  # a callable: nothing to read before calling it
        return []
    problems: list[str] = []
    ykey = getattr(split, "y_key_name", "y")
    if not split.path.is_file():
        problems.append(file_not_found(f"{at}.path", split.path))
    if split.format in ("npy", "idx") and isinstance(split.y, Path) and not split.y.is_file():
        problems.append(file_not_found(f"{at}.y", split.y))
    if problems:
        return problems
    try:
        if split.text is not None:
            problems += _table_problems(split, at, ykey, text=True)
        elif split.format in ("csv", "tsv", "jsonl"):
            problems += _table_problems(split, at, ykey, text=False)
        elif split.format == "npz":
            problems += _npz_problems(split, at, ykey, n_classes)
        elif split.format == "npy" and isinstance(split.y, Path):
            problems += _npy_pair_problems(split, at, n_classes)
        elif split.format == "safetensors":
            problems += _safetensors_problems(split, at, ykey)
        elif split.format == "idx":
            problems += _idx_problems(split, at, n_classes)
    except (OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        # An unreadable header is reported by the loader with its own words; here it is one
        # more line, so that the other splits' problems still come out together.
        problems.append(f"{at}.path: {split.path}: unreadable ({type(exc).__name__}: {exc})")
    return problems


# --- tables -------------------------------------------------------------------------------------


def _first_line(path: Path) -> str | None:
    with open(path, encoding="utf-8", newline="") as fh:
        while True:
            line = fh.readline(_HEAD_BYTES)
            if not line:
                return None
            if line.strip():
                return line


def _table_names(split: Any) -> list[str] | None:
    """Column names (CSV / TSV header, keys of the first JSONL record); None when unknown."""
    line = _first_line(split.path)
    if line is None:
        return None  # an empty file: the loader says "empty split"
    fmt = split.format or "jsonl"
    if fmt == "jsonl":
        rec = json.loads(line)
        return [str(k) for k in rec] if isinstance(rec, dict) else None
    row = next(csv.reader([line], delimiter="\t" if fmt == "tsv" else ","))
    header = split.header
    if header is None:  # as the reader decides: an all-number first line is data
        header = not all(is_numeric_cell(c) for c in row if c.strip())
    return [c.strip() for c in row] if header else [str(i) for i in range(len(row))]


def _table_problems(split: Any, at: str, ykey: str, *, text: bool) -> list[str]:
    names = _table_names(split)
    if names is None:
        return []
    src = split.path.name
    problems = []
    if split.y is not None and str(split.y) not in names:
        problems.append(
            f"{at}.{ykey}: no column {str(split.y)!r} in {src}; columns: {', '.join(names)}"
            f"{did_you_mean(str(split.y), names)}"
        )
    wanted: list[str] = []
    if text:
        wanted = [split.text]
    elif isinstance(split.x, list):
        wanted = split.x
    elif isinstance(split.x, str) and (split.format == "jsonl"):
        wanted = [split.x]
    for name in wanted:
        if name not in names:
            key = "text" if text else "x"
            problems.append(
                f"{at}.{key}: no column {name!r} in {src}; columns: {', '.join(names)}"
                f"{did_you_mean(name, names)}"
            )
    return problems


# --- arrays -------------------------------------------------------------------------------------


def _npy_header(fh: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an open ``.npy`` stream, reading its header only."""
    version = npy_format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(fh)
    else:
        shape, _, dtype = npy_format.read_array_header_2_0(fh)
    return tuple(shape), dtype


def _npz_problems(split: Any, at: str, ykey: str, n_classes: int | None) -> list[str]:
    src = split.path.name
    with zipfile.ZipFile(split.path) as zf:
        members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
        shapes = {}
        for key in (split.x or "x", str(split.y) if split.y is not None else "y"):
            if key in members:
                with zf.open(members[key]) as fh:
                    shapes[key] = _npy_header(fh)
    keys = sorted(members)
    problems = []
    x_key = split.x or "x"
    if x_key not in members:
        problems.append(
            f"{at}.x: no feature key {x_key!r} in {src}; keys: {', '.join(keys) or '(none)'}"
            f"{did_you_mean(x_key, keys)}"
        )
    if split.y is not None and str(split.y) not in members:
        problems.append(
            f"{at}.{ykey}: no target key {str(split.y)!r} in {src}; keys: "
            f"{', '.join(keys) or '(none)'}{did_you_mean(str(split.y), keys)}"
        )
    y_key = str(split.y) if split.y is not None else "y"
    if problems or x_key not in shapes or y_key not in shapes:
        return problems
    problems += _rows_match(at, src, shapes[x_key][0], shapes[y_key][0])
    if not problems and n_classes is not None:
        problems += _label_range(
            at, ykey, src, shapes[y_key], n_classes, lambda: _npz_array(split.path, y_key)
        )
    return problems


def _npz_array(path: Path, key: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        return npz[key]


def _npy_pair_problems(split: Any, at: str, n_classes: int | None) -> list[str]:
    with open(split.path, "rb") as fx, open(split.y, "rb") as fy:
        x_shape, y_info = _npy_header(fx)[0], _npy_header(fy)
    problems = _rows_match(at, split.path.name, x_shape, y_info[0])
    if not problems and n_classes is not None:
        problems += _label_range(
            at, "y", split.y.name, y_info, n_classes, lambda: np.load(split.y, allow_pickle=False)
        )
    return problems


def _idx_problems(split: Any, at: str, n_classes: int | None) -> list[str]:
    """IDX images (and labels file): headers readable, row counts, ``rows:`` within the file."""
    from laplace_cli.core.errors import BadInputError
    from laplace_cli.io.idx_files import read_idx, read_idx_header

    try:
        x_shape = read_idx_header(split.path)[0]
        y_info = None if split.y is None else read_idx_header(split.y)
    except BadInputError as err:
        return [f"{at}.path: {err}"]
    problems = [] if y_info is None else _rows_match(at, split.path.name, x_shape, y_info[0])
    if split.rows is not None:
        start, stop = split.rows
        end = stop if stop is not None else start or 0
        if end > x_shape[0]:
            problems.append(
                f"{at}.rows: reaches row {end} but {split.path.name} has {x_shape[0]} rows; "
                f"lower it (rows: 0:{x_shape[0]} is the whole file)"
            )
    if not problems and y_info is not None and n_classes is not None:
        problems += _label_range(
            at, "y", split.y.name, y_info, n_classes, lambda: read_idx(split.y)
        )
    return problems


def _safetensors_problems(split: Any, at: str, ykey: str) -> list[str]:
    from laplace_cli.io.safetensors_header import read_safetensors_header

    try:
        keys = sorted(read_safetensors_header(split.path).entries)
    except Exception:  # a corrupt header: the loader reports it in its own words
        return []
    problems = []
    src = split.path.name
    for key, what, name in ((split.x or "x", "feature", "x"), (split.y, "target", ykey)):
        if key is not None and str(key) not in keys:
            problems.append(
                f"{at}.{name}: no {what} key {str(key)!r} in {src}; keys: "
                f"{', '.join(keys) or '(none)'}{did_you_mean(str(key), keys)}"
            )
    return problems


def _rows_match(at: str, src: str, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> list[str]:
    if x_shape and y_shape and x_shape[0] != y_shape[0]:
        return [f"{at}: {src}: {x_shape[0]} feature rows but {y_shape[0]} targets"]
    return []


def _label_range(
    at: str, ykey: str, src: str, info: tuple[tuple[int, ...], np.dtype], n_classes: int, read: Any
) -> list[str]:
    """Labels outside ``0..n_classes-1`` (integer targets of one label per row only)."""
    shape, dtype = info
    size = int(np.prod(shape)) if shape else 1
    if dtype.kind not in "iu" or len(shape) != 1 or size == 0 or size > MAX_LABEL_CHECK:
        return []
    y = read()
    low, high = int(y.min()), int(y.max())
    if low >= 0 and high < n_classes:
        return []
    row = int(np.flatnonzero((y < 0) | (y >= n_classes))[0])
    return [
        f"{at}.{ykey}: {src}: row {row}: class label {int(y[row])} out of range for "
        f"{n_classes} classes (expected 0..{n_classes - 1})"
    ]
