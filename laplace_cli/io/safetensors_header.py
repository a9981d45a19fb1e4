"""The safetensors container of a posterior file: its header, read and checked before anything
is allocated, and its canonical byte order on write.

Split out of `laplace_cli.io.posterior_file`, which re-exports the public names; the
error helpers here (`bad_file`, `join_problems`, `clip`) are shared by the metadata and layout
checks.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laplace_cli.core.errors import BadInputError, LaplaceCliError

MAX_HEADER_BYTES = 100_000_000
"""Headers larger than this are refused before reading them (safetensors' own limit)."""
# Bytes per element of every safetensors dtype this reader accepts. Sub-byte and exotic dtypes
# (F4, F6_*, F8_E8M0, complex) are refused: no posterior tensor uses them.
_DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class SafetensorsHeader:
    """A checked safetensors header.

    Attributes:
        header_len: N, the length of the JSON header in bytes.
        metadata: The raw `__metadata__` (str -> str), empty when absent.
        entries: Tensor name -> dtype, shape and byte range within the data section.
        file_size: Size of the whole file in bytes (8 + N + data).
    """

    header_len: int
    metadata: dict[str, str]
    entries: dict[str, TensorEntry] = field(default_factory=dict)
    file_size: int = 0


def bad_file(source: object, problem: str) -> BadInputError:
    return BadInputError(f"{source}: {problem}")


def join_problems(source: object, problems: list[str], error: type[LaplaceCliError]) -> None:
    """Raise one error listing every problem (one line when there is only one)."""
    if not problems:
        return
    if len(problems) == 1:
        raise error(f"{source}: {problems[0]}")
    listed = "\n".join(f"  - {p}" for p in problems)
    raise error(f"{source}: {len(problems)} problems:\n{listed}")


def clip(obj: Any, n: int = 80) -> str:
    """`repr(obj)`, cut short: values from a corrupt file can be arbitrarily long."""
    text = repr(obj)
    return text if len(text) <= n else text[:n] + "..."


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and check a safetensors header without reading (or allocating) the tensor data.

    Layout: 8 bytes little-endian u64 N; N bytes of UTF-8 JSON (an object mapping tensor names
    to `{"dtype", "shape", "data_offsets": [begin, end]}` plus an optional `__metadata__`
    str -> str object); then the data section, which the offsets (relative to its start) must
    cover exactly, without gaps or overlaps, each range holding `prod(shape) * itemsize` bytes.

    Args:
        path: The file.

    Returns:
        The checked header.

    Raises:
        BadInputError: The file is missing, unreadable or not a well-formed safetensors file;
            the message names the file and the problem.
    """
    path = Path(path)
    size, n, raw = _read_header_bytes(path)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad_file(path, f"header is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise bad_file(path, f"header must be a JSON object, got {type(header).__name__}")

    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise bad_file(path, "header __metadata__ must map strings to strings")

    data_size = size - 8 - n
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        entries[name] = _check_entry(path, name, info, data_size)

    _check_coverage(path, entries, data_size)
    return SafetensorsHeader(header_len=n, metadata=dict(metadata), entries=entries, file_size=size)


def _read_header_bytes(path: Path) -> tuple[int, int, bytes]:
    """The file size, the header length N and the N header bytes, checked before reading."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise bad_file(
                    path,
                    f"not a safetensors file: {size} bytes, shorter than the 8-byte header length",
                )
            (n,) = struct.unpack("<Q", f.read(8))
            # Check N against the file size and a fixed cap *before* reading N bytes, so that a
            # corrupt length (say 2**60) cannot make us allocate.
            if n > MAX_HEADER_BYTES:
                raise bad_file(
                    path,
                    f"header length {n} is absurd (limit {MAX_HEADER_BYTES} bytes); the file is corrupt or not safetensors",
                )
            if n > size - 8:
                raise bad_file(
                    path,
                    f"header length {n} exceeds the file size ({size} bytes); the file is truncated or corrupt",
                )
            raw = f.read(n)
    except FileNotFoundError:
        raise bad_file(path, "no such file") from None
    except IsADirectoryError:
        raise bad_file(path, "is a folder, expected a posterior file") from None
    except OSError as exc:
        raise bad_file(path, f"cannot read ({exc.strerror or exc})") from None
    if len(raw) != n:
        raise bad_file(path, "file changed while reading its header")
    return size, n, raw


def _check_coverage(path: Path, entries: dict[str, TensorEntry], data_size: int) -> None:
    """The tensors' byte ranges cover the data section exactly."""
    # The data section must be covered exactly: sorted by start, each range begins where the
    # previous ended, the first at 0 and the last at the end of the file.
    pos = 0
    for name, e in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin < pos:
            raise bad_file(
                path,
                f"tensor {name!r}: byte range [{e.begin}, {e.end}) overlaps the previous tensor",
            )
        if e.begin > pos:
            raise bad_file(path, f"tensor {name!r}: gap in the data section before byte {e.begin}")
        pos = e.end
    if pos != data_size:
        raise bad_file(
            path,
            f"data section is {data_size} bytes but the tensors cover {pos}; the file is truncated or has trailing bytes",
        )


def _check_entry(path: Path, name: str, info: Any, data_size: int) -> TensorEntry:
    """Check one header entry: known dtype, integer shape, offsets inside the data section."""
    if not isinstance(info, dict):
        raise bad_file(path, f"tensor {name!r}: header entry must be an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPE_SIZES:
        raise bad_file(path, f"tensor {name!r}: unsupported dtype {clip(dtype)}")
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        raise bad_file(
            path,
            f"tensor {name!r}: shape must be a list of non-negative integers, got {clip(shape)}",
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o) for o in offsets):
        raise bad_file(
            path, f"tensor {name!r}: data_offsets must be [begin, end], got {clip(offsets)}"
        )
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise bad_file(
            path,
            f"tensor {name!r}: data_offsets [{begin}, {end}] lie outside the {data_size}-byte data section; the file is truncated or corrupt",
        )
    nbytes = math.prod(shape) * _DTYPE_SIZES[dtype]
    if nbytes != end - begin:
        raise bad_file(
            path,
            f"tensor {name!r}: {dtype} of shape {shape} needs {nbytes} bytes, its byte range holds {end - begin}",
        )
    return TensorEntry(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def canonical_header(data: bytes) -> bytes:
    """Rewrite a safetensors blob's header in a fixed order, leaving the data section as is.

    `safetensors.torch.save` emits `__metadata__` in hash-map order, which differs from run to
    run; a posterior should be byte-for-byte reproducible (golden tests, content hashes, diffs).
    The canonical header lists `__metadata__` first with its keys sorted, then the tensors in
    data order, as compact JSON padded with spaces to a multiple of 8 bytes (as safetensors
    does, so that the data section stays 8-byte aligned). Data offsets are relative to the data
    section, so they do not change.
    """
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None) or {}
    ordered: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    for name, info in sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"][0], kv[0])):
        ordered[name] = info
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]
