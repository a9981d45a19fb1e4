"""Dense outputs for `laplace predict`: the NPZ format checks and the writing of the arrays.

A posterior fitted with --output-positions (e.g. segmentation) predicts arrays per input, not
rows: they go to one NPZ file (docs/dense-outputs.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from laplace_cli.cli.common import progress_for
from laplace_cli.core.enums import OutputFormat
from laplace_cli.core.errors import BadInputError


def check_dense_format(
    la: Any,
    fmt: Any,
    output: Path | None,
    conformal: float | None,
    columns: str | None,
    ctx: Any,
) -> None:
    """NPZ arrays for dense outputs (B, C, *S) and only for them, to a file (-o)."""
    from laplace_cli.pipeline.dense_predictions import is_dense

    if not is_dense(la):
        if fmt == OutputFormat.NPZ:
            raise BadInputError(
                "--format npz is for posteriors with dense outputs (fit --output-positions); "
                "this one gives one row per input: use csv or jsonl"
            )
        return
    if fmt != OutputFormat.NPZ:
        raise BadInputError(
            f"the posterior has dense outputs ({la.output_shape} per input): predictions are "
            f"arrays, not {fmt.value} rows; give -o predictions.npz (or --format npz -o FILE)"
        )
    if output is None:
        raise BadInputError("--format npz writes a binary file: give -o predictions.npz")
    if conformal is not None or columns is not None:
        flag = "--conformal" if conformal is not None else "--columns"
        raise BadInputError(f"{flag} applies to rows (csv / jsonl), not to dense outputs; drop it")
    if ctx is not None:
        raise BadInputError("predict of dense outputs runs in one process: run it without torchrun")
    if output.exists() and not output.is_file():
        raise BadInputError(f"{output}: --format npz needs a regular file (written atomically)")


def predict_dense(
    la: Any,
    chunks: Any,
    total: int | None,
    options: Any,
    output: Path,
    source: str,
    quiet: bool,
) -> int:
    """Write the arrays of every input to the NPZ file `output` (atomically): the number of
    inputs written (the caller reports it)."""
    from laplace_cli.pipeline.dense_predictions import write_dense_predictions

    return write_dense_predictions(la, chunks, options, output, source, progress_for(quiet), total)
