"""JSONL tables (one JSON object or array per line), parsed record by record into chunks.

Split out of `laplace_cli.io.text_tables`, which re-exports the public names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.data_formats import TARGET_NAMES, did_you_mean, row_where
from laplace_cli.io.table_common import TableChunk, TableInfo, finish_chunk


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


def jsonl_chunks(
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
        return finish_chunk(x, y, ids, start, lines, names, source, has_ids)
    return finish_chunk(x, None, ids, start, lines, names, source, has_ids)
