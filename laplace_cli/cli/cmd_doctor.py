"""`laplace doctor POSTERIOR --data SPEC`: cheap diagnostics of a posterior, with advice."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from laplace_cli.cli.common import apply_threads, progress_for, require_file
from laplace_cli.cli.options import (
    BatchSizeOpt,
    DebugOpt,
    JsonOpt,
    PosteriorArg,
    QuietOpt,
    SeedOpt,
    ThreadsOpt,
)
from laplace_cli.core.errors import BadInputError, GateFailed

EXAMPLES = [
    "laplace doctor post.st --data data.yaml",
    "laplace doctor post.st --data data.yaml --split test --json | jq .findings",
    "laplace doctor post.st --data data.yaml --fail-on warning   # exit 1 on any warning",
]


class FailOn(str, Enum):
    warning = "warning"
    error = "error"


DoctorDataOpt = Annotated[
    Path,
    typer.Option("--data", "-d", help="Dataset spec (YAML); its train split is used too."),
]
DoctorSplitOpt = Annotated[
    str, typer.Option("--split", help="Split to diagnose the predictive on (val or test).")
]
FailOnOpt = Annotated[
    FailOn | None,
    typer.Option("--fail-on", help="Exit 1 when a finding of this severity or worse exists."),
]


def doctor(
    posterior: PosteriorArg,
    data: DoctorDataOpt,
    split: DoctorSplitOpt = "val",
    fail_on: FailOnOpt = None,
    batch_size: BatchSizeOpt = None,
    seed: SeedOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Diagnose a fitted posterior: prior precision at the edge of its grid, near-constant
    predictive variance, under-confidence, GLM vs sampled-network disagreement, marglik vs
    grid search priors far apart, a MAP that is not a minimum, curvature held by one layer.

    Each finding says what was measured and what to do (thresholds: docs/doctor.md). Exits 0
    even with findings, unless --fail-on warning (exit 1 when any warning exists).
    """
    require_file(posterior, "POSTERIOR")
    require_file(data, "--data")
    if split not in ("val", "test"):
        raise BadInputError(f"--split: expected val or test, got {split!r}")
    apply_threads(threads)

    from laplace_cli.cli.console import emit_json, stderr_console
    from laplace_cli.pipeline import doctor as lib
    from laplace_cli.pipeline.model_loading import load_posterior

    lp = load_posterior(posterior)
    findings = lib.diagnose(
        lp.la,
        str(data),
        split=split,
        batch_size=batch_size,
        seed=seed if seed is not None else 0,
        progress=progress_for(quiet or json_),
    )
    doc = lib.report(findings, posterior=str(posterior), data=str(data), split=split)
    if json_:
        emit_json(doc)
    else:
        render_findings(findings, stderr_console)
    if lib.fails(doc["worst"], fail_on.value if fail_on is not None else None):
        raise GateFailed(
            f"doctor: a finding of severity {doc['worst']} (--fail-on {fail_on.value})"
        )


def render_findings(findings: list[Any], console: Any) -> None:
    """The findings as a table (check, severity, finding → action) on `console`."""
    from rich.table import Table

    table = Table(title="laplace doctor", title_justify="left")
    table.add_column("check", style="cyan", no_wrap=True)
    table.add_column("severity")
    table.add_column("finding", overflow="fold")
    style = {"warning": "bold yellow", "error": "bold red", "ok": "green", "skipped": "dim"}
    for f in findings:
        text = f.message + (f"\n→ {f.action}" if f.action else "")
        table.add_row(f.check, f"[{style.get(f.severity, '')}]{f.severity}[/]", text)
    console.print(table)
