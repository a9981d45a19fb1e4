"""`laplace predict`: one row per input with mean, variance and uncertainty scores."""

from __future__ import annotations

import itertools
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
    ConformalPredictOpt,
    ConformalScoreOpt,
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
from laplace_cli.cli.predict_dense import check_dense_format, predict_dense
from laplace_cli.core.enums import OutputFormat
from laplace_cli.core.errors import BadInputError

EXAMPLES = [
    "cat rows.csv | laplace predict -p post.st > rows.jsonl",
    "laplace predict -p post.st --input x.npz > rows.jsonl",
    "laplace predict -p post.st --data data.yaml --split test -o preds.csv",
    "torchrun --nproc-per-node 2 -m laplace_cli predict -p post.st --data data.yaml -o preds.csv",
    "laplace predict -p post.st --data data.yaml --conformal 0.9 --conformal-score aps -o sets.csv",
    "laplace predict -p seg_post.st --data seg.yaml --split test -o masks.npz",
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
    conformal: ConformalPredictOpt = None,
    conformal_score: ConformalScoreOpt = None,
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

    A posterior with dense outputs (fit --output-positions, e.g. segmentation) writes arrays
    instead of rows, to -o FILE.npz: per input the predicted class map `pred`, `probs`,
    `max_prob`, the predictive entropy `entropy` and the GLM logit variance `var` per position
    (docs/dense-outputs.md).
    """
    input_ = _check_flags(posterior, input_, data, x_key, header, output, interval, json_)
    fmt = resolve_format(format_, output)
    apply_threads(threads)
    check_device(device)
    spec = model_override(model, model_factory, model_kwargs, trust_checkpoint)

    ctx = _distributed_context(device, input_)

    from laplace_cli.pipeline.model_loading import load_posterior
    from laplace_cli.pipeline.predict_stage import PredictOptions
    from laplace_cli.pipeline.prediction_stream import predicted_batches, prediction_chunks

    la = load_posterior(
        posterior,
        model_override=spec,
        trust_checkpoint=trust_checkpoint,
        device=device or "auto",
        dtype=dtype.value if dtype is not None else None,
    ).la
    check_dense_format(la, fmt, output, conformal, columns, ctx)
    chunks, info, total = prediction_chunks(la, input_, data, split, x_key, header, batch_size)
    options = PredictOptions(
        pred_type.value if pred_type is not None else None,
        link_approx.value if link_approx is not None else None,
        n_samples=samples, interval=interval, seed=seed if seed is not None else 0,
    )  # fmt: skip
    source = "<stdin>" if input_ == "-" else str(input_ or f"{data}: split {split!r}")
    if fmt == OutputFormat.NPZ:  # dense outputs: arrays, not rows (checked above)
        n = predict_dense(la, chunks, total, options, output, source, quiet)
        _report(info, source, output, OutputFormat.NPZ.value, n, quiet, json_)
        return
    _add_conformal(la, options, conformal, conformal_score)
    batches = predicted_batches(la, chunks, options, source, ctx)
    if batches is None:
        return  # a rank other than 0 under torchrun: rank 0 writes every row
    _write_rows(la, batches, total, info, source, columns, output, fmt, quiet, json_)


def _add_conformal(
    la: Any, options: Any, conformal: float | None, conformal_score: Any | None
) -> None:
    """Set the stored split conformal calibration at level --conformal on `options`."""
    if conformal is not None:
        from laplace_cli.pipeline.conformal_stage import calibration_for

        # Refused (exit 2) when absent or for a score the likelihood has not.
        options.conformal = calibration_for(la, conformal, options, conformal_score)
    elif conformal_score is not None:
        raise BadInputError("--conformal-score needs --conformal LEVEL (e.g. --conformal 0.9)")


def _write_rows(
    la: Any,
    batches: Any,
    total: Any,
    info: Any,
    source: str,
    columns: str | None,
    output: Path | None,
    fmt: OutputFormat,
    quiet: bool,
    json_: bool,
) -> None:
    """Write rank 0's predicted rows (with a progress bar) and report the counts."""
    from laplace_cli.core.enums import Likelihood

    fields = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    single = la.likelihood == Likelihood.REGRESSION and (la.n_outputs or 1) == 1
    batches = iter(progress_for(quiet)(batches, total, "predict"))
    rows = _checked_first(batches, fields, fmt.value, single)
    _warn_header(info, source)  # the first line has been read: say if it may be misread
    rows_written = _write(rows, output, fmt.value, fields, single)
    _report(info, source, output, fmt.value, rows_written, quiet, json_)


def _check_flags(
    posterior: Path,
    input_: Any,
    data: Path | None,
    x_key: str | None,
    header: bool | None,
    output: Path | None,
    interval: float,
    json_: bool,
) -> Any:
    """Check the flags that need no posterior; `--input`, or `-` for a piped stdin without
    --input and --data."""
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
    return input_


def _distributed_context(device: str | None, input_: Any) -> Any:
    """The torchrun context (None alone); stdin cannot be shared between its processes."""
    from laplace_cli.pipeline import distributed

    ctx = distributed.context(device or "auto")
    if ctx is not None and input_ is not None and str(input_) == "-":
        raise BadInputError(
            "--input -: a distributed predict cannot share stdin between processes; "
            "give --input FILE or --data"
        )
    return ctx


def _checked_first(batches: Any, fields: list[str] | None, fmt: str, single: bool) -> Any:
    """The batches, the first one predicted and --columns checked against it before -o is
    opened: what fails on the first chunk (a column, --x-key, --pred-type, the input's shape)
    creates no file."""
    from laplace_cli.io.writers import check_columns

    first = next(batches, None)
    if first:
        check_columns(first[0], fields, fmt, single_output=single)
    return itertools.chain([first] if first is not None else [], batches)


def _warn_header(info: Any, source: str) -> None:
    """Warn on stderr when a CSV's first line may have been misread (header or data)."""
    note = info.header_warning()
    if note is not None:
        from rich.markup import escape

        from laplace_cli.cli.console import stderr_console

        stderr_console.print(f"[yellow]warning:[/] {escape(f'{source}: {note}')}", soft_wrap=True)


def _write(rows: Any, output: Path | None, fmt: str, fields: list[str] | None, single: bool) -> int:
    """Stream the rows to -o or stdout: the number written. A failed write exits 2 and says how
    many whole rows were kept."""
    import sys

    from laplace_cli.pipeline.prediction_stream import RowsNotWritten, write_rows

    if output is None:
        # On stdout rows are streamed: a consumer reads them as they come, and a failure half
        # way leaves only whole rows behind (each row is one write).
        try:
            return write_rows(sys.stdout, rows, fmt, fields, single_output=single, output=None)
        except RowsNotWritten as exc:
            raise _write_failed(exc.error, None, exc.rows_kept) from exc.error
    if output.exists() and not output.is_file():
        # A FIFO or a device (-o /dev/stdout): streamed as to stdout; renaming a temporary
        # file onto it would replace the device node itself.
        stream = open(output, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed below
        try:
            return write_rows(stream, rows, fmt, fields, single_output=single, output=output)
        except RowsNotWritten as exc:
            raise _write_failed(exc.error, output, exc.rows_kept) from exc.error
    # -o FILE is written atomically (streamed into a temporary file next to it, renamed when
    # complete): a crash, a kill -9 or a full disk leaves the old file or the complete new one,
    # never a torn one, and of two runs writing the same FILE the last to finish wins whole.
    from laplace_cli.io.atomic import atomic_write

    try:
        with atomic_write(output, "w") as stream:
            return write_rows(stream, rows, fmt, fields, single_output=single, output=None)
    except RowsNotWritten as exc:
        raise _write_failed(exc.error, output, None) from exc.error


def _report(
    info: Any,
    source: str,
    output: Path | None,
    fmt: str,
    rows_written: int,
    quiet: bool,
    json_: bool,
) -> None:
    """The counts: one line on stderr, or the --json summary on stdout."""
    from laplace_cli.cli.console import emit_json, stderr_console

    where = str(output) if output is not None else "<stdout>"
    if not quiet and not json_:  # --json: the counts are in the summary, no human output
        how = info.header_summary()
        stderr_console.print(
            f"predict: {info.rows} rows read from {source}{f' ({how})' if how else ''}, "
            f"{rows_written} written to {where}",
            soft_wrap=True,  # one line per run in a log, however long the paths
            markup=False,
        )
    if json_:
        emit_json(
            {
                "input": source,
                "output": where,
                "format": fmt,
                "rows_read": info.rows,
                "rows_written": rows_written,
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


def _write_failed(exc: OSError, output: Path | None, rows_kept: int | None) -> BadInputError:
    """The error for a failed write (exit 2), saying how many whole rows were kept.

    On stdout the interpreter's final flush would fail again: fd 1 goes to /dev/null (as after
    EPIPE)."""
    from laplace_cli.cli.errors import silence_stdout

    where = str(output) if output is not None else "<stdout>"
    kept = ""
    if rows_kept is not None:
        kept = f"; kept the {rows_kept} whole rows written before the failure"
    elif output is not None:
        kept = f"; {output} was left as it was (written only once complete)"
    if output is None:
        silence_stdout()
    return BadInputError(f"{where}: cannot write the predictions ({exc.strerror or exc}){kept}")
