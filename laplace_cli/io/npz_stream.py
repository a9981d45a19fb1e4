"""An NPZ file written batch by batch: arrays of any length with bounded memory, atomically.

`NpzStream.append` adds rows to each named array; the rows go to one temporary raw file per
array (next to the destination), so memory holds one batch. `NpzStream.close` writes the
``.npz`` (a zip of ``.npy`` members, uncompressed, as `numpy.savez`) into a temporary file,
copying each array in blocks behind its ``.npy`` header, and renames it onto the destination
(`io.atomic.atomic_write`). Until then the destination is untouched; `abort` (or an error in
`close`) removes every temporary file. `numpy.load(path)` reads the result.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.atomic import atomic_write

_BLOCK = 1 << 22  # bytes copied at a time into the zip member


class NpzStream:
    """Named arrays grown along their first axis, written as one ``.npz`` on `close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        folder = self.path.parent if str(self.path.parent) else Path(".")
        try:
            self._tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{self.path.name}."))
        except OSError as exc:
            raise BadInputError(f"{self.path}: cannot write here ({exc.strerror or exc})") from exc
        self._files: dict[str, Any] = {}
        self._layout: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self.rows: dict[str, int] = {}

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Add rows: every array's trailing shape and dtype must match its earlier batches."""
        for key, value in arrays.items():
            arr = np.ascontiguousarray(value)
            layout = (arr.dtype, tuple(arr.shape[1:]))
            if key not in self._files:
                self._files[key] = open(self._tmp / f"{len(self._files)}.raw", "wb")  # noqa: SIM115
                self._layout[key] = layout
                self.rows[key] = 0
            elif self._layout[key] != layout:
                raise ValueError(f"npz array {key!r}: batch of {layout} after {self._layout[key]}")
            self._files[key].write(arr.tobytes())
            self.rows[key] += arr.shape[0]

    def close(self) -> None:
        """Write the ``.npz`` atomically and remove the temporary files."""
        try:
            for f in self._files.values():
                f.close()
            with atomic_write(self.path, "wb") as out:
                with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for i, key in enumerate(self._files):
                        self._write_member(zf, key, self._tmp / f"{i}.raw")
        finally:
            self.abort()

    def _write_member(self, zf: zipfile.ZipFile, key: str, raw: Path) -> None:
        dtype, trailing = self._layout[key]
        header = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": (self.rows[key], *trailing),
        }
        with zf.open(f"{key}.npy", "w", force_zip64=True) as member, open(raw, "rb") as src:
            np.lib.format.write_array_header_2_0(member, header)
            shutil.copyfileobj(src, member, _BLOCK)

    def abort(self) -> None:
        """Remove the temporary files (the destination is left as it was)."""
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
