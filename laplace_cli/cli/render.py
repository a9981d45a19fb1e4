"""Rich tables for people (stderr): the evaluation table and the marginal-likelihood table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

ROW_LABELS = {"map": "MAP", "temperature": "temperature scaling", "laplace": "Laplace"}


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_evaluation(result: Any, console: Console) -> None:
    """One row per method (MAP, temperature scaling, Laplace), one column per metric; gates below."""
    settings = result.settings
    title = f"{settings.get('split')} split, n = {settings.get('n_test')}"
    if settings.get("n_positions") is not None:  # dense outputs: scored per position
        title += f" ({settings['n_positions']} positions)"
    laplace_label = f"Laplace ({settings.get('pred_type')}"
    if settings.get("pred_type") == "glm" and settings.get("link_approx"):  # none: regression
        laplace_label += f", {settings.get('link_approx')}"
    laplace_label += ")"
    metrics: list[str] = []
    for row in result.rows.values():
        metrics += [m for m in row if m not in metrics]
    table = Table(title=title)
    table.add_column("method")
    for m in metrics:
        table.add_column(m, justify="right")
    intervals = getattr(result, "intervals", None) or {}
    boot = settings.get("bootstrap")
    if intervals and boot:
        table.caption = (
            f"\\[lower, upper]: {boot['confidence']:.0%} {boot['method']} bootstrap intervals, "
            f"{boot['n_resamples']} resamples, seed {boot['seed']}"
        )
    for name, row in result.rows.items():
        label = laplace_label if name == "laplace" else ROW_LABELS.get(name, name)
        cells = [_fmt(row.get(m)) + _fmt_interval(intervals.get(name, {}).get(m)) for m in metrics]
        table.add_row(label, *cells)
    console.print(table)
    if intervals.get("laplace"):
        _print_differences(intervals["laplace"], console)
    for name, rows in (getattr(result, "tables", None) or {}).items():
        _print_named_table(name, rows, console)
    for table_name, reason in (settings.get("skipped") or {}).items():
        console.print(f"[dim]{table_name} table skipped: {reason}[/]")
    for gate in result.gates:
        style = "red" if gate["failed"] else "green"
        console.print(f"[{style}]{gate['message']}[/]")


def _fmt_interval(entry: Any) -> str:
    """`\n[lower, upper]` under a metric's value; empty without an interval."""
    if not entry:
        return ""
    return f"\n[{_fmt(entry.get('lower'))}, {_fmt(entry.get('upper'))}]"


def _print_differences(laplace: dict[str, Any], console: Console) -> None:
    """Paired differences laplace − other row, with their intervals (one row per other row)."""
    others: list[str] = []
    for entry in laplace.values():
        others += [k for k in entry if k.startswith("diff_vs_") and k not in others]
    if not others:
        return
    metrics = list(laplace)
    table = Table(title="paired differences: Laplace − row (same resamples)")
    table.add_column("row")
    for m in metrics:
        table.add_column(m, justify="right")
    for key in others:
        other = key.removeprefix("diff_vs_")
        cells = []
        for m in metrics:
            d = laplace[m].get(key)
            cells.append(_fmt(d["estimate"]) + _fmt_interval(d) if d else _fmt(None))
        table.add_row(ROW_LABELS.get(other, other), *cells)
    console.print(table)


def print_marglik(entries: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="log marginal likelihood (higher is better)")
    cols = ("posterior", "structure", "subset", "n_params", "tuned", "log_marginal_likelihood")
    for col in cols:
        table.add_column(col, justify="right" if col != "posterior" else "left")
    for e in entries:
        table.add_row(
            e["posterior"],
            e["structure"],
            e["subset"],
            f"{e['n_params']:,}",
            e.get("tuned") or "no",
            f"{e['log_marginal_likelihood']:.6g}",
        )
    console.print(table)


def _print_named_table(name: str, rows: dict[str, dict[str, Any]], console: Console) -> None:
    """A selective / conformal / OOD / per-label table: one row per "row score"."""
    if not rows:
        return
    columns: list[str] = []
    for row in rows.values():
        columns += [c for c in row if c not in columns]
    table = Table(title=name.replace("_", " "))
    table.add_column("row score")
    for c in columns:
        table.add_column(c, justify="right")
    for label, row in rows.items():
        table.add_row(label, *(_fmt(row.get(c)) for c in columns))
    console.print(table)
