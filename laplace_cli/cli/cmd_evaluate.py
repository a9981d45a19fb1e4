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
    BatchSizeOpt,
    DataOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    FailIfOpt,
    HtmlOpt,
    JsonOpt,
    LinkApproxOpt,
    ModelFactoryOpt,
    ModelKwargsOpt,
    ModelOverrideOpt,
    OodDataOpt,
    PlotOpt,
    PosteriorOpt,
    PredTypeOpt,
    QuietOpt,
    ReportOpt,
    SamplesOpt,
    SeedOpt,
    SplitOpt,
    ThreadsOpt,
    TrustCheckpointOpt,
)

EXAMPLES = [
    "laplace evaluate -p post.st --data data.yaml --report report.json",
    "laplace evaluate -p post.st --data data.yaml --fail-if 'ece>0.05' --json",
]


def evaluate(
    posterior: PosteriorOpt,
    data: DataOpt,
    split: SplitOpt = "test",
    ood_data: OodDataOpt = None,
    pred_type: PredTypeOpt = None,
    link_approx: LinkApproxOpt = None,
    samples: SamplesOpt = 100,
    report: ReportOpt = None,
    plot: PlotOpt = None,
    html: HtmlOpt = None,
    fail_if: FailIfOpt = None,
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
    (regression); AUROC with --ood-data. With --fail-if, exits 1 when a gate holds.
    Under torchrun the processes share the predictive work; rank 0 reports.
    """
    _check_flags(posterior, data, ood_data, report, plot, html, fail_if)
    apply_threads(threads)
    check_device(device)
    spec = model_override(model, model_factory, model_kwargs, trust_checkpoint)
    _require_matplotlib(plot, html)

    from laplace_cli.pipeline import distributed

    # Under torchrun every rank predicts its shard of the splits; rank 0 gathers the outputs,
    # computes the metrics of the whole split and alone writes and prints.
    distributed.context(device or "auto")

    from laplace_cli.pipeline.evaluation import evaluate as run_evaluate
    from laplace_cli.pipeline.evaluation import save_evaluation_outputs
    from laplace_cli.pipeline.model_loading import load_posterior
    from laplace_cli.pipeline.predict_stage import PredictOptions

    lp = load_posterior(
        posterior,
        model_override=spec,
        trust_checkpoint=trust_checkpoint,
        device=device or "auto",
        dtype=dtype.value if dtype is not None else None,
    )
    options = PredictOptions(
        pred_type=pred_type.value if pred_type is not None else None,
        link_approx=link_approx.value if link_approx is not None else None,
        n_samples=samples,
        seed=seed if seed is not None else 0,
    )
    result = run_evaluate(
        lp.la,
        data,
        split=split,
        ood_data=ood_data,
        options=options,
        gates=fail_if,
        batch_size=batch_size,
        progress=progress_for(quiet),
    )
    if result is None:
        return  # not rank 0
    extra = _posterior_identity(posterior, lp)
    save_evaluation_outputs(
        result, lp.la.likelihood, report=report, plot=plot, html=html, extra=extra
    )
    _report(result, extra, json_, quiet)
    raise_for_gates(result)


def _check_flags(
    posterior: Path,
    data: Path,
    ood_data: Path | None,
    report: Path | None,
    plot: Path | None,
    html: Path | None,
    fail_if: list[str] | None,
) -> None:
    """Check the input files, the output files and the gates before any work."""
    from laplace_cli.pipeline.gates import parse_gates

    require_file(posterior, "--posterior")
    require_file(data, "--data")
    if ood_data is not None:
        require_file(ood_data, "--ood-data")
    check_output_file(report, "--report")
    check_output_file(plot, "--plot")
    check_output_file(html, "--html")
    parse_gates(fail_if or [])


def _require_matplotlib(plot: Path | None, html: Path | None) -> None:
    """Fail now, before the work, when --plot or --html is asked for and matplotlib is missing."""
    if plot is not None or html is not None:
        from laplace_cli.pipeline.report import figure_class

        figure_class()


def _posterior_identity(posterior: Path, lp: Any) -> dict[str, Any]:
    """What the report says of the posterior evaluated: its file, fingerprint and model."""
    return {
        "posterior": str(posterior),
        "fingerprint": lp.metadata.get("fingerprint"),
        "model": lp.loaded.ref.to_dict(),
    }


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
