"""IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in big-endian C order. Images and labels
live in two files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``), so a spec
names the labels file in ``y:`` as it does for ``.npy`` pairs.

The header is checked before anything is allocated: a header declaring more values than the
file holds (or than :data:`MAX_IDX_BYTES`) is refused, never read into a huge buffer; a
gzip stream is read to at most the declared size plus one byte.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from laplace_cli.core.errors import BadInputError

__all__ = ["IDX_DTYPES", "MAX_IDX_BYTES", "is_gzip", "read_idx", "read_idx_header"]

IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type codes to numpy dtypes (big-endian, as stored)."""

MAX_IDX_BYTES = 1 << 34
"""Largest data part (16 GiB) an IDX header may declare; larger is refused as hostile."""

_MAX_DIMS = 16


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def _parse_header(fh: BinaryIO, source: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, header_bytes)`` from the start of an open IDX stream."""
    magic = fh.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise BadInputError(
            f"{source}: not an IDX file (the first two bytes must be zero; got "
            f"{magic[:4].hex() or 'an empty file'}); for other data use .npz / .npy / .csv"
        )
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise BadInputError(
            f"{source}: unknown IDX type code 0x{code:02X}; expected one of {codes}"
        )
    if not 1 <= ndim <= _MAX_DIMS:
        raise BadInputError(
            f"{source}: IDX header declares {ndim} dimensions; expected 1 to {_MAX_DIMS}"
        )
    raw = fh.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise BadInputError(f"{source}: truncated IDX header ({ndim} dimensions declared)")
    shape = struct.unpack(f">{ndim}I", raw)
    return shape, IDX_DTYPES[code], 4 + 4 * ndim


def read_idx_header(
    path: str | Path, source: str | None = None
) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an IDX file from its header alone (for the spec's pre-flight checks).

    Raises:
        BadInputError: Not an IDX file, an unknown type code, a truncated header.
    """
    src = source or str(path)
    try:
        with _open(Path(path)) as fh:
            shape, dtype, _ = _parse_header(fh, src)
    except (OSError, EOFError, zlib.error) as err:
        raise BadInputError(f"{src}: unreadable IDX file ({type(err).__name__}: {err})") from None
    return shape, dtype


def read_idx(
    path: str | Path,
    source: str | None = None,
    rows: tuple[int | None, int | None] | None = None,
) -> np.ndarray:
    """Read an IDX file (``.gz`` or not) into an array of native byte order.

    Args:
        path: The file; gzip-compressed files are recognised by their first two bytes.
        source: Name for messages (default: the path).
        rows: ``(start, stop)`` along the first axis (None: that end open). Only the bytes up
            to ``stop`` are read (decompressed), so the first 10,000 of 60,000 images cost a
            sixth; the check that the file holds nothing after its data is then skipped.

    Returns:
        The array, shape as declared by the header, dtype ``uint8`` / ``int8`` / ``int16`` /
        ``int32`` / ``float32`` / ``float64``.

    Raises:
        BadInputError: Not an IDX file, an unknown type code, a header declaring more data than
            :data:`MAX_IDX_BYTES` or than the file holds, trailing bytes after the data, or
            ``rows`` reaching past the declared rows.
    """
    src = source or str(path)
    p = Path(path)
    try:
        with _open(p) as fh:
            shape, dtype, _ = _parse_header(fh, src)
            row_bytes = dtype.itemsize
            for d in shape[1:]:
                row_bytes *= d
            nbytes = shape[0] * row_bytes
            if nbytes > MAX_IDX_BYTES:
                raise BadInputError(
                    f"{src}: IDX header declares shape {shape} ({nbytes} bytes), more than the "
                    f"{MAX_IDX_BYTES} bytes accepted; a corrupt or hostile header"
                )
            start, stop = _row_range(rows, shape[0], src)
            if rows is None:
                data = fh.read(nbytes + 1)  # one byte more: trailing data is an error too
                want = nbytes
            else:
                fh.seek(fh.tell() + start * row_bytes)  # gzip: decompresses and drops
                want = (stop - start) * row_bytes
                data = fh.read(want)
    except (OSError, EOFError, zlib.error) as err:
        raise BadInputError(f"{src}: unreadable IDX file ({type(err).__name__}: {err})") from None
    if len(data) != want:
        what = "fewer" if len(data) < want else "more"
        raise BadInputError(
            f"{src}: IDX header declares shape {shape} ({nbytes} bytes of data) but the file "
            f"holds {what}; a truncated or corrupt file"
        )
    out_shape = (stop - start, *shape[1:])
    # A writable copy in native byte order (frombuffer's view is read-only and big-endian).
    return np.frombuffer(data, dtype=dtype).reshape(out_shape).astype(dtype.newbyteorder("="))


def _row_range(rows: tuple[int | None, int | None] | None, n: int, src: str) -> tuple[int, int]:
    if rows is None:
        return 0, n
    start = 0 if rows[0] is None else rows[0]
    stop = n if rows[1] is None else rows[1]
    if max(start, stop) > n:
        raise BadInputError(
            f"{src}: rows {rows[0] if rows[0] is not None else ''}:"
            f"{rows[1] if rows[1] is not None else ''} reaches past the file's {n} rows; lower "
            f"it (rows: 0:{n} is the whole file)"
        )
    return start, max(start, stop)
