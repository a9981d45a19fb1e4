"""The evaluate stage: MAP, temperature scaling and Laplace side by side on one split.

Rows `map`, `temperature` (fitted on the validation split; absent without one) and `laplace`
map metric names to numbers; gates (`--fail-if`) are checked against them. This module runs the
stage; its pieces live by concept: collecting a split's outputs (`pipeline.split_outputs`),
scoring them into rows, intervals and tables (`pipeline.evaluation_scoring`), and the result and
its report / plot / HTML outputs (`pipeline.evaluation_report`); their public names are
re-exported here.

Under torchrun each rank runs the model and the predictive over its contiguous shard of every
split (`distributed.shard_loader`); rank 0 gathers the per-row outputs in row order and computes
the metrics, the temperature / variance scale and the gates exactly as one process would. Monte
Carlo predictives (`link_approx: mc`, `pred_type: nn`) draw from one stream per rank seeded alike,
so their estimates differ from one process's by Monte Carlo noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.datasets import load_dataset_spec
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.metrics import bootstrap
from laplace_cli.pipeline import distributed
from laplace_cli.pipeline.evaluation_report import (
    IDENTITY_KEYS,
    REPORT_SCHEMA_VERSION,
    EvaluationResult,
    add_identity,
    jsonable,
    save_evaluation_outputs,
)
from laplace_cli.pipeline.evaluation_scoring import WORSE_THAN_MAP, Scored, Scoring, score_splits
from laplace_cli.pipeline.gates import (
    check_intervals_available,
    evaluate_gates,
    gate_table,
    parse_gates,
)
from laplace_cli.pipeline.predict_stage import PredictOptions, default_pred_options
from laplace_cli.pipeline.split_outputs import SplitOutputs, collect_outputs
from laplace_cli.pipeline.stage_support import Progress, no_progress, split_loader

__all__ = [
    "IDENTITY_KEYS",
    "REPORT_SCHEMA_VERSION",
    "WORSE_THAN_MAP",
    "EvaluationResult",
    "SplitOutputs",
    "add_identity",
    "collect_outputs",
    "evaluate",
    "jsonable",
    "save_evaluation_outputs",
]


def evaluate(
    la: Laplace,
    data_path: str | Path,
    *,
    split: str = "test",
    val_split: str | None = "val",
    ood_data: str | Path | Mapping[str, str | Path] | None = None,
    ood_split: str = "test",
    options: PredictOptions | None = None,
    gates: list[str] | None = None,
    batch_size: int | None = None,
    n_bins: int = 15,
    progress: Progress = no_progress,
    shard: bool = True,
    conformal_level: float = 0.9,
    per_label_temperature: bool = False,
    gate_rows: dict[str, dict[str, Any]] | None = None,
    binning: str = "equal-width",
    bootstrap_settings: bootstrap.BootstrapSettings | None = None,
) -> EvaluationResult | None:
    """Score MAP, temperature scaling and Laplace on `split`; check `gates` (failures recorded).

    `n_bins` and `binning` (`equal-width` or `equal-mass`) set the bins of `ece` / `mce`. With
    `bootstrap_settings`, every row's metrics get bootstrap intervals and paired differences
    (`EvaluationResult.intervals`, `metrics.bootstrap`) that gates can read (`ece.upper`,
    `nll.diff_vs_map.lower`); a gate on a bound without them is refused before any work.

    `gate_rows` are more rows the gates may read (e.g. `baseline.laplace` from `--baseline`).

    `ood_data` is one dataset spec, or several by name (`{name: spec}`): the first set's AUROC
    and FPR@95 go into the rows as `auroc` / `fpr95`, every named set's as `auroc_<name>` /
    `fpr95_<name>`, and all sets, rows and scores into the `ood` table. With a validation split
    the `conformal` table calibrates at `conformal_level`; `per_label_temperature` fits one
    temperature per label for binary / multi-label models instead of one shared.

    Under torchrun (and `shard`) every rank must call this: the ranks share the predictive
    work, rank 0 returns the result of the whole split (the same as one process) and the other
    ranks return None.
    """
    options = options or PredictOptions()
    parsed_gates = _checked_gates(gates, bootstrap_settings, binning)  # before any work
    if getattr(la, "output_positions", None) is not None:  # (B, C, *S): scored per position
        return _evaluate_dense(
            la, data_path, split, val_split, ood_data, ood_split, options, parsed_gates,
            batch_size, n_bins, binning, progress, gate_rows, bootstrap_settings,
        )  # fmt: skip
    ctx = distributed.context(la.device) if shard else None
    pred_type, link_approx = default_pred_options(la, options)
    collect = _collector(la, options, batch_size, progress, ctx)
    timings: dict[str, float] = {}
    test, val, oods = _predict_splits(
        collect, data_path, split, val_split, ood_data, ood_split, timings
    )
    if test is None:
        return None  # not rank 0: the metrics are computed there
    how = Scoring(n_bins, binning, per_label_temperature, bootstrap_settings, conformal_level)
    scored = score_splits(la, test, val, oods, how, options.seed, isinstance(ood_data, Mapping))
    timings.update(scored.timings)
    used_val = val_split if val is not None else None
    settings = _evaluation_settings(la, scored, split, used_val, options, pred_type, link_approx)
    table = gate_table({**scored.rows, **(gate_rows or {})}, scored.intervals)
    results = evaluate_gates(parsed_gates, table) if parsed_gates else []
    return EvaluationResult(
        rows=scored.rows,
        settings=settings,
        gates=[r.to_dict() for r in results],
        timings=timings,
        plot_inputs=scored.plots,
        identity=_data_identity(data_path, split, ood_data, ood_split),
        tables=scored.extra.tables,
        curves=scored.extra.curves,
        intervals=scored.intervals,
    )


def _evaluate_dense(
    la: Laplace,
    data_path: str | Path,
    split: str,
    val_split: str | None,
    ood_data: Any,
    ood_split: str,
    options: PredictOptions,
    parsed_gates: list[Any],
    batch_size: int | None,
    n_bins: int,
    binning: str,
    progress: Progress,
    gate_rows: dict[str, dict[str, Any]] | None,
    bootstrap_settings: Any,
) -> EvaluationResult:
    """`evaluate` of a dense-output posterior (`pipeline.dense_evaluation`), one process."""
    from laplace_cli.pipeline.dense_evaluation import score_dense

    if distributed.context(la.device) is not None:
        raise BadInputError("evaluate of dense outputs runs in one process: run without torchrun")
    scored = score_dense(
        la, data_path, split=split, val_split=val_split, options=options,
        batch_size=batch_size, n_bins=n_bins, binning=binning, progress=progress,
        ood_data=ood_data, bootstrap_settings=bootstrap_settings,
    )  # fmt: skip
    table = gate_table({**scored.rows, **(gate_rows or {})}, {})
    results = evaluate_gates(parsed_gates, table) if parsed_gates else []
    return EvaluationResult(
        rows=scored.rows,
        settings=scored.settings,
        gates=[r.to_dict() for r in results],
        timings=scored.timings,
        plot_inputs=scored.plot_inputs,
        identity=_data_identity(data_path, split, None, ood_split),
        tables=scored.tables,
    )


def _checked_gates(
    gates: list[str] | None, bootstrap_settings: bootstrap.BootstrapSettings | None, binning: str
) -> list[Any]:
    """Parse the gates and check the binning, so that bad input fails before any prediction."""
    parsed_gates = parse_gates(gates or [])  # malformed gates fail before any work
    check_intervals_available(parsed_gates, bootstrap_settings is not None)
    if binning not in bootstrap.BINNINGS:
        raise BadInputError(
            f"binning: expected one of {', '.join(bootstrap.BINNINGS)}, got {binning!r}"
        )
    return parsed_gates


def _collector(
    la: Laplace, options: PredictOptions, batch_size: int | None, progress: Progress, ctx: Any
) -> Callable[..., Any]:
    """`outputs(spec, split, label, source, **loader_kw)`: one split's outputs (None off rank 0)."""

    def outputs(split_spec: Any, name: str, label: str, source: str, **kw: Any) -> Any:
        loader = split_loader(split_spec, name, la.likelihood, batch_size, any_order=True, **kw)
        return collect_outputs(la, loader, options, progress, label, source=source, ctx=ctx)

    return outputs


