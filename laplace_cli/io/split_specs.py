"""Dataset specs, one split: its keys, the :class:`SplitSpec` a validated split becomes, and
the validation of one ``splits.<name>`` entry (source, format, keys, rows).

Split out of :mod:`laplace_cli.io.dataset_specs` (the whole spec), which re-exports these names.
The spec format is documented in ``docs/data-spec.md``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laplace_cli.core.paths import user_path
from laplace_cli.io.data_formats import format_from_name
from laplace_cli.io.spec_schema import DATA_SPEC_SECTIONS, keys_of
from laplace_cli.io.tabular import (
    FORMATS,
    SUFFIX_FORMATS,
    TABLE_FORMATS,
)

SPLIT_KEYS = keys_of(DATA_SPEC_SECTIONS, "splits.<name>")


@dataclass
class SplitSpec:
    """One split: a data file, a callable returning a Dataset, or (later) a text file.

    Attributes:
        name: The split's name (``train``, ``val``, ...).
        path: The data file, resolved against the YAML file's folder.
        format: ``npz``, ``npy``, ``pt``, ``safetensors``, ``idx``, ``csv``, ``tsv`` or
            ``jsonl``.
        x: Feature key, or a list of feature columns (CSV / JSONL).
        y: Target key / column (``y:`` or ``target:``); for ``npy`` / ``idx``, the resolved
            path of a second file of that format holding the targets.
        id: Id column / key (CSV / JSONL), never a feature.
        header: CSV / TSV: whether the first line is a header (None: a header unless every
            field of it is a number or empty; without one, columns are named "0", "1", ...).
        callable: ``pkg.module:function`` or ``file.py:function`` returning a Dataset.
        kwargs: Keyword arguments for the callable.
        text: Text field (text datasets; not built yet).
        tokenizer: Tokenizer folder or name (text datasets).
        max_length: Token limit (text datasets).
        rows: ``(start, stop)`` of a ``rows: start:stop`` selection (None: that end open), or
            None for every row.
        scale: Factor the features are multiplied by after reading.
    """

    name: str
    path: Path | None = None
    format: str | None = None
    x: str | list[str] | None = None
    y: str | Path | None = None
    id: str = "id"
    header: bool | None = None
    callable: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    rows: tuple[int | None, int | None] | None = None
    scale: float = 1.0

    @property
    def kind(self) -> str:
        """``"callable"``, ``"text"`` or ``"file"``."""
        if self.callable is not None:
            return "callable"
        if self.text is not None or self.tokenizer is not None:
            return "text"
        return "file"


def short_repr(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})" if not isinstance(value, str) else text


def unknown_keys(mapping: Mapping[Any, Any], allowed: Sequence[str], at: str, err: Any) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
            err(f"{at}{key}", f"unknown key{hint}")


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate_split(name: str, raw: Any, base: Path, err: Any) -> SplitSpec | None:
    if not isinstance(raw, Mapping):
        err("", f"expected a mapping with `path:` or `callable:`, got {short_repr(raw)}")
        return None
    problems = 0

    def bad(key: str, message: str) -> None:
        nonlocal problems
        problems += 1
        err(key, message)

    unknown_keys(raw, SPLIT_KEYS, "", bad)
    path = _split_string(raw, bad, "path", "a file path (string)")
    call = _split_string(raw, bad, "callable", "'pkg.module:function' or 'file.py:function'")
    text = _split_string(raw, bad, "text", "a field name (string)")
    tokenizer = _split_string(raw, bad, "tokenizer", "a tokenizer folder or name (string)")
    fmt_raw = _split_string(raw, bad, "format", f"one of {', '.join(FORMATS)}")
    id_key = _split_string(raw, bad, "id", "a column name (string)") or "id"
    y_val = _split_string(raw, bad, "y", "a key or column name (string)")
    target = _split_string(raw, bad, "target", "a key or column name (string)")
    if y_val is not None and target is not None:
        bad("target", "give either y: or target: (they mean the same), not both")
    y_key = y_val if y_val is not None else target

    _check_split_source(raw, bad, path, call)
    kwargs = _split_kwargs(raw, bad, call)
    max_length = raw.get("max_length")
    if max_length is not None and not positive_int(max_length):
        bad("max_length", f"expected a positive integer, got {short_repr(max_length)}")
        max_length = None
    is_text = "text" in raw or "tokenizer" in raw
    if not is_text and "max_length" in raw:
        bad("max_length", "only used with text: / tokenizer:")

    fmt = _split_format(bad, fmt_raw, path, is_text)
    x = _split_x(raw, bad, fmt)
    _check_split_keys(raw, bad, call, fmt, x)
    header = _split_header(raw, bad, fmt, is_text)
    rows, scale = _split_rows_scale(raw, bad, call is not None or "callable" in raw or is_text)

    y_out: str | Path | None = y_key
    if fmt == "npy" and y_key is not None:
        if not y_key.lower().endswith(".npy"):
            bad(
                "y" if y_val is not None else "target",
                f"for a .npy split, expected the path of a second .npy with the targets, got {y_key!r}",
            )
        else:
            y_out = resolve_relative(base, y_key)
    if fmt == "idx" and y_key is not None:
        # Any name: IDX label files are named like `train-labels-idx1-ubyte.gz`.
        y_out = resolve_relative(base, y_key)

    if problems:
        return None
    split = SplitSpec(
        name=name,
        path=resolve_relative(base, path) if path is not None else None,
        format=fmt,
        x=x,
        y=y_out,
        id=id_key,
        header=header,
        callable=call,
        kwargs=dict(kwargs or {}),
        text=text,
        tokenizer=tokenizer,
        max_length=max_length,
        rows=rows,
        scale=scale,
    )
    # Which key named the targets (`y:` or `target:`), for the file checks' messages; not a
    # field: the spec's keys are exactly the schema's (tests/io/test_schema_docs.py).
    split.y_key_name = "target" if target is not None else "y"  # type: ignore[attr-defined]
    return split


def _split_string(raw: Mapping[str, Any], bad: Any, key: str, what: str) -> str | None:
    """The non-empty string at ``raw[key]``, or None (absent, or wrong: reported to ``bad``)."""
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        bad(key, f"expected {what}, got {short_repr(value)}")
        return None
    return value


def _check_split_source(
    raw: Mapping[str, Any], bad: Any, path: str | None, call: str | None
) -> None:
    """Exactly one of ``path:`` and ``callable:``, the latter naming a function."""
    if call is not None and ":" not in call:
        bad("callable", f"expected 'pkg.module:function' or 'file.py:function', got {call!r}")
    if path is None and call is None and "path" not in raw and "callable" not in raw:
        bad(
            "",
            "expected `path:` (a data file) or `callable:` (a function returning a Dataset), got neither",
        )
    if path is not None and call is not None:
        bad("callable", "give either path: or callable:, not both")


_ROWS = re.compile(r"^\s*(\d*)\s*:\s*(\d*)\s*$")


def _split_rows_scale(
    raw: Mapping[str, Any], bad: Any, not_a_file: bool
) -> tuple[tuple[int | None, int | None] | None, float]:
    """``rows:`` as ``(start, stop)`` and ``scale:`` (a positive finite number; default 1)."""
    rows: tuple[int | None, int | None] | None = None
    value = raw.get("rows")
    if value is not None:
        match = _ROWS.match(value) if isinstance(value, str) else None
        if match is None:
            bad("rows", f"expected 'start:stop' such as '0:10000', got {short_repr(value)}")
        else:
            start = int(match[1]) if match[1] else None
            stop = int(match[2]) if match[2] else None
            if start is not None and stop is not None and stop <= start:
                bad("rows", f"expected start < stop, got {value!r} (no rows)")
            else:
                rows = (start, stop)
    scale = raw.get("scale", 1.0)
    ok = isinstance(scale, (int, float)) and not isinstance(scale, bool)
    if not ok or not math.isfinite(scale) or scale <= 0:
        bad(
            "scale",
            f"expected a positive number such as 0.00392156862745098, got {short_repr(scale)}",
        )
        scale = 1.0
    for key in ("rows", "scale"):
        if key in raw and not_a_file:
            bad(key, "only for data files (path:), not with callable: or text:")
    return rows, float(scale)


def _split_kwargs(raw: Mapping[str, Any], bad: Any, call: str | None) -> Any:
    """The ``kwargs:`` of a ``callable:`` split (None when absent or wrong)."""
    kwargs = raw.get("kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            bad("kwargs", f"expected a mapping of keyword arguments, got {short_repr(kwargs)}")
            kwargs = None
        elif call is None and "callable" not in raw:
            bad("kwargs", "only used with callable:")
    return kwargs


def _split_format(bad: Any, fmt_raw: str | None, path: str | None, is_text: bool) -> str | None:
    """The file format: ``format:`` (with its aliases) or the path's suffix."""
    fmt: str | None = None
    if fmt_raw is not None:
        key = fmt_raw.lower().lstrip(".")
        key = {"ndjson": "jsonl", "pth": "pt", "st": "safetensors"}.get(key, key)
        if key not in FORMATS:
            bad("format", f"expected one of {', '.join(FORMATS)}, got {fmt_raw!r}")
        else:
            fmt = key
    elif path is not None:
        fmt = format_from_name(path)
        if fmt is None and not is_text:
            bad(
                "path",
                f"expected a data file ending in {' '.join(SUFFIX_FORMATS)} or an IDX name "
                f"(*-idx3-ubyte.gz) (or set format:), got {path!r}",
            )
    return fmt


