"""`laplace evaluate`: score MAP, temperature scaling and Laplace on a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from laplace_cli.cli.common import (
    apply_threads,
    check_device,
    check_output_file,
    model_override,
    progress_for,
    require_file,
)
from laplace_cli.cli.options import (
    BaselineOpt,
    BatchSizeOpt,
    BinningOpt,
    BinsOpt,
    BootstrapOpt,
    ConfidenceOpt,
    ConformalLevelOpt,
    DataOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    FailIfOpt,
    HistoryOpt,
    HtmlOpt,
    IntervalMethodOpt,
    JsonOpt,
    JunitOpt,
    LinkApproxOpt,
    LogOpt,
    ModelFactoryOpt,
    ModelKwargsOpt,
    ModelOverrideOpt,
    OodDataOpt,
    PerLabelTemperatureOpt,
    PlotOpt,
    PosteriorOpt,
    PredTypeOpt,
    QuietOpt,
    ReportOpt,
    SamplesOpt,
    SeedOpt,
    SplitOpt,
    StrictBaselineOpt,
    SummaryMdOpt,
    ThreadsOpt,
    TrustCheckpointOpt,
)
from laplace_cli.core.enums import Dtype, LinkApprox, PredType

EXAMPLES = [
    "laplace evaluate -p post.st --data data.yaml --report report.json",
    "laplace evaluate -p post.st --data data.yaml --fail-if 'ece>0.05' --json",
    "laplace evaluate -p post.st --data data.yaml --history runs.db --baseline last "
    "--fail-if 'laplace.ece > baseline.laplace.ece + 0.01' --junit gates.xml",
    "laplace evaluate -p post.st --data data.yaml --bootstrap 1000 "
    "--fail-if 'laplace.ece.upper > 0.05' --fail-if 'laplace.nll.diff_vs_map.lower > 0'",
]


def evaluate(
    posterior: PosteriorOpt,
    data: DataOpt,
    split: SplitOpt = "test",
    ood_data: OodDataOpt = None,
    conformal_level: ConformalLevelOpt = 0.9,
    per_label_temperature: PerLabelTemperatureOpt = False,
    pred_type: PredTypeOpt = None,
    link_approx: LinkApproxOpt = None,
    samples: SamplesOpt = 100,
    report: ReportOpt = None,
    plot: PlotOpt = None,
    html: HtmlOpt = None,
    fail_if: FailIfOpt = None,
    bootstrap: BootstrapOpt = 0,
    confidence: ConfidenceOpt = 0.95,
    interval_method: IntervalMethodOpt = "prediction",
    bins: BinsOpt = 15,
    binning: BinningOpt = "equal-width",
    baseline: BaselineOpt = None,
    strict_baseline: StrictBaselineOpt = False,
    history: HistoryOpt = None,
    junit: JunitOpt = None,
    summary_md: SummaryMdOpt = None,
    log: LogOpt = None,
    model: ModelOverrideOpt = None,
    model_factory: ModelFactoryOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    trust_checkpoint: TrustCheckpointOpt = False,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    seed: SeedOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Score the MAP model, temperature scaling and the Laplace predictive on a split.

    Metrics: acc, nll, ece, mce, brier (classification); rmse, nll, crps, coverage
    (regression); AUROC with --ood-data. Also selective prediction (AURC), split conformal
    coverage and set size at --conformal-level, and per-set OOD tables (docs/uncertainty.md).
    With --fail-if, exits 1 when a gate holds.
    --baseline compares with a previous run, --history records every run in an SQLite file,
    --junit / --summary-md write what CI systems show (docs/ci.md).
    Under torchrun the processes share the predictive work; rank 0 reports.
    """
    flags = dict(locals())  # the flags by name, for _request (which takes what it needs)
    ood = _check_flags(posterior, data, ood_data, report, plot, html, fail_if)
    check_conformal_level(conformal_level, "--conformal-level")
    boot = _check_bootstrap_flags(fail_if, bootstrap, confidence, interval_method, binning, seed)
    base = _check_ci_flags(fail_if, baseline, history, junit, summary_md, log)
    if base is not None and strict_baseline:
        from laplace_cli.pipeline.baseline import refuse_other_data

        refuse_other_data(base, data, split)
    apply_threads(threads)
    check_device(device)
    spec = model_override(model, model_factory, model_kwargs, trust_checkpoint)
    _require_matplotlib(plot, html)

    from laplace_cli.pipeline.evaluate_file import evaluate_posterior_file

    done = evaluate_posterior_file(_request(ood, boot, base, spec, **flags), progress_for(quiet))
    if done is not None:  # None: not rank 0 under torchrun
        _report(*done, json_, quiet)
        raise_for_gates(done[0])


