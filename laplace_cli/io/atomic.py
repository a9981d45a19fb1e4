"""Atomic file writes: a temporary file in the destination folder, fsynced, renamed into place.

A reader (or a crash) never sees a half-written file: either the old file or the complete new
one is at `path`. The temporary file lives in the same folder because `os.replace` is atomic
only within one file system.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from laplace_cli.core.errors import BadInputError

__all__ = ["atomic_write", "atomic_write_bytes"]


def _target_mode(path: Path) -> int:
    """The permission bits the new file should get.

    `mkstemp` creates files with mode 0o600; a plain `open` would give 0o666 minus the umask,
    and replacing a file should keep that file's mode. Match those, not mkstemp's.
    """
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)  # the only portable way to read the umask is to set it
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _cannot_write(path: Path | str | os.PathLike[str]) -> Iterator[None]:
    """Turn an OS error of our own write steps (disk full, permissions) into a one-line error."""
    try:
        yield
    except OSError as exc:
        raise BadInputError(f"{path}: cannot write ({exc.strerror or exc})") from exc


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; on success fsync it and rename it onto `path`.

    If the body raises (or the fsync / rename fails), the temporary file is removed, any
    existing file at `path` is left untouched, and the exception propagates.

    Args:
        path: Destination file.
        mode: `"wb"` (default) or `"w"` (text; `encoding` defaults to UTF-8).
        encoding: Text encoding for mode `"w"`.

    Yields:
        The open temporary file.

    Raises:
        BadInputError: The destination folder does not exist or is not writable, or writing,
            syncing or renaming failed (disk full, permissions). Errors raised by the body
            itself propagate unchanged.

    Example:
        >>> with atomic_write("report.json", "w") as f:  # doctest: +SKIP
        ...     f.write("{}")
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise BadInputError(f"{path}: cannot write here ({exc.strerror or exc})") from exc
    tmp = Path(tmp_name)
    try:
        if mode == "w" and encoding is None:
            encoding = "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            with _cannot_write(path):
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points at it
        with _cannot_write(path):
            os.chmod(tmp, _target_mode(path))
            os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave `.name.xxxx.tmp` litter behind.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(folder)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_write`).

    Args:
        path: Destination file.
        data: The complete new content.
    """
    with atomic_write(path, "wb") as f, _cannot_write(path):
        f.write(data)