def _predict_splits(
    outputs: Callable[..., Any],
    data_path: str | Path,
    split: str,
    val_split: str | None,
    ood_data: str | Path | Mapping[str, str | Path] | None,
    ood_split: str,
    timings: dict[str, float],
) -> tuple[Any, Any, dict[str, Any]]:
    """Run the predictive over the test, validation and OOD splits (in that order), timed.

    Every rank runs this (the predictive work is shared); the outputs are None off rank 0.
    """
    spec = load_dataset_spec(data_path)
    start = time.perf_counter()
    test = outputs(spec, split, f"evaluate {split}", f"{data_path}: split {split!r}")
    timings[f"predict_{split}"] = time.perf_counter() - start
    val = None
    if val_split and val_split in spec.splits:
        start = time.perf_counter()
        val = outputs(spec, val_split, f"evaluate {val_split}", f"{data_path}: split {val_split!r}")
        timings[f"predict_{val_split}"] = time.perf_counter() - start
    ood_sets = dict(ood_data) if isinstance(ood_data, Mapping) else {}
    if ood_data is not None and not ood_sets:
        ood_sets = {"ood": ood_data}
    oods: dict[str, Any] = {}
    for name, path in ood_sets.items():
        # Only the inputs are used: an OOD split needs no targets (none are scored).
        oods[name] = outputs(
            load_dataset_spec(path),
            ood_split,
            f"evaluate ood {name}",
            f"{path}: split {ood_split!r}",
            require_labels=False,
        )
    return test, val, oods


