"""The exit-code table: every error the CLI can meet, mapped to one exit code and one message.

| exit | when | stderr |
| ---: | --- | --- |
| 0 | success; also stdout closed early (`laplace predict ... \\| head`) | nothing more |
| 1 | `GateFailed`: an `evaluate --fail-if` gate failed | `error: gate 'ece>0.05' failed: ...` |
| 2 | `BadInputError` and its subclasses (`NotImplementedYetError`, `FingerprintMismatchError`, `MemoryBudgetError`): bad input or usage | `error: <file>: <what is wrong>` |
| 2 | a usage error found by the parser: unknown option, bad choice, missing argument | `error: <message> (see 'laplace fit --help')` |
| 2 | a file named on the command line that the OS refuses (`FileNotFoundError`, `PermissionError`, ...) | `error: <file>: <reason>` |
| 3 | `NumericalError`: NaN/Inf curvature or loss, a matrix not positive definite after jitter | `error: <message>` |
| 3 | `OutOfMemory` (a stage ran out of CUDA / host memory), or a bare `torch.OutOfMemoryError` / `MemoryError` | `error: out of CUDA memory during fit kron ... (batch size 256); lower --batch-size, ...` |
| 70 | anything else: a bug in laplace-cli (`EX_SOFTWARE` of sysexits.h) | `internal error: <type>: <message>, rerun with --debug for the traceback` |
| 130 | interrupted (Ctrl-C) | `error: interrupted` |

`--debug` (on any command, or `LAPLACE_DEBUG=1`) prints the traceback before the message for
every error. Typer/Click would exit 1 for several generic failures; 1 is reserved for failed
gates here, so `LaplaceGroup` routes every exception through `report_error` instead.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from rich.text import Text
from typer.core import TyperGroup

from laplace_cli.cli.console import stderr_console
from laplace_cli.cli.help_format import PlainMetavars
from laplace_cli.core.errors import LaplaceCliError

try:  # Typer >= 0.20 vendors Click as `typer._click`; its exceptions are not Click's.
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older Typer on top of Click
    from click.exceptions import ClickException, UsageError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_GATE_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NUMERICAL",
    "EXIT_OK",
    "EXIT_TABLE",
    "ExitRule",
    "LaplaceGroup",
    "exit_code_for",
    "report_error",
    "wants_debug",
]

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NUMERICAL = 3
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

_USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _is_epipe(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError) or (
        isinstance(exc, OSError) and exc.errno == errno.EPIPE
    )


def _is_out_of_memory(exc: BaseException) -> bool:
    """`MemoryError`, torch's `OutOfMemoryError` (found by name: importing torch here would
    slow down every command, `--help` included) or its CPU allocator's `RuntimeError`."""
    if isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate" in str(exc):
        return True  # torch's CPU allocator
    return isinstance(exc, MemoryError) or any(
        k.__name__ == "OutOfMemoryError" and k.__module__.startswith("torch")
        for k in type(exc).__mro__
    )


OOM_MESSAGE = (
    "out of memory ({what}); lower --batch-size, choose a cheaper structure (--structure kron "
    "or diag, or --subset last_layer), or lower --max-memory"
)


@dataclass(frozen=True)
class ExitRule:
    """One row of the table: exceptions of `kind` (for which `when` holds) exit with `code`.

    Attributes:
        kind: Exception class(es) the row matches.
        code: Exit code; `None` takes the exception's own `exit_code` (LaplaceCliError).
        when: Extra condition on the exception, if any.
    """

    kind: type[BaseException] | tuple[type[BaseException], ...]
    code: int | None
    when: Callable[[BaseException], bool] | None = None

    def matches(self, exc: BaseException) -> bool:
        return isinstance(exc, self.kind) and (self.when is None or self.when(exc))