def _request(
    ood: Path | dict[str, Path] | None,
    boot: Any,
    base: Any,
    spec: Any,
    /,
    *,
    posterior: Path,
    data: Path,
    split: str,
    conformal_level: float,
    per_label_temperature: bool,
    pred_type: PredType | None,
    link_approx: LinkApprox | None,
    samples: int,
    report: Path | None,
    plot: Path | None,
    html: Path | None,
    fail_if: list[str] | None,
    bins: int,
    binning: str,
    strict_baseline: bool,
    history: Path | None,
    junit: Path | None,
    summary_md: Path | None,
    log: list[str] | None,
    trust_checkpoint: bool,
    batch_size: int | None,
    device: str | None,
    dtype: Dtype | None,
    seed: int | None,
    **_other_flags: Any,
) -> Any:
    """The EvaluateRequest of the checked flags, with the OOD spec(s) `ood`, the bootstrap
    settings `boot`, the baseline `base` and the model override `spec` derived from them."""
    from laplace_cli.pipeline.evaluate_file import EvaluateRequest
    from laplace_cli.pipeline.predict_stage import PredictOptions
    from laplace_cli.pipeline.publish import PublishOptions

    return EvaluateRequest(
        posterior=posterior,
        data=data,
        split=split,
        ood_data=ood,
        conformal_level=conformal_level,
        per_label_temperature=per_label_temperature,
        options=PredictOptions(
            pred_type=pred_type.value if pred_type is not None else None,
            link_approx=link_approx.value if link_approx is not None else None,
            n_samples=samples,
            seed=seed if seed is not None else 0,
        ),
        gates=fail_if,
        batch_size=batch_size,
        n_bins=bins,
        binning=binning,
        bootstrap=boot,
        model_override=spec,
        trust_checkpoint=trust_checkpoint,
        device=device or "auto",
        dtype=dtype.value if dtype is not None else None,
        outputs=PublishOptions(
            report=report,
            plot=plot,
            html=html,
            baseline=base,
            strict_baseline=strict_baseline,
            history=history,
            junit=junit,
            summary_md=summary_md,
            trackers=log or [],
        ),
    )


def _check_bootstrap_flags(
    fail_if: list[str] | None,
    n_resamples: int,
    confidence: float,
    interval: str,
    binning: str,
    seed: int | None,
) -> Any:
    """The bootstrap settings (None for --bootstrap 0), checked before any work; a gate on a
    bound (`ece.upper`) without --bootstrap is refused here (exit 2)."""
    from laplace_cli.core.errors import BadInputError
    from laplace_cli.metrics.bootstrap import BINNINGS, METHODS, BootstrapSettings
    from laplace_cli.metrics.checks import check_level
    from laplace_cli.pipeline.gates import check_intervals_available, parse_gates

    if binning not in BINNINGS:
        raise BadInputError(f"--binning: expected one of {', '.join(BINNINGS)}, got {binning!r}")
    check_level(confidence, "--confidence")
    if interval not in METHODS:
        raise BadInputError(
            f"--interval-method: expected one of {', '.join(METHODS)}, got {interval!r}"
        )
    check_intervals_available(parse_gates(fail_if or []), n_resamples > 0)
    if n_resamples == 0:
        return None
    return BootstrapSettings(
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed if seed is not None else 0,
        method=interval,
    )


