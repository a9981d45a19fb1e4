"""Text tables (CSV / TSV, with a header row or without one, JSONL with one JSON object or
array per line), parsed row by row into chunks so that memory stays flat however long the file
or stdin is.

Split out of `laplace_cli.io.tabular`, which re-exports the public names. The CSV / TSV reader
lives in `csv_tables`, the JSONL reader in `jsonl_tables`, the shared types in `table_common`.
"""

from __future__ import annotations

import csv
import itertools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.csv_tables import csv_chunks
from laplace_cli.io.data_formats import DEFAULT_CHUNK_ROWS, detect_format
from laplace_cli.io.jsonl_tables import jsonl_chunks
from laplace_cli.io.table_common import TableChunk, TableInfo

__all__ = ["Table", "TableChunk", "TableInfo", "iter_table_chunks", "read_table"]


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


def _refuse_binary_arrays(lines: Iterator[str], source: str) -> Iterator[str]:
    """A stream holding an NPZ / .npy file (zip or NumPy magic) is refused with the fix,
    rather than read as a malformed CSV: arrays need random access, a stream has none."""
    first = next(lines, None)
    # NumPy's magic byte 0x93 is not UTF-8: it arrives as \x93, an escape or U+FFFD.
    if first is not None and (first.startswith("PK\x03\x04") or first[1:6] == "NUMPY"):
        raise BadInputError(
            f"{source}: holds an NPZ / .npy file (binary arrays); a stream takes CSV, TSV or "
            "JSONL text: pass the file with --input FILE"
        )
    return lines if first is None else itertools.chain([first], lines)


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
        lines = _refuse_binary_arrays(lines, source)
    else:
        fmt = detect_format(source, fmt)
    if info is not None:
        info.format = fmt
    if header is not None and fmt not in ("csv", "tsv"):
        flag = "--header" if header else "--no-header"
        raise BadInputError(f"{source}: {flag} (header:) applies to CSV / TSV files, this is {fmt}")
    return fmt, lines


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
            yield from csv_chunks(
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
            yield from jsonl_chunks(
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
