"""CSV / TSV tables, with a header row or without one (the header's presence is guessed from
the first line unless given), parsed row by row into chunks.

Split out of `laplace_cli.io.text_tables`, which re-exports the public names.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.data_formats import TARGET_NAMES, did_you_mean, row_where
from laplace_cli.io.table_common import TableChunk, TableInfo, finish_chunk, is_numeric_cell


def _parse_float(cell: str) -> float:
    text = cell.strip()
    if not text:
        raise ValueError("missing value")
    return float(text)


def _looks_like_data(row: Sequence[str]) -> bool:
    """Whether a first CSV line is data rather than a header: every field a number or empty,
    at least one a number.

    Empty fields count as data so that a first row with a missing value is read (and then
    reported as a missing value) instead of silently becoming a header. The price: a header
    whose names are all numbers (``2019,2020``, or pandas' ``,0,1,2``) reads as a data row;
    ``header=True`` (``--header`` / ``header: true``) says otherwise.
    """
    cells = [c.strip() for c in row]
    return any(cells) and all(not c or is_numeric_cell(c) for c in cells)


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


def csv_chunks(
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
            yield finish_chunk(
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
        yield finish_chunk(
            xs,
            ys if target_idx is not None else None,
            ids,
            start,
            line_nos,
            names or [],
            source,
            has_ids=id_idx is not None,
        )
