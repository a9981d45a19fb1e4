"""Text tables (CSV / TSV, with a header row or without one, JSONL with one JSON object or
array per line), parsed row by row into chunks so that memory stays flat however long the file
or stdin is.

Split out of `laplace_cli.io.tabular`, which re-exports the public names.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.data_formats import (
    DEFAULT_CHUNK_ROWS,
    TARGET_NAMES,
    check_finite,
    detect_format,
    did_you_mean,
    row_where,
)


@dataclass
class TableChunk:
    """Up to ``chunk_rows`` parsed rows of a CSV / JSONL table.

    Attributes:
        x: Features, float64, shape (n, D) for CSV, (n, ...) for JSONL lists.
        y: Targets, float64, shape (n,) or (n, K), or None.
        ids: The ``id`` column's values, or the row indices when there is no id column.
        start: Row index of the first row (0-based over data rows).
        lines: Line number of each row in the file (1-based).
        feature_names: Feature columns (empty for JSONL list features).
        has_ids: Whether ``ids`` come from an id column (else they are row indices).
    """

    x: np.ndarray
    y: np.ndarray | None
    ids: list[Any]
    start: int
    lines: list[int]
    feature_names: list[str]
    has_ids: bool = False


def _open_text(path: str | Path | TextIO) -> tuple[Iterator[str], str, TextIO | None]:
    """Line iterator, display name, and a handle to close (None for stdin / caller's handle)."""
    if not isinstance(path, (str, Path)):
        return iter(path), getattr(path, "name", "<stream>"), None
    if str(path) == "-":
        return iter(sys.stdin), "<stdin>", None
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{path}: file not found")
    try:
        # newline="" so the csv module sees embedded newlines in quoted fields.
        fh = p.open("r", encoding="utf-8-sig", newline="")
    except OSError as err:
        raise BadInputError(f"{path}: cannot read ({err.strerror or err})") from None
    return iter(fh), str(path), fh


def _sniff_text_format(lines: Iterator[str]) -> tuple[str, Iterator[str]]:
    """JSONL when the first non-blank line starts with ``{`` or ``[``, else CSV."""
    buffered = []
    for line in lines:
        buffered.append(line)
        if line.strip():
            fmt = "jsonl" if line.lstrip().startswith(("{", "[")) else "csv"
            return fmt, itertools.chain(buffered, lines)
    return "jsonl", iter(buffered)


def _parse_float(cell: str) -> float:
    text = cell.strip()
    if not text:
        raise ValueError("missing value")
    return float(text)


def _is_numeric_cell(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _looks_like_data(row: Sequence[str]) -> bool:
    """Whether a first CSV line is data rather than a header: every field a number or empty,
    at least one a number.

    Empty fields count as data so that a first row with a missing value is read (and then
    reported as a missing value) instead of silently becoming a header. The price: a header
    whose names are all numbers (``2019,2020``, or pandas' ``,0,1,2``) reads as a data row;
    ``header=True`` (``--header`` / ``header: true``) says otherwise.
    """
    cells = [c.strip() for c in row]
    return any(cells) and all(not c or _is_numeric_cell(c) for c in cells)


@dataclass
class TableInfo:
    """What a table reader decided while reading, for row accounting (filled as it reads).

    Attributes:
        format: ``csv``, ``tsv`` or ``jsonl`` once known.
        rows: Data rows read so far.
        header: The CSV header's names; None when the file has no header row (or is JSONL).
        header_guessed: The header's presence was decided from the first line (no
            ``header=`` given): no header because every field of that line is a number.
    """

    format: str | None = None
    rows: int = 0
    header: list[str] | None = None
    header_guessed: bool = False

    def header_summary(self) -> str | None:
        """How the first line of a CSV / TSV was read, for the row count line; else None."""
        if self.format not in ("csv", "tsv"):
            return None
        if self.header is None:
            why = ": its first line is all numbers" if self.header_guessed else ""
            return f"no header row{why}"
        return f"header row of {len(self.header)} columns"

    def header_warning(self) -> str | None:
        """A warning when a header row looks like data (some names are numbers), else None.

        A header like ``id,0.5,0.3`` may be a first data row with a text id: its row is
        not predicted unless ``--no-header`` says so.
        """
        if self.format not in ("csv", "tsv") or not self.header_guessed:
            return None
        numeric = [n for n in self.header or [] if n and _is_numeric_cell(n)]
        if not numeric:
            return None
        shown = ", ".join(n[:12] for n in numeric[:3]) + (", ..." if len(numeric) > 3 else "")
        return (
            f"the header row has numeric names ({shown}); if the first line is data, "
            "pass --no-header (spec: header: false)"
        )


def _csv_first_row(reader: Any) -> list[str] | None:
    """The first non-blank row of ``reader``, or None when there is none."""
    for row in reader:
        if row and any(c.strip() for c in row):
            return row
    return None


def _csv_header(
    first: list[str], line: int, has_header: bool | None, info: TableInfo
) -> tuple[list[str], list[tuple[list[str], int]], str]:
    """The header, the pending first data row (if the first line is data) and the error hint."""
    # A first line that is all numbers is data, not a header (else it is silently lost).
    if has_header is None:
        has_header = not _looks_like_data(first)
        info.header_guessed = True
    pending: list[tuple[list[str], int]] = []  # the first line, when it is a data row
    if has_header:
        header = [c.strip() for c in first]
        info.header = header
    else:
        # Columns are named by position, so that x / target / id can still name them.
        header = [str(i) for i in range(len(first))]
        pending.append((first, line))
    # Errors that a header read as data would explain say so.
    hint = ""
    if not has_header and info.header_guessed:
        hint = (
            " (the file's first line is all numbers, so it was read as data and the columns "
            "are named 0, 1, ...; if it is a header, pass --header / header: true)"
        )
    elif not has_header:
        hint = " (no header row, as asked: the first line is data, columns are named 0, 1, ...)"
    return header, pending, hint


def _csv_columns(
    header: list[str],
    source: str,
    *,
    x_cols: Sequence[str] | None,
    target: str | None,
    want_target: bool,
    id_key: str | None,
    hint: str,
) -> tuple[dict[str, int], int | None, int | None, set[str], list[str] | None]:
    """Column indices: ``(col, target_idx, id_idx, excluded, names)`` from the header."""
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise BadInputError(f"{source}: duplicate column names in the header: {', '.join(dupes)}")
    col = {name: i for i, name in enumerate(header)}

    target_idx: int | None = None
    excluded: set[str] = set()
    if target is not None:
        if target in col:
            target_idx = col[target]
            excluded.add(target)
        elif want_target:
            raise BadInputError(
                f"{source}: no target column {target!r}; columns: {', '.join(header)}"
                f"{did_you_mean(target, header)}{hint}"
            )
    else:
        # No target named: the conventional names are targets, never features.
        present = [n for n in TARGET_NAMES if n in col]
        excluded.update(present)
        if want_target and present:
            target_idx = col[present[0]]
    id_idx = col.get(id_key) if id_key else None
    if id_key:
        excluded.add(id_key)

    names: list[str] | None = None
    if x_cols is not None:
        missing = [c for c in x_cols if c not in col]
        if missing:
            raise BadInputError(
                f"{source}: no feature column {missing[0]!r}; columns: {', '.join(header)}"
                f"{did_you_mean(missing[0], header)}{hint}"
            )
        names = list(x_cols)
    return col, target_idx, id_idx, excluded, names


def _csv_feature_names(
    header: list[str], row: list[str], excluded: set[str], source: str, hint: str
) -> list[str]:
    """Feature columns decided from the first data row.

    Every column whose value parses as a number, except id and target. A later non-number in
    one of them is an error naming the row, so chunked and whole-file reading agree.
    """
    names = []
    for name, cell in zip(header, row, strict=True):
        if name in excluded:
            continue
        try:
            float(cell) if cell.strip() else 0.0
        except ValueError:
            continue
        names.append(name)
    if not names:
        raise BadInputError(
            f"{source}: no numeric feature columns (columns: {', '.join(header)}){hint}"
        )
    return names


def _csv_features(
    row: list[str],
    names: list[str],
    idx: list[int],
    source: str,
    row_index: int,
    line: int,
    hint: str,
) -> list[float]:
    """The feature values of one row; a cell that is not a number is an error naming it."""
    try:
        return [_parse_float(row[j]) for j in idx]
    except ValueError:
        for n, j in zip(names, idx, strict=True):
            try:
                _parse_float(row[j])
            except ValueError:
                got = row[j].strip()
                what = "missing value" if not got else f"expected a number, got {got!r}"
                raise BadInputError(
                    f"{source}: {row_where(row_index, line)}: column {n!r}: {what}"
                    f"{hint if row_index == 0 else ''}"
                ) from None
        raise


def _csv_target(
    row: list[str], target_idx: int, header: list[str], source: str, row_index: int, line: int
) -> float:
    """The target value of one row; a cell that is not a number is an error naming it."""
    try:
        return _parse_float(row[target_idx])
    except ValueError:
        got = row[target_idx].strip()
        what = "missing value" if not got else f"expected a number, got {got!r}"
        raise BadInputError(
            f"{source}: {row_where(row_index, line)}: target column {header[target_idx]!r}: {what}"
        ) from None


def _csv_chunks(
    lines: Iterator[str],
    source: str,
    *,
    delimiter: str,
    x_cols: Sequence[str] | None,
    target: str | None,
    want_target: bool,
    id_key: str | None,
    chunk_rows: int,
    has_header: bool | None = None,
    info: TableInfo | None = None,
) -> Iterator[TableChunk]:
    reader = csv.reader(lines, delimiter=delimiter)
    info = info if info is not None else TableInfo()
    first = _csv_first_row(reader)
    if first is None:
        if has_header is False:
            return  # no header expected and no rows: an empty table
        raise BadInputError(f"{source}: empty file; expected a header row and data rows")
    header, pending, hint = _csv_header(first, reader.line_num, has_header, info)
    col, target_idx, id_idx, excluded, names = _csv_columns(
        header,
        source,
        x_cols=x_cols,
        target=target,
        want_target=want_target,
        id_key=id_key,
        hint=hint,
    )

    row_index = 0
    xs: list[list[float]] = []
    ys: list[float] = []
    ids: list[Any] = []
    line_nos: list[int] = []
    start = 0
    numbered = itertools.chain(pending, ((row, reader.line_num) for row in reader))
    for row, line in numbered:
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise BadInputError(
                f"{source}: {row_where(row_index, line)}: expected {len(header)} fields, got {len(row)}"
            )
        if names is None:
            names = _csv_feature_names(header, row, excluded, source, hint)
        idx = [col[n] for n in names]
        xs.append(_csv_features(row, names, idx, source, row_index, line, hint))
        if target_idx is not None:
            ys.append(_csv_target(row, target_idx, header, source, row_index, line))
        ids.append(row[id_idx] if id_idx is not None else row_index)
        line_nos.append(line)
        row_index += 1
        info.rows = row_index
        if len(xs) >= chunk_rows:
            yield _finish_chunk(
                xs,
                ys if target_idx is not None else None,
                ids,
                start,
                line_nos,
                names,
                source,
                has_ids=id_idx is not None,
            )
            start = row_index
            xs, ys, ids, line_nos = [], [], [], []
    if xs:
        yield _finish_chunk(
            xs,
            ys if target_idx is not None else None,
            ids,
            start,
            line_nos,
            names or [],
            source,
            has_ids=id_idx is not None,
        )


def _finish_chunk(
    xs: list[Any],
    ys: list[Any] | None,
    ids: list[Any],
    start: int,
    lines: list[int],
    names: list[str],
    source: str,
    has_ids: bool = False,
) -> TableChunk:
    x = np.asarray(xs, dtype=np.float64)
    check_finite(torch.from_numpy(x), source, "features", lines, start)
    y = None
    if ys is not None:
        y = np.asarray(ys, dtype=np.float64)
        check_finite(torch.from_numpy(y), source, "targets", lines, start)
    return TableChunk(
        x=x, y=y, ids=ids, start=start, lines=lines, feature_names=names, has_ids=has_ids
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numeric_array(value: Any, source: str, where: str, what: str) -> np.ndarray:
    if value is None:
        raise BadInputError(f"{source}: {where}: {what}: missing value")
    if isinstance(value, bool) or not (_is_number(value) or isinstance(value, list)):
        raise BadInputError(
            f"{source}: {where}: {what}: expected a number or a list of numbers, got {value!r}"
        )
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise BadInputError(
            f"{source}: {where}: {what}: expected a (regular) list of numbers, got "
            f"{json.dumps(value)[:60]}"
        ) from None
    return arr


@dataclass
class _JsonLayout:
    """How the records of a JSONL table are read, decided by its first record."""

    mode: str  # "list" (whole line / x key is a list) or "columns"
    names: list[str]
    list_key: str | None = None
    target_key: str | None = None
    has_id: bool = False


def _jsonl_record(text: str, source: str, where: str) -> dict[str, Any] | list[Any]:
    """One line parsed as a JSON object or array."""
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInputError(f"{source}: {where}: invalid JSON ({err.msg})") from None
    if not isinstance(rec, (dict, list)):
        raise BadInputError(
            f"{source}: {where}: expected a JSON object or array, got {type(rec).__name__}"
        )
    return rec


def _jsonl_layout(
    rec: dict[str, Any] | list[Any],
    source: str,
    where: str,
    *,
    x_key: str | Sequence[str] | None,
    target: str | None,
    want_target: bool,
    id_key: str | None,
) -> _JsonLayout:
    """The layout of a JSONL table: the first record decides it, as the first CSV row does."""
    if isinstance(rec, list):
        layout = _JsonLayout("list", [])
    elif isinstance(x_key, str):
        layout = _JsonLayout("list", [], list_key=x_key)
    elif x_key is not None:
        layout = _JsonLayout("columns", list(x_key))
    elif isinstance(rec.get("x"), list):
        layout = _JsonLayout("list", [], list_key="x")
    else:
        layout = _JsonLayout("columns", [])
    if isinstance(rec, dict):
        if target is not None:
            if target in rec:
                layout.target_key = target
            elif want_target:
                raise BadInputError(
                    f"{source}: {where}: no target key {target!r}; keys: "
                    f"{', '.join(rec)}{did_you_mean(target, rec)}"
                )
        elif want_target:
            layout.target_key = next((n for n in TARGET_NAMES if n in rec), None)
        layout.has_id = bool(id_key) and id_key in rec
        if layout.mode == "columns" and not layout.names:
            skip = set(TARGET_NAMES) | {target, id_key}
            layout.names = [k for k, v in rec.items() if k not in skip and _is_number(v)]
            if not layout.names:
                raise BadInputError(
                    f"{source}: {where}: no numeric feature keys (keys: {', '.join(rec)}); "
                    "name a key holding a list of numbers with x:"
                )
    return layout


def _jsonl_object_features(
    rec: dict[str, Any], layout: _JsonLayout, source: str, where: str
) -> np.ndarray:
    """The features of a JSON object record, read as the layout says."""
    if layout.mode == "list" and layout.list_key is None:
        raise BadInputError(
            f"{source}: {where}: expected a JSON array like the first row, got an object"
        )
    list_key = layout.list_key
    if layout.mode == "list":
        if list_key not in rec:
            raise BadInputError(
                f"{source}: {where}: no feature key {list_key!r}; keys: {', '.join(rec)}"
                f"{did_you_mean(str(list_key), rec)}"
            )
        return _numeric_array(rec[list_key], source, where, f"key {list_key!r}")
    values = []
    for n in layout.names:
        if n not in rec:
            raise BadInputError(
                f"{source}: {where}: missing feature key {n!r}{did_you_mean(n, rec)}"
            )
        v = rec[n]
        if not _is_number(v):
            raise BadInputError(f"{source}: {where}: key {n!r}: expected a number, got {v!r}")
        values.append(v)
    return np.asarray(values, dtype=np.float64)


def _jsonl_row(
    rec: dict[str, Any] | list[Any], layout: _JsonLayout, source: str, where: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """The features of one record and its target (None when the table has no target)."""
    if isinstance(rec, list):
        if layout.mode != "list" or layout.list_key is not None:
            raise BadInputError(
                f"{source}: {where}: expected a JSON object like the first row, got an array"
            )
        return _numeric_array(rec, source, where, "features"), None
    feat = _jsonl_object_features(rec, layout, source, where)
    target_key = layout.target_key
    if target_key is None:
        return feat, None
    if target_key not in rec:
        raise BadInputError(f"{source}: {where}: missing target key {target_key!r}")
    return feat, _numeric_array(rec[target_key], source, where, f"target {target_key!r}")


def _jsonl_chunks(
    lines: Iterator[str],
    source: str,
    *,
    x_key: str | Sequence[str] | None,
    target: str | None,
    want_target: bool,
    id_key: str | None,
    chunk_rows: int,
    info: TableInfo | None = None,
) -> Iterator[TableChunk]:
    info = info if info is not None else TableInfo()
    row_index = 0
    start = 0
    layout: _JsonLayout | None = None
    shape: tuple[int, ...] | None = None
    xs: list[Any] = []
    ys: list[Any] = []
    ids: list[Any] = []
    line_nos: list[int] = []
    for line_no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = row_where(row_index, line_no)
        rec = _jsonl_record(text, source, where)
        if layout is None:
            layout = _jsonl_layout(
                rec,
                source,
                where,
                x_key=x_key,
                target=target,
                want_target=want_target,
                id_key=id_key,
            )
        feat, y = _jsonl_row(rec, layout, source, where)
        if y is not None:
            ys.append(y)
        if shape is None:
            shape = feat.shape
        elif feat.shape != shape:
            raise BadInputError(
                f"{source}: {where}: features of shape {feat.shape}, but the first row has {shape}"
            )
        xs.append(feat)
        ids.append(rec.get(id_key) if layout.has_id and isinstance(rec, dict) else row_index)
        line_nos.append(line_no)
        row_index += 1
        info.rows = row_index
        if len(xs) >= chunk_rows:
            yield _finish_json_chunk(
                xs,
                ys if layout.target_key else None,
                ids,
                start,
                line_nos,
                layout.names,
                source,
                layout.has_id,
            )
            start = row_index
            xs, ys, ids, line_nos = [], [], [], []
    if xs and layout is not None:
        yield _finish_json_chunk(
            xs,
            ys if layout.target_key else None,
            ids,
            start,
            line_nos,
            layout.names,
            source,
            layout.has_id,
        )


def _table_format(
    path: str | Path | TextIO,
    lines: Iterator[str],
    source: str,
    fmt: str | None,
    header: bool | None,
    info: TableInfo | None,
) -> tuple[str, Iterator[str]]:
    """The table's format (given, from the suffix or sniffed) and the lines to read it from."""
    if fmt is None and (isinstance(path, (str, Path)) and str(path) != "-"):
        fmt = detect_format(path)
    elif fmt is None:
        fmt, lines = _sniff_text_format(lines)
    else:
        fmt = detect_format(source, fmt)
    if info is not None:
        info.format = fmt
    if header is not None and fmt not in ("csv", "tsv"):
        flag = "--header" if header else "--no-header"
        raise BadInputError(f"{source}: {flag} (header:) applies to CSV / TSV files, this is {fmt}")
    return fmt, lines


def _finish_json_chunk(
    xs: list[np.ndarray],
    ys: list[np.ndarray] | None,
    ids: list[Any],
    start: int,
    lines: list[int],
    names: list[str],
    source: str,
    has_ids: bool,
) -> TableChunk:
    x = np.stack(xs)
    if ys is not None:
        shapes = {y.shape for y in ys}
        if len(shapes) > 1:
            raise BadInputError(f"{source}: targets of different shapes: {sorted(shapes)}")
        y = np.stack(ys)  # (n,) or (n, K)
        return _finish_chunk(x, y, ids, start, lines, names, source, has_ids)
    return _finish_chunk(x, None, ids, start, lines, names, source, has_ids)


def iter_table_chunks(
    path: str | Path | TextIO,
    *,
    fmt: str | None = None,
    x_key: str | Sequence[str] | None = None,
    target: str | None = None,
    want_target: bool = False,
    id_key: str | None = "id",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    header: bool | None = None,
    info: TableInfo | None = None,
) -> Iterator[TableChunk]:
    """Parse a CSV / TSV / JSONL table chunk by chunk (memory bounded by ``chunk_rows``).

    Args:
        path: A file, ``"-"`` for stdin, or an open text stream.
        fmt: ``csv``, ``tsv`` or ``jsonl``; default from the suffix, or for streams sniffed from
            the first non-blank line (``{`` or ``[``: JSONL, else CSV).
        x_key: Features: for JSONL the key holding a list of numbers (default ``x`` when the
            first record has a list there); a list of column / key names selects those columns.
            Default: every numeric column of the first row except id and target columns.
        target: Target column / key. When None, columns named like a target (``y``, ``label``,
            ``target``, ``labels``, ``targets``) are never features, and with ``want_target``
            the first of them present is the target.
        want_target: Read the target (error when a named one is missing).
        id_key: Column / key holding row ids (kept as given); rows without one get their index.
        chunk_rows: Rows per chunk.
        header: CSV / TSV: whether the first line is a header. None (default): it is, unless
            every field of it is a number or empty; a file without a header has its columns
            named by position, ``"0"``, ``"1"``, ... Not allowed for JSONL.
        info: Filled while reading: format, rows read, header (see :class:`TableInfo`).

    Yields:
        :class:`TableChunk` objects with float64 features; NaN / Inf raise, naming row and line.
    """
    if chunk_rows < 1:
        raise BadInputError(f"chunk_rows: expected a positive integer, got {chunk_rows}")
    lines, source, handle = _open_text(path)
    try:
        fmt, lines = _table_format(path, lines, source, fmt, header, info)
        if fmt in ("csv", "tsv"):
            if isinstance(x_key, str):
                x_key = [x_key]
            yield from _csv_chunks(
                lines,
                source,
                delimiter="\t" if fmt == "tsv" else ",",
                x_cols=x_key,
                target=target,
                want_target=want_target,
                id_key=id_key,
                chunk_rows=chunk_rows,
                has_header=header,
                info=info,
            )
        elif fmt == "jsonl":
            yield from _jsonl_chunks(
                lines,
                source,
                x_key=x_key,
                target=target,
                want_target=want_target,
                id_key=id_key,
                chunk_rows=chunk_rows,
                info=info,
            )
        else:
            raise BadInputError(f"{source}: {fmt!r} is not a text table format (csv, tsv, jsonl)")
    except UnicodeDecodeError as err:
        raise BadInputError(f"{source}: not UTF-8 text ({err.reason})") from None
    except csv.Error as err:
        raise BadInputError(f"{source}: malformed CSV ({err})") from None
    finally:
        if handle is not None:
            handle.close()


@dataclass
class Table:
    """A whole CSV / JSONL table (see :func:`read_table`)."""

    x: np.ndarray
    y: np.ndarray | None
    ids: list[Any]
    has_ids: bool
    feature_names: list[str]


def read_table(
    path: str | Path,
    *,
    fmt: str | None = None,
    x_key: str | Sequence[str] | None = None,
    target: str | None = None,
    id_key: str | None = "id",
    source: str | None = None,
    header: bool | None = None,
) -> Table:
    """Read a whole CSV / TSV / JSONL table with its target (see :func:`iter_table_chunks`)."""
    chunks = list(
        iter_table_chunks(
            path,
            fmt=fmt,
            x_key=x_key,
            target=target,
            want_target=True,
            id_key=id_key,
            chunk_rows=65536,
            header=header,
        )
    )
    src = source or str(path)
    if not chunks:
        raise BadInputError(f"{src}: no data rows")
    x = np.concatenate([c.x for c in chunks])
    ys = [c.y for c in chunks]
    y = None if ys[0] is None else np.concatenate(ys)  # type: ignore[arg-type]
    ids = [i for c in chunks for i in c.ids]
    has_ids = chunks[0].has_ids
    return Table(x=x, y=y, ids=ids, has_ids=has_ids, feature_names=chunks[0].feature_names)
