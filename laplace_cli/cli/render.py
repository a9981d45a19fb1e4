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
    for name, row in result.rows.items():
        label = laplace_label if name == "laplace" else ROW_LABELS.get(name, name)
        table.add_row(label, *[_fmt(row.get(m)) for m in metrics])
    console.print(table)
    for gate in result.gates:
        style = "red" if gate["failed"] else "green"
        console.print(f"[{style}]{gate['message']}[/]")


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
