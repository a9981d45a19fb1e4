"""`laplace tune`: optimise the prior precision (and the observation noise for regression)."""

from __future__ import annotations

from laplace_cli.cli.common import (
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
from laplace_cli.core.enums import TuneMethod
from laplace_cli.core.errors import BadInputError

EXAMPLES = [
    "laplace tune --posterior post.st",
    "laplace tune -p post.st --method gridsearch --data data.yaml --loss nll -o tuned.st",
]


def tune(
    posterior: PosteriorOpt,
    method: MethodOpt = TuneMethod.MARGLIK,
    prior_structure: PriorStructureOpt = None,
    data: DataOpt = None,
    split: SplitOpt = "val",
    pred_type: PredTypeOpt = None,
    link_approx: LinkApproxOpt = None,
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
    check_device(device)
    spec = model_override(model, model_factory, model_kwargs)

    from laplace_cli.cli.console import emit_json, stderr_console
    from laplace_cli.pipeline.stages import load_posterior, resave
    from laplace_cli.pipeline.stages import tune as run_tune

    lp = load_posterior(
        posterior,
        model_override=spec,
        device=device or "auto",
        dtype=dtype.value if dtype is not None else None,
    )
    result = run_tune(
        lp,
        method=method.value,
        data_path=str(data) if data is not None else None,
        split=split,
        batch_size=batch_size,
        progress=progress_for(quiet),
        prior_structure=(
            prior_structure.value
            if prior_structure is not None
            else ("scalar" if method == TuneMethod.GRIDSEARCH else "layerwise")
        ),
        pred_type=pred_type.value if pred_type is not None else None,
        link_approx=link_approx.value if link_approx is not None else None,
        loss=loss.value,
        seed=seed if seed is not None else 0,
    )
    resave(lp, output or posterior)
    if json_:
        emit_json(result)
    elif not quiet:
        _print_result(result, stderr_console, output or posterior)


def _print_result(result: dict, console, path) -> None:
    from rich.table import Table

    prior = result.get("prior_precision")
    shown = (
        prior
        if not isinstance(prior, list) or len(prior) <= 6
        else f"{len(prior)} values, mean {sum(prior) / len(prior):.4g}"
    )
    console.print(f"tuned by {result.get('method')}: prior precision {shown}")
    if result.get("sigma_noise") is not None and result.get("likelihood", "") == "regression":
        console.print(f"sigma_noise {result['sigma_noise']}")
    if result.get("log_evidence") is not None:
        console.print(f"log marginal likelihood {result['log_evidence']:.6g}")
    curve = result.get("curve") or []
    if curve:
        table = Table(title=f"{result.get('loss', 'loss')} over the grid")
        table.add_column("prior precision", justify="right")
        table.add_column(str(result.get("loss", "loss")), justify="right")
        step = max(1, len(curve) // 20)
        for point in curve[::step]:
            value, loss_value = point[0], point[-1]
            table.add_row(f"{value:.4g}", "nan" if loss_value is None else f"{loss_value:.6g}")
        console.print(table)
    if result.get("on_edge"):
        console.print("[yellow]warning:[/] the optimum lies on the edge of the grid; widen it")
    console.print(f"wrote {path}")
