"""`laplace tune`: optimise the prior precision (and the observation noise for regression)."""

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
    JsonOpt,
    LinkApproxOpt,
    MethodOpt,
    ModelFactoryOpt,
    ModelKwargsOpt,
    ModelOverrideOpt,
    OutputFileOpt,
    PosteriorOpt,
    PredTypeOpt,
    PriorStructureOpt,
    QuietOpt,
    SeedOpt,
    SplitOpt,
    TuneLoss,
    TuneLossOpt,
)
from laplace_cli.enums import LinkApprox, PredType, PriorStructure, TuneMethod
from laplace_cli.errors import BadInputError

EXAMPLES = [
    "laplace tune --posterior post.st",
    "laplace tune -p post.st --method gridsearch --data data.yaml --loss nll -o tuned.st",
]


def tune(
    posterior: PosteriorOpt,
    method: MethodOpt = TuneMethod.MARGLIK,
    prior_structure: PriorStructureOpt = PriorStructure.LAYERWISE,
    data: DataOpt = None,
    split: SplitOpt = "val",
    pred_type: PredTypeOpt = PredType.GLM,
    link_approx: LinkApproxOpt = LinkApprox.PROBIT,
    loss: TuneLossOpt = TuneLoss.NLL,
    output: OutputFileOpt = None,
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
    """Optimise the prior precision of a posterior (and the observation noise for regression).

    marglik maximises the log marginal likelihood and needs no data; gridsearch minimises
    --loss of the predictive on --split. Without -o the posterior file is rewritten in place
    (atomically).
    """
    require_file(posterior, "--posterior")
    if method == TuneMethod.GRIDSEARCH and data is None:
        raise BadInputError(
            "--method gridsearch needs --data (a dataset spec with the --split to score)"
        )
    if data is not None:
        require_file(data, "--data")
    check_output_file(output)
    if model is not None:
        require_file(model, "--model")
    check_factory(model_factory)
    parse_json_object(model_kwargs, "--model-kwargs")
    check_device(device)
    raise not_implemented("tune")