def _evaluation_settings(
    la: Laplace,
    scored: Scored,
    split: str,
    val_split: str | None,
    options: PredictOptions,
    pred_type: Any,
    link_approx: Any,
) -> dict[str, Any]:
    """The `settings` of the report: what was evaluated and how (keys in report order)."""
    return {
        "split": split,
        "val_split": val_split,  # None when no validation split was scored
        "pred_type": pred_type.value,
        # Regression has no link function: no approximation of one is used (None, "n/a").
        "link_approx": None if la.likelihood == Likelihood.REGRESSION else link_approx.value,
        "n_samples": options.n_samples,
        **_posterior_settings(la),
        "n_test": scored.n_test,
        **{k: v for k, v in scored.baseline.items() if v is not None},
        **(
            {"conformal_level": scored.how.conformal_level}
            if "conformal" in scored.extra.tables
            else {}
        ),
        **(
            {"n_bins": scored.how.n_bins, "binning": scored.how.binning}
            if la.likelihood != Likelihood.REGRESSION
            else {}
        ),
        "bootstrap": scored.recorded_bootstrap,
    }


def _posterior_settings(la: Laplace) -> dict[str, Any]:
    """The posterior's settings recorded in the report."""
    return {
        "likelihood": la.likelihood.value,
        "structure": la.hessian_structure.value,
        "subset": la.subset_of_weights.value,
        "prior_precision": [float(v) for v in la.prior_precision.reshape(-1)],
        "sigma_noise": [float(v) for v in la.sigma_noise.reshape(-1)],
        "temperature_la": la.temperature,
    }


def _data_identity(
    data_path: str | Path, split: str, ood_data: Any, ood_split: str
) -> dict[str, Any]:
    """The data half of a report's identity block, with the time and the versions."""
    from datetime import datetime, timezone

    from laplace_cli.core.version import __version__

    identity: dict[str, Any] = {"data": str(Path(data_path).resolve()), "split": split}
    if isinstance(ood_data, Mapping):  # named OOD sets (`--ood-data name=spec`)
        identity["ood_data"] = {k: str(Path(v).resolve()) for k, v in ood_data.items()}
        identity["ood_split"] = ood_split
    elif ood_data is not None:
        identity["ood_data"] = str(Path(ood_data).resolve())
        identity["ood_split"] = ood_split
    identity["created"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    identity["laplace_cli"] = __version__
    identity["torch"] = torch.__version__
    return identity
