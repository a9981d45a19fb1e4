"""Where output goes: data to stdout, people to stderr (one rich console), progress on stderr.

stdout carries only data (`--json` documents, prediction rows) so that it can be piped; every
human-readable line, table, warning and progress bar goes to `stderr_console`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["captured_warnings", "emit_json", "jsonable", "progress", "stderr_console"]

T = TypeVar("T")

stderr_console = Console(stderr=True, highlight=False)
if not stderr_console.is_terminal:
    # Logs and CI output: rich would wrap at 80 columns and truncate metric tables.
    stderr_console.width = 160
"""The one console for people. `stderr=True` resolves `sys.stderr` at each write, so test
runners that swap `sys.stderr` capture it."""


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    description: str = "working",
    quiet: bool = False,
) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr, when stderr is a terminal and not `quiet`.

    The bar never captures stdout (`redirect_stdout=False`): `laplace predict` writes rows to
    stdout while it runs, and rich's default would route them through the live display.

    Args:
        iterable: What to iterate over.
        total: Number of items; taken from `len(iterable)` when it has one.
        description: Label shown left of the bar.
        quiet: No bar (`--quiet`).

    Yields:
        The items of `iterable`, unchanged.
    """
    if quiet or not stderr_console.is_terminal:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    single = total == 1  # one long step (a factorisation, a summary): a spinner and the time
    columns = (
        [SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()]
        if single
        else [
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
    )
    with Progress(
        *columns,
        console=stderr_console,
        redirect_stdout=False,
        redirect_stderr=False,
        transient=single,  # the line that follows reports the step and its time
    ) as bar:
        yield from bar.track(iterable, total=total, description=description)


@contextmanager
def captured_warnings(show: bool = True) -> Iterator[list[str]]:
    """Route the warnings raised inside to the tool's own output, each distinct one once.

    Python's default `showwarning` prints `<file>:<line>: TuningWarning: ...` attributed to
    whatever frame called the library (Typer's module, from the CLI), beside the tool's own
    lines. Inside this block a warning is printed as `warning: <message>` on stderr (when
    `show`) and collected in the yielded list (for `--json`). The tool's own warnings
    (`LaplaceWarning`) are always shown; other libraries' keep their usual filters.
    """
    from laplace_cli.core.errors import LaplaceWarning

    messages: list[str] = []

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if text in messages:
            return
        messages.append(text)
        if show:
            from rich.text import Text

            stderr_console.print(Text.assemble(("warning: ", "bold yellow"), text), soft_wrap=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", LaplaceWarning)
        warnings.showwarning = showwarning
        yield messages


def jsonable(obj: Any) -> Any:
    """A strict-JSON copy of `obj`: NaN/Inf become `null`; paths, enums, tensors, arrays are converted.

    JSON has no NaN: `json.dumps` would write the bare token `NaN`, which strict parsers (jq,
    JavaScript) reject, so a metric that is undefined is reported as `null`.
    """
    if isinstance(obj, Enum):
        return jsonable(obj.value)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return jsonable(obj.tolist())
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def emit_json(obj: Any, *, indent: int | None = 2) -> None:
    """Write `obj` as one JSON document on stdout (followed by a newline) and flush.

    Flushing here makes a closed pipe (`laplace inspect --json post.st | head -c 10`) raise
    `BrokenPipeError` inside the command, where the CLI maps it to exit 0, rather than at
    interpreter shutdown.

    Args:
        obj: Anything `jsonable` accepts.
        indent: JSON indentation; `None` for one line.
    """
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