def _check_flags(
    posterior: Path,
    data: Path,
    ood_data: list[str] | None,
    report: Path | None,
    plot: Path | None,
    html: Path | None,
    fail_if: list[str] | None,
) -> Path | dict[str, Path] | None:
    """Check the input files, the output files and the gates before any work; return the OOD
    spec (one path) or specs by name (`--ood-data NAME=SPEC`, repeatable)."""
    from laplace_cli.pipeline.gates import parse_gates

    require_file(posterior, "--posterior")
    require_file(data, "--data")
    ood = parse_ood_data(ood_data or [])
    for path in ood.values() if isinstance(ood, dict) else [ood] if ood else []:
        require_file(path, "--ood-data")
    check_output_file(report, "--report")
    check_output_file(plot, "--plot")
    check_output_file(html, "--html")
    parse_gates(fail_if or [])
    return ood


def parse_ood_data(values: list[str]) -> Path | dict[str, Path] | None:
    """`--ood-data` values: one SPEC, or NAME=SPEC pairs (names are identifiers, unique; the
    report's rows get `auroc_NAME` / `fpr95_NAME`)."""
    import re

    from laplace_cli.core.errors import BadInputError

    if not values:
        return None
    named: dict[str, Path] = {}
    for value in values:
        name, sep, spec = value.partition("=")
        if not sep or Path(value).exists():  # a bare spec (a file name may hold "=")
            if len(values) > 1:
                raise BadInputError(
                    f"--ood-data {value!r}: with several OOD sets name each one: NAME=SPEC"
                )
            return Path(value)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise BadInputError(
                f"--ood-data {value!r}: NAME must be an identifier (letters, digits, _), "
                "e.g. rot90=rotated.yaml"
            )
        if name in named:
            raise BadInputError(f"--ood-data: the name {name!r} is given twice; use another")
        named[name] = Path(spec)
    return named


def check_conformal_level(level: float, flag: str) -> None:
    """A coverage level strictly between 0 and 1."""
    from laplace_cli.core.errors import BadInputError

    if not 0.0 < level < 1.0:
        raise BadInputError(f"{flag}: expected a level strictly between 0 and 1, e.g. 0.9")


def _check_ci_flags(
    fail_if: list[str] | None,
    baseline: str | None,
    history: Path | None,
    junit: Path | None,
    summary_md: Path | None,
    log: list[str] | None,
) -> Any:
    """Check the baseline, the history file, the CI outputs and the trackers before any work;
    return the baseline (or None)."""
    from laplace_cli.io.history import check_history_file
    from laplace_cli.pipeline.baseline import check_baseline_gates, load_baseline
    from laplace_cli.pipeline.gates import parse_gates
    from laplace_cli.pipeline.trackers import check_trackers

    check_output_file(junit, "--junit")
    check_output_file(summary_md, "--summary-md")
    if history is not None:
        check_history_file(history)
    check_trackers(log or [])
    base = load_baseline(baseline, history) if baseline is not None else None
    check_baseline_gates(parse_gates(fail_if or []), base)
    return base


def _require_matplotlib(plot: Path | None, html: Path | None) -> None:
    """Fail now, before the work, when --plot or --html is asked for and matplotlib is missing."""
    if plot is not None or html is not None:
        from laplace_cli.pipeline.report import figure_class

        figure_class()


def _report(result: Any, extra: dict[str, Any], json_: bool, quiet: bool) -> None:
    """The evaluation: JSON on stdout with --json, tables on stderr otherwise."""
    from laplace_cli.cli.console import emit_json, stderr_console
    from laplace_cli.cli.render import print_evaluation

    if json_:
        emit_json({**result.to_dict(), **extra})
    elif not quiet:
        print_evaluation(result, stderr_console)


def raise_for_gates(result) -> None:
    from laplace_cli.core.errors import GateFailed

    failed = [g["message"] for g in result.gates if g["failed"]]
    if failed:
        raise GateFailed("; ".join(failed))
