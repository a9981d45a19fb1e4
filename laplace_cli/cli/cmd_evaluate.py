"""`laplace evaluate`: score MAP, temperature scaling and Laplace on a split."""

from __future__ import annotations

from laplace_cli.cli.common import (
    check_device,
    check_factory,
    check_output_file,
    not_implemented,
    parse_json_object,
    require_file,
)
from laplace_cli.cli.options import (
    BatchSizeOpt,
    DataOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    FailIfOpt,
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
)
from laplace_cli.enums import LinkApprox, PredType

EXAMPLES = [
    "laplace evaluate -p post.st --data data.yaml --report report.json",
    "laplace evaluate -p post.st --data data.yaml --fail-if 'ece>0.05' --json",
]


def evaluate(
    posterior: PosteriorOpt,
    data: DataOpt,
    split: SplitOpt = "test",
    ood_data: OodDataOpt = None,
    pred_type: PredTypeOpt = PredType.GLM,
    link_approx: LinkApproxOpt = LinkApprox.PROBIT,
    samples: SamplesOpt = 100,
    report: ReportOpt = None,
    plot: PlotOpt = None,
    fail_if: FailIfOpt = None,
    model: ModelOverrideOpt = None,
    model_factory: ModelFactoryOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    seed: SeedOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Score the MAP model, temperature scaling and the Laplace predictive on a split.

    Metrics: acc, nll, ece, mce, brier (classification); rmse, nll, crps, coverage
    (regression); AUROC with --ood-data. With --fail-if, exits 1 when a gate holds.
    """
    from laplace_cli.gates import parse_gates

    require_file(posterior, "--posterior")
    require_file(data, "--data")
    if ood_data is not None:
        require_file(ood_data, "--ood-data")
    check_output_file(report, "--report")
    check_output_file(plot, "--plot")
    parse_gates(fail_if or [])
    if model is not None:
        require_file(model, "--model")
    check_factory(model_factory)
    parse_json_object(model_kwargs, "--model-kwargs")
    check_device(device)
    raise not_implemented("evaluate")
