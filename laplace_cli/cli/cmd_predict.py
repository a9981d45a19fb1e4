"""`laplace predict`: one row per input with mean, variance and uncertainty scores."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
from pathlib import Path
from typing import Any

from laplace_cli.cli.common import (
    apply_threads,
    check_device,
    check_output_file,
    model_override,
    progress_for,
    require_file,
    require_input,
    resolve_format,
)
from laplace_cli.cli.options import (
    BatchSizeOpt,
    ColumnsOpt,
    DataOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    FormatOpt,
    HeaderOpt,
    InputOpt,
    IntervalOpt,
    JsonOpt,
    LinkApproxOpt,
    ModelFactoryOpt,
    ModelKwargsOpt,
    ModelOverrideOpt,
    OutputFileOpt,
    PosteriorOpt,
    PredTypeOpt,
    QuietOpt,
    SamplesOpt,
    SeedOpt,
    SplitOpt,
    ThreadsOpt,
    TrustCheckpointOpt,
    XKeyOpt,
)
from laplace_cli.core.errors import BadInputError

EXAMPLES = [
    "cat rows.csv | laplace predict -p post.st > rows.jsonl",
    "laplace predict -p post.st --input x.npz > rows.jsonl",
    "laplace predict -p post.st --data data.yaml --split test -o preds.csv",
    "torchrun --nproc-per-node 2 -m laplace_cli predict -p post.st --data data.yaml -o preds.csv",
]


def predict(
    posterior: PosteriorOpt,
    input_: InputOpt = None,
    data: DataOpt = None,
    split: SplitOpt = "test",
    x_key: XKeyOpt = None,
    columns: ColumnsOpt = None,
    header: HeaderOpt = None,
    output: OutputFileOpt = None,
    format_: FormatOpt = None,
    pred_type: PredTypeOpt = None,
    link_approx: LinkApproxOpt = None,
    samples: SamplesOpt = 100,
    interval: IntervalOpt = 0.95,
    model: ModelOverrideOpt = None,
    model_factory: ModelFactoryOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    trust_checkpoint: TrustCheckpointOpt = False,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    seed: SeedOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Stream one row per input: prediction, probabilities or mean, variances, uncertainty.

    Rows go to stdout (JSONL) unless -o names a file (.csv or .jsonl). Inputs come from
    --input (a file, or - for stdin) or from a split of --data; with neither, from stdin when
    it is a pipe or a file (CSV or JSONL, told apart by the first line). The rows read and
    written are counted on stderr (and in the --json summary).

    Under torchrun the chunks of --batch-size rows are dealt round-robin to the processes and
    rank 0 writes every row in input order.
    """
    require_file(posterior, "--posterior")
    if input_ is not None and data is not None:
        raise BadInputError("give one of --input FILE|- and --data (with --split), not both")
    if input_ is None and data is None:
        input_ = _stdin_or_hint()
    if json_ and output is None:
        raise BadInputError(
            "--json prints a summary on stdout, where the rows go without -o; "
            "give -o FILE for the rows"
        )
    if header is not None and data is not None:
        raise BadInputError(
            "--header / --no-header apply to --input; in the data spec, set header: on the split"
        )
    if input_ is not None:
        require_input(input_)
    if data is not None:
        require_file(data, "--data")
        if x_key is not None:
            raise BadInputError("--x-key applies to --input; the data spec names its own keys")
    if not 0.0 < interval < 1.0:
        raise BadInputError(f"--interval: expected a level in (0, 1), e.g. 0.95, got {interval}")
    check_output_file(output)
    fmt = resolve_format(format_, output)
    apply_threads(threads)
    check_device(device)
    spec = model_override(model, model_factory, model_kwargs, trust_checkpoint)

    from laplace_cli.pipeline import distributed

    ctx = distributed.context(device or "auto")
    if ctx is not None and input_ is not None and str(input_) == "-":
        raise BadInputError(
            "--input -: a distributed predict cannot share stdin between processes; "
            "give --input FILE or --data"
        )

    import sys

    from laplace_cli.cli.console import emit_json, stderr_console
    from laplace_cli.core.enums import Likelihood
    from laplace_cli.io.datasets import load_dataset_spec
    from laplace_cli.io.tabular import TableInfo, iter_feature_chunks
    from laplace_cli.io.writers import RowWriter, check_columns
    from laplace_cli.pipeline.stages import (
        PredictOptions,
        iter_prediction_rows,
        load_posterior,
        loader_chunks,
        number_chunks,
        split_loader,
    )

    lp = load_posterior(
        posterior,
        model_override=spec,
        trust_checkpoint=trust_checkpoint,
        device=device or "auto",
        dtype=dtype.value if dtype is not None else None,
    )
    la = lp.la
    rows_per_chunk = batch_size or 256
    if input_ is not None:
        keys = [k.strip() for k in x_key.split(",")] if x_key and "," in x_key else x_key
        info = TableInfo()  # rows read, and what the reader made of a CSV's first line
        chunks = iter_feature_chunks(
            input_, x_key=keys, chunk_rows=rows_per_chunk, header=header, info=info
        )
        total = None
    else:
        loader = split_loader(
            load_dataset_spec(data), split, la.likelihood, batch_size, require_labels=False
        )
        info = TableInfo()
        chunks = _count_rows(loader_chunks(loader), info)
        total = len(loader)
    # Numbered before they are dealt to processes: a row's Monte Carlo stream is seeded by its
    # global index, so its scores do not depend on --batch-size or the number of processes.
    chunks = number_chunks(chunks)
    options = PredictOptions(
        pred_type=pred_type.value if pred_type is not None else None,
        link_approx=link_approx.value if link_approx is not None else None,
        n_samples=samples,
        interval=interval,
        seed=seed if seed is not None else 0,
    )
    fields = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    source = "<stdin>" if input_ == "-" else str(input_ or f"{data}: split {split!r}")
    single = la.likelihood == Likelihood.REGRESSION and (la.n_outputs or 1) == 1
    if ctx is not None:
        # Each rank predicts its chunks (chunk i on rank i mod W); rank 0 gathers them round
        # by round, which is the input order, and writes them as one process would.
        mine = iter_prediction_rows(la, distributed.round_robin(chunks, ctx), options, source)
        batches_all = distributed.gather_rounds(mine, ctx)
        if not ctx.is_main:
            for _ in batches_all:
                pass
            return
    batches = batches_all if ctx is not None else iter_prediction_rows(la, chunks, options, source)
    batches = iter(progress_for(quiet)(batches, total, "predict"))
    # The first batch is predicted and --columns checked against it before -o is opened: what
    # fails on the first chunk (a column, --x-key, --pred-type, the input's shape) creates no file.
    first = next(batches, None)
    if first:
        check_columns(first[0], fields, fmt.value, single_output=single)
    note = info.header_warning()  # the first line has been read: say if it may be misread
    if note is not None:
        from rich.markup import escape

        stderr_console.print(f"[yellow]warning:[/] {escape(f'{source}: {note}')}", soft_wrap=True)
    # Rows are streamed, not written atomically: a consumer may read them as they come, and a
    # failure half way leaves only whole rows behind (each row is one write).
    stream = open(output, "w", encoding="utf-8", newline="") if output is not None else sys.stdout
    written, rows_done = _position(stream), 0  # end of the last whole, flushed batch
    counted = _CountingStream(stream)
    failed: OSError | None = None
    try:
        writer = RowWriter(counted, fmt.value, fields, single_output=single)
        for rows in itertools.chain([first] if first is not None else [], batches):
            writer.write_batch(rows)
            position, sent = _position(stream), counted.take()
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
        raise _write_failed(failed, stream, output, written, rows_done) from failed
    where = str(output) if output is not None else "<stdout>"
    if not quiet and not json_:  # --json: the counts are in the summary, no human output
        how = info.header_summary()
        stderr_console.print(
            f"predict: {info.rows} rows read from {source}{f' ({how})' if how else ''}, "
            f"{writer.rows_written} written to {where}",
            soft_wrap=True,  # one line per run in a log, however long the paths
            markup=False,
        )
    if json_:
        emit_json(
            {
                "input": source,
                "output": where,
                "format": fmt.value,
                "rows_read": info.rows,
                "rows_written": writer.rows_written,
                "input_format": info.format,
                "header": info.header,
            }
        )