EXIT_TABLE: Sequence[ExitRule] = (
    # First match wins, so the order matters: MemoryBudgetError is a LaplaceCliError before it
    # is a MemoryError, and BrokenPipeError is an OSError.
    ExitRule(OSError, EXIT_OK, _is_epipe),
    ExitRule(LaplaceCliError, None),
    ExitRule(ClickException, EXIT_BAD_INPUT),
    ExitRule((KeyboardInterrupt, typer.Abort), EXIT_INTERRUPTED),
    ExitRule(_USER_OS_ERRORS, EXIT_BAD_INPUT, lambda e: getattr(e, "filename", None) is not None),
    # An allocation that failed where no stage named its step (the stages raise OutOfMemory,
    # a LaplaceCliError with exit 3, themselves): still exit 3 with the advice, no traceback.
    ExitRule(BaseException, EXIT_NUMERICAL, lambda e: _is_out_of_memory(e)),
    ExitRule(BaseException, EXIT_INTERNAL),
)


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception, by the first matching row of `EXIT_TABLE`."""
    for rule in EXIT_TABLE:
        if rule.matches(exc):
            return (
                int(getattr(exc, "exit_code", EXIT_BAD_INPUT)) if rule.code is None else rule.code
            )
    return EXIT_INTERNAL  # pragma: no cover - the last row matches everything


def _message(exc: BaseException) -> str | None:
    """The line(s) to print after `error: `; `None` to print nothing."""
    if _is_epipe(exc):
        return None
    if isinstance(exc, ClickException):
        if type(exc).__name__ == "NoArgsIsHelpError":
            return None  # the help text was already printed
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, UsageError) and ctx is not None:
            hint = f" (see '{ctx.command_path} --help')"
        return exc.format_message() + hint
    if isinstance(exc, (KeyboardInterrupt, typer.Abort)):
        return "interrupted"
    if isinstance(exc, LaplaceCliError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, _USER_OS_ERRORS) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if _is_out_of_memory(exc):
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return OOM_MESSAGE.format(
            what=f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        )
    return str(exc)


def wants_debug(argv: Sequence[str] | None = None) -> bool:
    """True when `--debug` is among the options (before a `--`) or `LAPLACE_DEBUG` is set."""
    if os.environ.get("LAPLACE_DEBUG", "").strip() not in ("", "0"):
        return True
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" in args:
        args = args[: args.index("--")]
    return "--debug" in args


def silence_stdout() -> None:
    """After EPIPE, point fd 1 at /dev/null so the interpreter's final flush cannot fail again.

    Only for the real process stdout: under a test runner `sys.stdout` is a substitute and the
    file descriptors belong to someone else.
    """
    if sys.stdout is not sys.__stdout__:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def report_error(exc: BaseException, *, debug: bool = False, console: Any = None) -> int:
    """Print what went wrong on stderr and return the exit code (see the module's table).

    Args:
        exc: The exception.
        debug: Print the traceback first (for every kind of error).
        console: Where to print; the CLI's stderr console by default.

    Returns:
        The exit code.
    """
    console = console or stderr_console
    code = exit_code_for(exc)
    if _is_epipe(exc):
        silence_stdout()
        return code
    if debug:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        console.print(Text(tb.rstrip()), soft_wrap=True)
    message = _message(exc)
    if message is None:
        return code
    # Several problems reported at once: indent the continuation lines under `error: `.
    first, *rest = message.split("\n")
    message = "\n".join([first, *(line if line[:1].isspace() else "  " + line for line in rest)])
    if code == EXIT_INTERNAL:
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        line = Text.assemble(("internal error: ", "bold red"), text)
        if not debug:
            line.append(", rerun with --debug for the traceback")
    else:
        line = Text.assemble(("error: ", "bold red"), message)
    # soft_wrap: never insert line breaks into a message (paths, long option values).
    console.print(line, soft_wrap=True)
    return code


class LaplaceGroup(PlainMetavars, TyperGroup):
    """The `laplace` command group: runs a command and maps whatever it raises to an exit code.

    Click's `standalone_mode` would print its own messages and exit 1 for several failures
    (and 1 for a closed pipe); instead this runs Click non-standalone and sends every exception
    through `report_error`, so that `EXIT_TABLE` is the only place exit codes are decided.
    `typer.testing.CliRunner` calls `main` too, so tests see exactly what users see.
    """

    _debug: bool = False

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        self._debug = wants_debug(args)
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
            # Non-standalone Click returns the code of a `typer.Exit(code)`; `invoke` below
            # returns None for a normal run, so any int here is an exit code.
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else EXIT_OK
        except SystemExit:
            raise  # shell completion exits by itself
        except BaseException as exc:  # usage errors, and anything raised outside a command
            code = report_error(exc, debug=self._debug)
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: Any) -> Any:
        from laplace_cli.cli.console import captured_warnings

        try:
            with captured_warnings():  # library warnings in the tool's style, each once
                super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            # Handled here rather than in `main`: Click's own handler would turn a closed pipe
            # into exit 1 and Ctrl-C into a silent 130 before `main` sees them.
            raise typer.Exit(report_error(exc, debug=self._debug)) from exc
        return None  # a command's return value is never an exit code
