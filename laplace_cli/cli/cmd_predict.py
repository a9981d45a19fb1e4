"""`laplace predict`: one row per input with mean, variance and uncertainty scores."""

from __future__ import annotations

from laplace_cli.cli.common import (
    check_device,
    check_factory,
    check_output_file,
    model_override,
    parse_json_object,
    progress_for,
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
    pred_type: PredTypeOpt = None,
    link_approx: LinkApproxOpt = None,
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
        if x_key is not None:
            raise BadInputError("--x-key applies to --input; the data spec names its own keys")
    if not 0.0 < interval < 1.0:
        raise BadInputError(f"--interval: expected a level in (0, 1), e.g. 0.95, got {interval}")
    check_output_file(output)
    resolve_format(format_, output)
    if model is not None:
        require_file(model, "--model")
    check_factory(model_factory)
    parse_json_object(model_kwargs, "--model-kwargs")
    check_device(device)
    spec = model_override(model, model_factory, model_kwargs)
    fmt = resolve_format(format_, output)

    import sys

    from laplace_cli.enums import Likelihood
    from laplace_cli.io.datasets import load_dataset_spec
    from laplace_cli.io.tabular import iter_feature_chunks
    from laplace_cli.io.writers import RowWriter
    from laplace_cli.pipeline import (
        PredictOptions,
        iter_prediction_rows,
        load_posterior,
        loader_chunks,
        split_loader,
    )

    lp = load_posterior(
        posterior,
        model_override=spec,
        device=device or "auto",
        dtype=dtype.value if dtype is not None else None,
    )
    la = lp.la
    rows_per_chunk = batch_size or 256
    if input_ is not None:
        keys = [k.strip() for k in x_key.split(",")] if x_key and "," in x_key else x_key
        chunks = iter_feature_chunks(input_, x_key=keys, chunk_rows=rows_per_chunk)
        total = None
    else:
        loader = split_loader(load_dataset_spec(data), split, la.likelihood, batch_size)
        chunks = loader_chunks(loader)
        total = len(loader)
    options = PredictOptions(
        pred_type=pred_type.value if pred_type is not None else None,
        link_approx=link_approx.value if link_approx is not None else None,
        n_samples=samples,
        interval=interval,
        seed=seed if seed is not None else 0,
    )
    fields = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    single = la.likelihood == Likelihood.REGRESSION and (la.n_outputs or 1) == 1
    # Rows are streamed, not written atomically: a consumer may read them as they come, and a
    # failure half way leaves only whole rows behind (each row is one write).
    stream = open(output, "w", encoding="utf-8", newline="") if output is not None else sys.stdout
    try:
        writer = RowWriter(stream, fmt.value, fields, single_output=single)
        batches = iter_prediction_rows(la, chunks, options)
        for rows in progress_for(quiet)(batches, total, "predict"):
            writer.write_batch(rows)
    finally:
        if output is not None:
            stream.close()
