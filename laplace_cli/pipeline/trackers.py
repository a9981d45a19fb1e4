"""Experiment trackers (``evaluate --log mlflow|wandb|tensorboard``): thin adapters over the
report dict. Each library is an optional extra, imported only when asked for; a missing one is
bad input naming the extra to install. Where the run goes is the library's own configuration
(``MLFLOW_TRACKING_URI``, ``WANDB_MODE`` / ``WANDB_PROJECT``); TensorBoard writes to
``$LAPLACE_TENSORBOARD_DIR`` (default ``runs``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from laplace_cli.core.errors import BadInputError

__all__ = ["TRACKERS", "check_trackers", "flat_metrics", "log_report"]

#: Tracker name to (module imported to check it is installed, extra that installs it).
TRACKERS: dict[str, tuple[str, str]] = {
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
    "tensorboard": ("tensorboard", "tensorboard"),
}


def check_trackers(names: Sequence[str]) -> None:
    """Refuse, before any work, an unknown tracker or one whose library is not installed."""
    import importlib.util

    for name in names:
        if name not in TRACKERS:
            raise BadInputError(f"--log {name}: expected one of {', '.join(TRACKERS)}")
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise BadInputError(
                f"--log {name}: {module} is not installed: pip install 'laplace-cli[{extra}]'"
            )


def flat_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """``{"laplace/ece": 0.02, ...}``: every finite number of the rows, and the timings."""
    out: dict[str, float] = {}
    for row, metrics in report.get("rows", {}).items():
        for metric, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    out[f"{row}/{metric}"] = float(value)
    for name, seconds in report.get("timings", {}).items():
        if isinstance(seconds, (int, float)):
            out[f"timings/{name}"] = float(seconds)
    out["gates/failed"] = float(sum(bool(g.get("failed")) for g in report.get("gates", [])))
    return out


def _params(report: Mapping[str, Any]) -> dict[str, str]:
    params = {**report.get("settings", {}), **report.get("identity", {})}
    return {k: json.dumps(v) if not isinstance(v, str) else v for k, v in params.items()}


def _mlflow(report: Mapping[str, Any]) -> None:
    import mlflow

    with mlflow.start_run(run_name="laplace evaluate"):
        mlflow.log_params({k: v[:500] for k, v in _params(report).items()})
        mlflow.log_metrics({k.replace("/", "."): v for k, v in flat_metrics(report).items()})
        mlflow.log_dict(dict(report), "report.json")


def _wandb(report: Mapping[str, Any]) -> None:
    import wandb

    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "laplace-cli"),
        job_type="evaluate",
        config=_params(report),
    )
    try:
        run.log(flat_metrics(report))
        run.summary["report"] = json.dumps(report, default=str)
    finally:
        run.finish()


def _tensorboard(report: Mapping[str, Any]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=os.environ.get("LAPLACE_TENSORBOARD_DIR", "runs"))
    try:
        for name, value in flat_metrics(report).items():
            writer.add_scalar(name, value, 0)
        writer.add_text("report", "```\n" + json.dumps(report, indent=2, default=str) + "\n```")
    finally:
        writer.close()


_ADAPTERS: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "mlflow": _mlflow,
    "wandb": _wandb,
    "tensorboard": _tensorboard,
}


def log_report(names: Sequence[str], report: Mapping[str, Any]) -> None:
    """Send the report to each tracker named (checked with :func:`check_trackers` first)."""
    check_trackers(names)
    for name in names:
        _ADAPTERS[name](report)
