"""Readers for the data file formats of dataset specs and ``predict --input``.

Array files (``.npz``, ``.npy``, ``.pt``, ``.safetensors``) are read as whole arrays (``.npy`` and
``.safetensors`` lazily, by slices, where only features are streamed). Text tables (CSV / TSV,
with a header row or without one, JSONL with one JSON object or array per line) are parsed row
by row into chunks, so streaming a huge file or stdin through :func:`iter_feature_chunks` keeps
memory flat; reading a whole table for a dataset split goes through the same chunk parser, so
both agree by construction.

Every problem raises :class:`~laplace_cli.core.errors.BadInputError` naming the file and, for rows,
the row index (0-based, data rows only) and the line number.

The readers live in ``data_formats`` (format names, detection, ``check_finite``),
``array_files`` (``read_arrays``) and ``text_tables`` (``iter_table_chunks``, ``read_table``);
this module streams features from either kind for ``predict --input`` and re-exports them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.array_files import load_npy, read_arrays, safetensors_slicer
from laplace_cli.io.data_formats import (
    ARRAY_FORMATS,
    DEFAULT_CHUNK_ROWS,
    FORMATS,
    SUFFIX_FORMATS,
    TABLE_FORMATS,
    TARGET_NAMES,
    check_finite,
    detect_format,
)
from laplace_cli.io.text_tables import (
    Table,
    TableChunk,
    TableInfo,
    iter_table_chunks,
    read_table,
)

__all__ = [
    "ARRAY_FORMATS",
    "FORMATS",
    "SUFFIX_FORMATS",
    "TABLE_FORMATS",
    "TARGET_NAMES",
    "Table",
    "TableChunk",
    "TableInfo",
    "check_finite",
    "detect_format",
    "iter_feature_chunks",
    "iter_table_chunks",
    "read_arrays",
    "read_table",
]


def iter_feature_chunks(
    path: str | Path | TextIO,
    *,
    fmt: str | None = None,
    x_key: str | Sequence[str] | None = None,
    target: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    id_key: str | None = "id",
    header: bool | None = None,
    info: TableInfo | None = None,
) -> Iterator[tuple[list[Any], torch.Tensor]]:
    """Stream the features of an input file in chunks, for ``predict --input FILE|-``.

    Text tables (CSV / TSV / JSONL, also on stdin) are parsed row by row, so memory stays flat
    however long the input is. ``.npy`` is memory-mapped and ``.safetensors`` sliced; ``.npz``
    and ``.pt`` members are read whole (their containers allow no cheaper access). A target
    column, if present, is ignored.

    Args:
        path: A file, ``"-"`` for stdin, or an open text stream.
        fmt: Format; default from the suffix, sniffed for stdin / streams.
        x_key: Feature key (``x`` by default for NPZ / ``.pt`` / safetensors / JSONL lists), or
            a list of feature columns for CSV / JSONL.
        target: A target column to leave out (besides ``y``, ``label``, ``target``, ...).
        chunk_rows: Rows per chunk.
        id_key: Column / key holding ids.
        header: CSV / TSV: whether the first line is a header (None: unless it is all numbers;
            see :func:`iter_table_chunks`). Refused for other formats.
        info: Filled while reading: format, rows read, CSV header (:class:`TableInfo`).

    Yields:
        ``(ids, x)``: ids are the id column's values or global row indices; ``x`` is float32 of
        shape (n, ...).
    """
    if chunk_rows < 1:
        raise BadInputError(f"chunk_rows: expected a positive integer, got {chunk_rows}")
    is_stream = not isinstance(path, (str, Path)) or str(path) == "-"
    if is_stream:
        kind = None if fmt is None else detect_format("<stdin>", fmt)
    else:
        kind = detect_format(path, fmt)
    if header is not None and kind is not None and kind not in ("csv", "tsv"):
        flag = "--header" if header else "--no-header"
        raise BadInputError(f"{path}: {flag} applies to CSV / TSV input, this is {kind}")
    if is_stream or kind in TABLE_FORMATS:
        for chunk in iter_table_chunks(
            path,
            fmt=kind,
            x_key=x_key,
            target=target,
            want_target=False,
            id_key=id_key,
            chunk_rows=chunk_rows,
            header=header,
            info=info,
        ):
            yield chunk.ids, torch.from_numpy(chunk.x.astype(np.float32))
        return
    source = str(path)
    x = _array_features(path, source, kind, x_key)
    n = len(x)
    for start in range(0, n, chunk_rows):
        part = x[start : start + chunk_rows]
        t = part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))
        t = t.to(torch.float32)
        check_finite(t, source, "features", offset=start)
        if info is not None:
            info.format, info.rows = kind, start + len(t)
        yield list(range(start, start + len(t))), t


def _array_features(
    path: str | Path, source: str, kind: str, x_key: str | Sequence[str] | None
) -> Any:
    """The features of an array file: memory-mapped (.npy), sliced (.safetensors) or whole."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{path}: file not found")
    if not (x_key is None or isinstance(x_key, str)):
        raise BadInputError(f"{source}: x_key must be one key name for {kind} files")
    if kind == "npy":
        x: Any = load_npy(p, source, mmap=True)
        if x.dtype.kind not in "biuf":
            raise BadInputError(f"{source}: expected a numeric array, got dtype {x.dtype}")
    elif kind == "safetensors":
        x = safetensors_slicer(p, x_key or "x", source)
    else:
        x, _ = read_arrays(p, kind, x_key, None, source=source)
    return x