def _stdin_or_hint() -> str:
    """`-` when stdin is a pipe or a file (`cat rows.csv | laplace predict -p post.st`); on a
    terminal, where nothing would come, an error that says what to give."""
    import sys

    stdin = sys.stdin
    if stdin is None or stdin.closed or stdin.isatty():
        raise BadInputError(
            "no input: pipe rows in (cat rows.csv | laplace predict -p POST), "
            "or give --input FILE|- or --data SPEC [--split NAME]"
        )
    return "-"


def _count_rows(chunks: Any, info: Any) -> Any:
    """The chunks unchanged, counting their rows into `info.rows`."""
    for chunk in chunks:
        info.rows += len(chunk[0])
        yield chunk


class _CountingStream:
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


def _position(stream: Any) -> int | None:
    """The byte offset of a regular file (flushed); None for a pipe, terminal or /dev/null."""
    try:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return None  # /dev/null is seekable but its offset never moves
        return stream.tell()
    except (OSError, ValueError, AttributeError):  # no fd (a test runner's stdout)
        return None


def _write_failed(
    exc: OSError, stream: Any, output: Path | None, written: int | None, rows_done: int
) -> BadInputError:
    """Cut a regular file back to its last whole row and say so (exit 2).

    A full disk can fail a write half way through a row (the OS takes what fits); the rows of
    the batches flushed before the failure are kept, the partial batch is removed. On stdout the
    interpreter's final flush would fail again: fd 1 goes to /dev/null (as after EPIPE).
    """
    import sys

    from laplace_cli.cli.errors import silence_stdout

    where = str(output) if output is not None else "<stdout>"
    kept = ""
    if written is not None:
        with contextlib.suppress(OSError, ValueError):
            if output is not None:
                os.truncate(output, written)
                kept = f"; kept the {rows_done} whole rows written before the failure"
            elif stream is sys.__stdout__:
                os.ftruncate(stream.fileno(), written)
                kept = f"; kept the {rows_done} whole rows written before the failure"
    if output is None:
        silence_stdout()
    return BadInputError(f"{where}: cannot write the predictions ({exc.strerror or exc}){kept}")