def _split_x(raw: Mapping[str, Any], bad: Any, fmt: str | None) -> str | list[str] | None:
    """The ``x:`` key name, or list of columns (tables only)."""
    x_raw = raw.get("x")
    x: str | list[str] | None = None
    if x_raw is not None:
        if isinstance(x_raw, str) and x_raw.strip():
            x = x_raw
        elif isinstance(x_raw, list) and x_raw and all(isinstance(c, str) and c for c in x_raw):
            if fmt is not None and fmt not in TABLE_FORMATS:
                bad(
                    "x",
                    f"a list of columns is for CSV / JSONL files; {fmt} files take one key name",
                )
            else:
                x = list(x_raw)
        else:
            bad("x", f"expected a key name or a list of column names, got {short_repr(x_raw)}")
    return x


def _check_split_keys(
    raw: Mapping[str, Any],
    bad: Any,
    call: str | None,
    fmt: str | None,
    x: str | list[str] | None,
) -> None:
    """Keys that the split's kind (callable, .npy, non-table file) does not use."""
    if call is not None:
        for key in ("x", "y", "target", "id", "format", "header"):
            if key in raw:
                bad(key, "not used with callable: (the Dataset yields (x, y) itself)")
    if fmt in ("npy", "idx") and x is not None:
        bad("x", f"a .{fmt} file holds one array (the features); it has no keys")
    if fmt is not None and fmt not in TABLE_FORMATS and "id" in raw:
        bad("id", "id columns exist only in CSV / JSONL files")


def _split_header(raw: Mapping[str, Any], bad: Any, fmt: str | None, is_text: bool) -> bool | None:
    """``header:`` of a CSV / TSV split (None when absent or wrong)."""
    header = raw.get("header")
    if header is not None and not isinstance(header, bool):
        bad("header", f"expected true or false, got {short_repr(header)}")
        header = None
    elif header is not None and fmt is not None and fmt not in ("csv", "tsv"):
        bad("header", f"only for CSV / TSV files; this split is {fmt}")
    elif header is not None and is_text:
        bad("header", "not used with text: (a text table names its text column in its header)")
    return header


def resolve_relative(base: Path, path: str) -> Path:
    p = user_path(path)
    return p if p.is_absolute() else base / p
