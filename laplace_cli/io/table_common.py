"""Shared pieces of the text table readers (`csv_tables`, `jsonl_tables`): the chunk and
read-accounting types and the chunk finisher.

Split out of `laplace_cli.io.text_tables`, which re-exports the public names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from laplace_cli.io.data_formats import check_finite


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


def is_numeric_cell(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


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
        numeric = [n for n in self.header or [] if n and is_numeric_cell(n)]
        if not numeric:
            return None
        shown = ", ".join(n[:12] for n in numeric[:3]) + (", ..." if len(numeric) > 3 else "")
        return (
            f"the header row has numeric names ({shown}); if the first line is data, "
            "pass --no-header (spec: header: false)"
        )


def finish_chunk(
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
