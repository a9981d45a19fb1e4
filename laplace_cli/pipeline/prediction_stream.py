"""The rows of `laplace predict`: where the chunks come from, who predicts them, how they are written.

- `prediction_chunks`: numbered `(ids, x, start)` chunks of `--input` or of a split of `--data`,
  with a `TableInfo` that counts the rows read;
- `predicted_batches`: the rows of those chunks, predicted here or dealt round-robin to the
  processes of a torchrun and gathered on rank 0 in input order;
- `write_rows`: the batches streamed to a text stream, one write per row; a full disk leaves
  only whole rows behind (`RowsNotWritten`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from laplace_cli.io.datasets import load_dataset_spec
from laplace_cli.io.tabular import TableInfo, iter_feature_chunks
from laplace_cli.io.writers import RowWriter
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.pipeline import distributed
from laplace_cli.pipeline.predict_stage import (
    PredictOptions,
    iter_prediction_rows,
    loader_chunks,
    number_chunks,
)
from laplace_cli.pipeline.stage_support import dense_labels, split_loader


def prediction_chunks(
    la: Laplace,
    input_: str | Path | None,
    data: str | Path | None,
    split: str,
    x_key: str | None,
    header: bool | None,
    batch_size: int | None,
) -> tuple[Iterator[tuple[list[Any], Any, int]], TableInfo, int | None]:
    """`(chunks, info, total)`: the inputs of `--input` (a file, or - for stdin) or of a split
    of `--data`, in chunks of `batch_size` rows (256 by default), numbered with the global
    index of their first row; `info.rows` counts the rows read, `total` is the number of
    chunks when known (a split), for the progress bar."""
    if input_ is not None:
        keys = [k.strip() for k in x_key.split(",")] if x_key and "," in x_key else x_key
        info = TableInfo()  # rows read, and what the reader made of a CSV's first line
        chunks = iter_feature_chunks(
            input_, x_key=keys, chunk_rows=batch_size or 256, header=header, info=info
        )
        total = None
    else:
        spec = load_dataset_spec(data)
        loader = split_loader(
            spec,
            split,
            la.likelihood,
            batch_size,
            require_labels=False,
            label_maps=dense_labels(la, spec),  # (N, *S) label maps of a dense-output model
        )
        info = TableInfo()
        chunks = count_rows(loader_chunks(loader), info)
        total = len(loader)
    # Numbered before they are dealt to processes: a row's Monte Carlo stream is seeded by its
    # global index, so its scores do not depend on --batch-size or the number of processes.
    return number_chunks(chunks), info, total


def count_rows(chunks: Iterable[Any], info: Any) -> Iterator[Any]:
    """The chunks unchanged, counting their rows into `info.rows`."""
    for chunk in chunks:
        info.rows += len(chunk[0])
        yield chunk


def predicted_batches(
    la: Laplace,
    chunks: Iterable[Any],
    options: PredictOptions,
    source: str,
    ctx: distributed.DistContext | None,
) -> Iterator[list[dict[str, Any]]] | None:
    """The rows of each chunk, batch by batch, in input order; None on a rank other than 0.

    Under torchrun each rank predicts its chunks (chunk i on rank i mod W) and rank 0 gathers
    them round by round, which is the input order, and writes them as one process would; the
    other ranks take part in the gathering here and have nothing to write."""
    if ctx is None:
        return iter_prediction_rows(la, chunks, options, source)
    mine = iter_prediction_rows(la, distributed.round_robin(chunks, ctx), options, source)
    batches_all = distributed.gather_rounds(mine, ctx)
    if not ctx.is_main:
        for _ in batches_all:
            pass
        return None
    return batches_all


class RowsNotWritten(Exception):
    """The rows could not all be written (disk full, quota, file size limit, I/O error).

    `rows_kept`: the whole rows left in place once the file was cut back to the end of the last
    whole batch; None when it could not be (a pipe, or an offset that could not be read)."""

    def __init__(self, error: OSError, rows_kept: int | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.rows_kept = rows_kept


def write_rows(
    stream: Any,
    batches: Iterable[list[dict[str, Any]]],
    fmt: str,
    fields: list[str] | None,
    *,
    single_output: bool,
    output: Path | None,
) -> int:
    """Write the batches of rows to `stream` (the file `output` when given, closed here, else
    stdout) and return the number of rows written.

    Rows are streamed, not written atomically: a consumer may read them as they come, and a
    failure half way leaves only whole rows behind (each row is one write). A failed write
    raises `RowsNotWritten` once a regular file is cut back to its last whole batch; a broken
    pipe (`| head`) raises its `OSError` unchanged."""
    written, rows_done = stream_position(stream), 0  # end of the last whole, flushed batch
    counted = CountingStream(stream)
    failed: OSError | None = None
    try:
        writer = RowWriter(counted, fmt, fields, single_output=single_output)
        for rows in batches:
            writer.write_batch(rows)
            position, sent = stream_position(stream), counted.take()
            if position is not None and written is not None and position < written + sent:
                # An unbuffered stdout (PYTHONUNBUFFERED) drops the tail of a short write
                # on a full disk without raising: the rows did not all reach the file.
                raise OSError(errno.ENOSPC, "short write, the device took only part of the rows")
            written, rows_done = position, writer.rows_written
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise  # `| head`: exit 0 (see cli/errors.py)
        failed = exc  # disk full, quota, file size limit, I/O error
    finally:
        if output is not None:
            try:
                stream.close()
            except OSError as exc:
                failed = failed or exc
    if failed is not None:
        cut = _cut_to_whole_rows(stream, output, written)
        raise RowsNotWritten(failed, rows_done if cut else None) from failed
    return writer.rows_written


def _cut_to_whole_rows(stream: Any, output: Path | None, written: int | None) -> bool:
    """Cut a regular file back to `written` bytes, the end of its last whole row: whether it was.

    A full disk can fail a write half way through a row (the OS takes what fits); the rows of
    the batches flushed before the failure are kept, the partial batch is removed."""
    if written is None:
        return False
    with contextlib.suppress(OSError, ValueError):
        if output is not None:
            os.truncate(output, written)
            return True
        if stream is sys.__stdout__:
            os.ftruncate(stream.fileno(), written)
            return True
    return False


class CountingStream:
    """A text stream that counts the bytes given to it, to check them against the file offset."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        self.pending = 0

    def write(self, text: str) -> int:
        self.pending += len(text.encode(self.encoding, errors="replace"))
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def take(self) -> int:
        """The bytes written since the last call."""
        n, self.pending = self.pending, 0
        return n


def stream_position(stream: Any) -> int | None:
    """The byte offset of a regular file (flushed); None for a pipe, terminal or /dev/null."""
    try:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return None  # /dev/null is seekable but its offset never moves
        return stream.tell()
    except (OSError, ValueError, AttributeError):  # no fd (a test runner's stdout)
        return None
