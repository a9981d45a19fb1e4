"""`laplace predict`: one row per input with mean, variance and uncertainty scores."""

from __future__ import annotations

from laplace_cli.cli.common import (
    check_device,
    check_factory,
    check_output_file,
    not_implemented,
    parse_json_object,
    require_file,
    require_input,
    resolve_format,
)
from laplace_cli.cli.options import (
    BatchSizeOpt,
    ColumnsOpt,
    DataOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    FormatOpt,
    InputOpt,
    IntervalOpt,
    LinkApproxOpt,
    ModelFactoryOpt,
    ModelKwargsOpt,
    ModelOverrideOpt,
    OutputFileOpt,
    PosteriorOpt,
    PredTypeOpt,
    QuietOpt,
    SamplesOpt,
    SeedOpt,
    SplitOpt,
    XKeyOpt,
)
from laplace_cli.enums import LinkApprox, PredType
from laplace_cli.errors import BadInputError

EXAMPLES = [
    "laplace predict -p post.st --input x.npz > rows.jsonl",
    "laplace predict -p post.st --data data.yaml --split test -o preds.csv",
]


def predict(
    posterior: PosteriorOpt,
    input_: InputOpt = None,
    data: DataOpt = None,
    split: SplitOpt = "test",
    x_key: XKeyOpt = None,
    columns: ColumnsOpt = None,
    output: OutputFileOpt = None,
    format_: FormatOpt = None,
    pred_type: PredTypeOpt = PredType.GLM,
    link_approx: LinkApproxOpt = LinkApprox.PROBIT,
    samples: SamplesOpt = 100,
    interval: IntervalOpt = 0.95,
    model: ModelOverrideOpt = None,
    model_factory: ModelFactoryOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Stream one row per input: prediction, probabilities or mean, variances, uncertainty.

    Rows go to stdout (JSONL) unless -o names a file (.csv or .jsonl). Inputs come from
    --input (a file, or - for stdin) or from a split of --data.
    """
    require_file(posterior, "--posterior")
    if (input_ is None) == (data is None):
        raise BadInputError("give exactly one of --input FILE|- and --data (with --split)")
    if input_ is not None:
        require_input(input_)
    if data is not None:
        require_file(data, "--data")
        if x_key is not None or columns is not None:
            raise BadInputError(
                "--x-key and --columns apply to --input; the data spec names its own columns"
            )
    if not 0.0 < interval < 1.0:
        raise BadInputError(f"--interval: expected a level in (0, 1), e.g. 0.95, got {interval}")
    check_output_file(output)
    resolve_format(format_, output)
    if model is not None:
        require_file(model, "--model")
    check_factory(model_factory)
    parse_json_object(model_kwargs, "--model-kwargs")
    check_device(device)
    raise not_implemented("predict")
