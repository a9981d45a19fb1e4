"""Data file formats shared by the array and table readers: names, detection from the suffix,
and the finiteness check that names the first bad row.

Split out of `laplace_cli.io.tabular`, which re-exports the public names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from laplace_cli.core.errors import BadInputError

SUFFIX_FORMATS = {
    ".npz": "npz",
    ".npy": "npy",
    ".pt": "pt",
    ".pth": "pt",
    ".safetensors": "safetensors",
    ".st": "safetensors",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".idx": "idx",
}
ARRAY_FORMATS = ("npz", "npy", "pt", "safetensors", "idx")
TABLE_FORMATS = ("csv", "tsv", "jsonl")
FORMATS = ARRAY_FORMATS + TABLE_FORMATS
TARGET_NAMES = ("y", "label", "target", "labels", "targets")
"""Column / key names taken as the target when none is named (and ignored as features)."""
DEFAULT_CHUNK_ROWS = 1024


# MNIST-style names: train-images-idx3-ubyte, t10k-labels.idx1-ubyte, ... (`.gz` or not).
_IDX_NAME = re.compile(r"(^|[-_.])idx\d+(-ubyte)?$", re.IGNORECASE)


def format_from_name(path: str | Path) -> str | None:
    """The format a file name says (its suffix, or an IDX name such as ``*-idx3-ubyte.gz``).

    ``.gz`` is only understood for IDX files (``x.idx.gz``, ``train-images-idx3-ubyte.gz``);
    None when the name says nothing known.
    """
    name = Path(str(path)).name
    suffix = Path(name).suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    stem = name[:-3] if suffix == ".gz" else name
    if Path(stem).suffix.lower() == ".idx" or _IDX_NAME.search(stem):
        return "idx"
    return None


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    """The data format: ``fmt`` if given (validated), else from the file suffix.

    Raises:
        BadInputError: Unknown format or suffix.
    """
    if fmt is not None:
        key = str(fmt).lower().lstrip(".")
        key = {"ndjson": "jsonl", "pth": "pt", "st": "safetensors"}.get(key, key)
        if key not in FORMATS:
            raise BadInputError(
                f"{path}: unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}"
            )
        return key
    found = format_from_name(path)
    if found is None:
        suffix = Path(str(path)).suffix.lower()
        raise BadInputError(
            f"{path}: unknown data file type {suffix or '(no suffix)'!r}; expected one of "
            f"{' '.join(SUFFIX_FORMATS)}, an IDX name such as *-idx3-ubyte.gz "
            "(or give the format explicitly)"
        )
    return found


def did_you_mean(word: str, options: Iterable[str]) -> str:
    # Case-insensitive: a key `X` is the likely meaning of `x`.
    by_lower = {str(o).lower(): str(o) for o in options}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def file_not_found(at: str, path: Path | str) -> str:
    """`<at>: file not found: <path>`, with the Debian package to install when the path is in
    Debian's data-set tree (`/usr/share/datasets/<name>/...` comes from `dataset-<name>`)."""
    message = f"{at}: file not found: {path}"
    parts = Path(path).parts
    if len(parts) > 4 and parts[1:4] == ("usr", "share", "datasets"):
        message += f" (install it with: apt-get install dataset-{parts[4]})"
    return message


def row_where(row: int, line: int | None) -> str:
    return f"row {row} (line {line})" if line is not None else f"row {row}"


def check_finite(
    t: torch.Tensor, source: str, what: str, lines: Sequence[int] | None = None, offset: int = 0
) -> None:
    """Raise when ``t`` holds NaN or Inf, naming the first bad row (first axis) and the count.

    Args:
        t: Tensor of shape (N, ...).
        source: File name for the message.
        what: ``"features"`` / ``"targets"`` or the key name.
        lines: Line number of each row, for text files.
        offset: Row index of ``t[0]`` in the whole file.
    """
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return
    bad_rows = (~finite).reshape(t.shape[0], -1).any(dim=1).nonzero().flatten()
    first = int(bad_rows[0])
    value = t[first].reshape(-1)[(~finite[first]).reshape(-1)][0].item()
    more = f" ({len(bad_rows)} rows affected)" if len(bad_rows) > 1 else ""
    line = lines[first] if lines is not None else None
    raise BadInputError(
        f"{source}: {row_where(offset + first, line)}: non-finite value {value} in {what}{more}"
    )
