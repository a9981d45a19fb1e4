"""The `laplace` command line: a Typer app over the laplace_cli library.

One module per command (`cmd_<name>.py`) holds the command function, its `--help` text and its
examples; this module registers them and provides `main`, the console-script entry point.
Exit codes are decided in one place, `laplace_cli.cli.errors.EXIT_TABLE` (0 ok, 1 a gate
failed, 2 bad usage or input, 3 numerical failure, 70 internal error, 130 interrupted).
"""

from __future__ import annotations

from typing import Annotated

import typer

from laplace_cli.cli import (
    cmd_doctor,
    cmd_evaluate,
    cmd_fit,
    cmd_history,
    cmd_inspect,
    cmd_marglik,
    cmd_predict,
    cmd_run,
    cmd_train,
    cmd_tune,
)
from laplace_cli.cli.errors import LaplaceGroup
from laplace_cli.cli.help_format import LaplaceCommand
from laplace_cli.cli.options import DebugOpt

__all__ = ["app", "main"]

app = typer.Typer(
    name="laplace",
    cls=LaplaceGroup,
    help="Post-hoc Laplace approximations for PyTorch models: fit, tune, evaluate, predict.",
    epilog="Exit codes: 0 ok, 1 a --fail-if gate failed, 2 bad usage or input, "
    "3 numerical failure, 70 internal error (rerun with --debug), 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,  # LaplaceGroup reports errors; never Typer's pretty traces
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _epilog(examples: list[str]) -> str:
    # Markdown help: one paragraph per example, each a code span so that nothing in it (`*`,
    # `_`, `>`) is read as markup.
    lines = "\n\n".join(f"`$ {e}`" for e in examples)
    return f"**Examples**\n\n{lines}"


for _module, _name in (
    (cmd_fit, "fit"),
    (cmd_tune, "tune"),
    (cmd_evaluate, "evaluate"),
    (cmd_predict, "predict"),
    (cmd_run, "run"),
    (cmd_inspect, "inspect"),
    (cmd_doctor, "doctor"),
    (cmd_marglik, "marglik"),
    (cmd_history, "history"),
    (cmd_train, "train"),
):
    app.command(_name, cls=LaplaceCommand, epilog=_epilog(_module.EXAMPLES))(
        getattr(_module, _name)
    )


def _version(value: bool) -> None:
    if value:
        from laplace_cli.core.version import __version__

        typer.echo(f"laplace-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Post-hoc Laplace approximations for PyTorch models: fit, tune, evaluate, predict."""


def main() -> None:
    """Console-script entry point (`laplace`, `python -m laplace_cli`); exits with the table's code."""
    from laplace_cli.core.allocator import retain_freed_memory
    from laplace_cli.core.threads import prefer_passive_wait

    prefer_passive_wait()  # before torch loads: OpenMP reads it once (see laplace_cli/core/threads.py)
    retain_freed_memory()  # freed tensors stay in the heap (laplace_cli/core/allocator.py)
    app(prog_name="laplace")
