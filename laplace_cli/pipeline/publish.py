"""After an evaluation: compare with the baseline, record in the history, write every output.

The order matters: the report gets its data hash and baseline block first, so that the history
row, the JSON report, the HTML page (with the history's trend, tonight included), the JUnit
file, the Markdown summary and the trackers all show the same dict.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laplace_cli.core.enums import Likelihood
from laplace_cli.pipeline.baseline import Baseline, compare_with_baseline
from laplace_cli.pipeline.ci_outputs import write_ci_outputs
from laplace_cli.pipeline.evaluation import (
    EvaluationResult,
    add_identity,
    jsonable,
    save_evaluation_outputs,
)
from laplace_cli.pipeline.run_history import data_hash, record_run
from laplace_cli.pipeline.trackers import log_report

__all__ = ["PublishOptions", "publish_evaluation"]


@dataclass
class PublishOptions:
    """Where an evaluation goes (all optional)."""

    report: str | os.PathLike[str] | None = None
    plot: str | os.PathLike[str] | None = None
    html: str | os.PathLike[str] | None = None
    baseline: Baseline | None = None
    strict_baseline: bool = False
    history: str | os.PathLike[str] | None = None
    junit: str | os.PathLike[str] | None = None
    summary_md: str | os.PathLike[str] | None = None
    trackers: Sequence[str] = field(default_factory=list)


def publish_evaluation(
    result: EvaluationResult,
    likelihood: Likelihood,
    data_path: str | os.PathLike[str],
    options: PublishOptions,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Add the data hash and the baseline comparison to `result`, append it to the history,
    write the outputs and log to the trackers. Returns the paths written, by kind.

    Raises:
        BadInputError: `strict_baseline` and the baseline is not comparable (nothing written).
    """
    add_identity(result, extra)
    result.identity["data_hash"] = data_hash(data_path, str(result.identity.get("split")))
    if options.baseline is not None:
        current = {**result.to_dict(), **(extra or {})}
        result.baseline = compare_with_baseline(
            current, options.baseline, strict=options.strict_baseline
        )
    report = jsonable({**result.to_dict(), **(extra or {})})
    written: dict[str, str] = {}
    if options.history is not None:
        record_run(options.history, report)
        written["history"] = str(options.history)
    written |= save_evaluation_outputs(
        result,
        likelihood,
        report=options.report,
        plot=options.plot,
        html=options.html,
        extra=extra,
        history=Path(options.history) if options.history is not None else None,
    )
    written |= write_ci_outputs(report, junit=options.junit, summary_md=options.summary_md)
    if options.trackers:
        log_report(options.trackers, report)
    return written
