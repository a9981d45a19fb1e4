"""`laplace history DB`: list, filter, export and plot the runs of an evaluation history."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from laplace_cli.cli.common import check_output_file
from laplace_cli.cli.console import emit_json, stderr_console
from laplace_cli.cli.options import DebugOpt, JsonOpt

EXAMPLES = [
    "laplace history runs.db",
    "laplace history runs.db --since 2026-01-01 --metric laplace.ece --csv ece.csv",
    "laplace history runs.db --plot trend.png",
]

_FILTER = "Filters"


def history(
    db: Annotated[
        Path, typer.Argument(help="A run history written by `laplace evaluate --history DB`.")
    ],
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="Keep runs whose checkpoint fingerprint starts with this.",
            rich_help_panel=_FILTER,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Keep runs at or after this ISO date or time (UTC).",
            rich_help_panel=_FILTER,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until", help="Keep runs before this ISO date or time (UTC).", rich_help_panel=_FILTER
        ),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            help="Show / export / plot this metric, as row.metric (a bare name means "
            "laplace.<name>); repeatable. Default: all (the plot: nll, ece, acc or rmse, crps).",
            rich_help_panel=_FILTER,
        ),
    ] = None,
    csv: Annotated[
        Path | None, typer.Option("--csv", help="Write the runs as CSV (one line per run).")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write a PNG of the metrics over the runs (needs matplotlib)."),
    ] = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List the runs of an evaluation history, oldest first, and export or plot them.

    A table on stderr by default; --json prints the runs on stdout; --csv and --plot write files.
    """
    from laplace_cli.io.history import check_history_file

    check_history_file(db, must_exist=True)
    check_output_file(csv, "--csv")
    check_output_file(plot, "--plot")
    if plot is not None:
        from laplace_cli.pipeline.report import figure_class

        figure_class()  # matplotlib missing: exit 2 naming the extra, before reading
    from laplace_cli.pipeline.run_history import (
        export_csv,
        export_json,
        plot_trend,
        select_runs,
    )

    runs, metrics = select_runs(
        db, checkpoint=checkpoint, since=since, until=until, metrics=metric or []
    )
    if csv is not None:
        from laplace_cli.io.atomic import atomic_write_bytes

        atomic_write_bytes(csv, export_csv(runs, metrics).encode("utf-8"))
    if plot is not None:
        plot_trend(runs, plot, metrics or None)
    if json_:
        emit_json(export_json(runs, metrics))
    else:
        _render(runs, metrics)


def _render(runs: list[dict[str, Any]], metrics: list[str]) -> None:
    from rich.table import Table

    if not metrics:
        metrics = [
            m
            for m in ("laplace.nll", "laplace.ece", "laplace.acc", "laplace.rmse")
            if any(m.split(".")[1] in r["metrics"].get("laplace", {}) for r in runs)
        ]
    table = Table(title=f"{len(runs)} run(s)")
    for col in ("id", "created", "checkpoint", "data", "n", *metrics, "gates"):
        table.add_column(col)
    for run in runs:
        values = []
        for name in metrics:
            row, _, m = name.rpartition(".")
            v = run["metrics"].get(row, {}).get(m)
            values.append("" if v is None else f"{v:.4g}")
        n_failed = sum(g["failed"] for g in run["gates"])
        gates = f"{n_failed} failed" if n_failed else ("passed" if run["gates"] else "-")
        table.add_row(
            str(run["id"]),
            str(run["created"]),
            str(run["fingerprint"] or "-")[:12],
            str(run["data_hash"] or "-")[:8],
            str(run["n_test"] or "-"),
            *values,
            gates,
        )
    stderr_console.print(table)
