"""`laplace tune`: optimise the prior precision (and the observation noise for regression)."""

from __future__ import annotations

from pathlib import Path

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
    ConformalCalibrateOpt,
    DataOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    GridMaxOpt,
    GridMinOpt,
    GridSizeOpt,
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
    ThreadsOpt,
    TrustCheckpointOpt,
    TuneLoss,
    TuneLossOpt,
)
from laplace_cli.core.enums import PriorStructure, TuneMethod
from laplace_cli.core.errors import BadInputError

EXAMPLES = [
    "laplace tune --posterior post.st",
    "laplace tune -p post.st --method gridsearch --data data.yaml --loss nll -o tuned.st",
    "laplace tune -p post.st --method gridsearch --data data.yaml --grid-min -2 --grid-max 6",
]


def tune(
    posterior: PosteriorOpt,
    method: MethodOpt = TuneMethod.MARGLIK,
    prior_structure: PriorStructureOpt = PriorStructure.SCALAR,
    data: DataOpt = None,
    split: SplitOpt = "val",
    pred_type: PredTypeOpt = None,
    link_approx: LinkApproxOpt = None,
    loss: TuneLossOpt = TuneLoss.NLL,
    grid_min: GridMinOpt = None,
    grid_max: GridMaxOpt = None,
    grid_size: GridSizeOpt = None,
    conformal: ConformalCalibrateOpt = None,
    output: OutputFileOpt = None,
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
    """Optimise the prior precision of a posterior (and the observation noise for regression).

    marglik maximises the log marginal likelihood and needs no data; for regression it tunes
    the observation noise sigma together with the prior precision (the Python API keeps sigma
    unless asked with tune_sigma_noise=True). gridsearch minimises
    --loss of the predictive on --split over a log-spaced grid (--grid-min, --grid-max,
    --grid-size). With --data, marglik also scores the tuned posterior and the MAP on --split.
    Either way a warning says when the tuned posterior is worse than the MAP there. Without -o
    the posterior file is rewritten in place (atomically). --conformal LEVEL (repeatable) then
    stores split conformal thresholds calibrated on --split, for 'laplace predict --conformal'.
    """
    grid = _check_flags(posterior, method, data, grid_min, grid_max, grid_size, output, conformal)
    apply_threads(threads)
    check_device(device)
    spec = model_override(model, model_factory, model_kwargs, trust_checkpoint)

    from laplace_cli.cli.console import captured_warnings, emit_json, stderr_console
    from laplace_cli.pipeline.model_loading import load_posterior, resave
    from laplace_cli.pipeline.tune_stage import tune as run_tune

    lp = load_posterior(
        posterior,
        model_override=spec,
        trust_checkpoint=trust_checkpoint,
        device=device or "auto",
        dtype=dtype.value if dtype is not None else None,
    )
    # Warnings (optimum on the grid's edge, worse than the MAP, no convergence) are printed
    # once in the tool's style on stderr (--json too) and listed in the --json document.
    with captured_warnings() as warned:
        result = run_tune(
            lp,
            method=method.value,
            data_path=str(data) if data is not None else None,
            split=split,
            batch_size=batch_size,
            progress=progress_for(quiet),
            prior_structure=(prior_structure or PriorStructure.SCALAR).value,
            pred_type=pred_type.value if pred_type is not None else None,
            link_approx=link_approx.value if link_approx is not None else None,
            loss=loss.value,
            seed=seed if seed is not None else 0,
            conformal=conformal,
            **grid,
        )
        if result.get("on_edge") and method == TuneMethod.GRIDSEARCH:
            _warn_grid_edge(grid)
    result["warnings"] = list(warned)
    resave(lp, output or posterior)
    if json_:
        emit_json(result)
    elif not quiet:
        _print_result(result, stderr_console, output or posterior)


def _check_flags(
    posterior: Path,
    method: TuneMethod,
    data: Path | None,
    grid_min: float | None,
    grid_max: float | None,
    grid_size: int | None,
    output: Path | None,
    conformal: list[float] | None = None,
) -> dict:
    """Check the files and flags; the grid as `optimize_prior_precision` keywords."""
    require_file(posterior, "--posterior")
    if method == TuneMethod.GRIDSEARCH and data is None:
        raise BadInputError(
            "--method gridsearch needs --data (a dataset spec with the --split to score)"
        )
    if data is not None:
        require_file(data, "--data")
    grid = _grid_options(method, grid_min, grid_max, grid_size)
    check_output_file(output)
    for level in conformal or []:
        if not 0.0 < level < 1.0:
            raise BadInputError(f"--conformal: expected a level in (0, 1), e.g. 0.9, got {level}")
    if conformal and data is None:
        raise BadInputError(
            "--conformal needs --data (a dataset spec with the --split to calibrate on)"
        )
    return grid


def _warn_grid_edge(grid: dict) -> None:
    """Warn that the gridsearch optimum is on the grid's edge, and how to widen the grid."""
    import warnings

    from laplace_cli.core.errors import LaplaceWarning

    lo, hi = grid.get("log_prior_prec_min", -4.0), grid.get("log_prior_prec_max", 4.0)
    warnings.warn(
        f"the grid spans prior precisions 1e{lo:g} to 1e{hi:g}: widen it with "
        "--grid-min / --grid-max (log10 of the prior precision)",
        LaplaceWarning,
        stacklevel=1,
    )


def _grid_options(
    method: TuneMethod, grid_min: float | None, grid_max: float | None, grid_size: int | None
) -> dict:
    """--grid-min/--grid-max/--grid-size as `optimize_prior_precision` keywords, checked."""
    given = [
        name
        for name, value in (
            ("--grid-min", grid_min),
            ("--grid-max", grid_max),
            ("--grid-size", grid_size),
        )
        if value is not None
    ]
    if given and method != TuneMethod.GRIDSEARCH:
        raise BadInputError(
            f"{', '.join(given)} set the grid of --method gridsearch; marglik optimises the "
            "prior precision without a grid (add --method gridsearch --data DATA)"
        )
    from laplace_cli.tuning.grid import check_grid

    return check_grid(
        grid_min, grid_max, grid_size, names=("--grid-min", "--grid-max", "--grid-size")
    )


def _values(values) -> str:
    """Numbers for people: 4 significant digits (full precision stays in --json)."""
    if isinstance(values, dict):  # a long vector's summary (see tuning.MAX_LISTED)
        return (
            f"{values.get('n')} values in [{values.get('min'):.4g}, {values.get('max'):.4g}], "
            f"geometric mean {values.get('geometric_mean'):.4g}"
        )
    if not isinstance(values, list):
        return f"{values:.4g}"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    if len(values) <= 6:
        return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
    return f"{len(values)} values in [{min(values):.4g}, {max(values):.4g}]"


def _print_result(result: dict, console, path) -> None:
    from rich.table import Table

    console.print(
        f"tuned by {result.get('method')} ({result.get('prior_structure')}): prior precision "
        f"{_values(result.get('prior_precision'))}"
    )
    if result.get("likelihood") == "regression" and result.get("sigma_noise") is not None:
        how = "tuned" if "sigma_noise" in (result.get("tuned") or []) else "kept"
        console.print(f"sigma_noise {_values(result['sigma_noise'])} ({how})")
    if "temperature" in (result.get("tuned") or []):
        console.print(f"temperature {result['temperature']:.4g}")
    if result.get("log_evidence") is not None:
        console.print(f"log marginal likelihood {result['log_evidence']:.6g}")
    curve = result.get("curve") or []
    if curve:
        chosen = result.get("prior_precision")
        chosen = chosen[0] if isinstance(chosen, list) and chosen else None
        table = Table(title=f"{result.get('loss', 'loss')} over the grid")
        table.add_column("prior precision", justify="right")
        if curve and len(curve[0]) == 3:
            table.add_column("temperature", justify="right")
        table.add_column(str(result.get("loss", "loss")), justify="right")
        table.add_column("")
        step = max(1, len(curve) // 20)
        best = min(
            range(len(curve)),
            key=lambda i: (
                abs(curve[i][0] - chosen) if chosen is not None else 0.0,
                abs(curve[i][1] - result.get("temperature", 1.0)) if len(curve[i]) == 3 else 0.0,
            ),
        )
        # Every step-th point, and the chosen one wherever it falls.
        for i in sorted(set(range(0, len(curve), step)) | {best}):
            point = curve[i]
            loss_value = point[-1]
            cells = [f"{v:.4g}" for v in point[:-1]]
            cells.append("nan" if loss_value is None else f"{loss_value:.6g}")
            cells.append("← chosen" if i == best else "")
            table.add_row(*cells, style="bold" if i == best else None)
        console.print(table)
    if result.get("map_loss") is not None and result.get("tuned_loss") is not None:
        console.print(
            f"{result.get('loss')} on the tuning split: tuned {result['tuned_loss']:.4g}, "
            f"MAP {result['map_loss']:.4g}"
        )
    console.print(f"wrote {path}")
