"""`laplace fit MODEL`: fit the curvature on the train split and write a posterior file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from laplace_cli.cli.common import (
    apply_threads,
    check_device,
    check_factory,
    check_output_file,
    check_positive,
    parse_json_object,
    progress_for,
    require_file,
)
from laplace_cli.cli.fit_checks import check_dense_flags, check_gp_flags, check_subset_flags
from laplace_cli.cli.options import (
    BackendOpt,
    BatchSizeOpt,
    CheckpointEveryOpt,
    CurvatureDtypeOpt,
    CurvatureOpt,
    DataOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    LastLayerNameOpt,
    LikelihoodOpt,
    ModelArg,
    ModelFactoryOpt,
    ModelKwargsOpt,
    OutputFileOpt,
    PriorPosteriorOpt,
    PriorPrecisionOpt,
    QuietOpt,
    RankOpt,
    ResumeOpt,
    SeedOpt,
    SplitOpt,
    StructureOpt,
    SubnetworkOpt,
    SubsetOpt,
    TemperatureOpt,
    ThreadsOpt,
    TrustCheckpointOpt,
)
from laplace_cli.core.enums import Backend, Curvature, Dtype, Likelihood, Structure, Subset

MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        help="Memory budget for the curvature and the dense Jacobian chunks, e.g. 4GiB or "
        "512MB (default: half of the free memory). A structure that does not fit is refused "
        "before the fit (exit 2); lower it after an out-of-memory error (exit 3).",
        rich_help_panel="Fitting",
    ),
]

ContextPointsOpt = Annotated[
    int | None,
    typer.Option(
        "--context-points",
        metavar="M",
        help="--structure gp: the number of training rows the GP is conditioned on (default: "
        "every row of the split). The posterior file stores these M inputs (training data).",
        rich_help_panel="Fitting",
    ),
]
ContextOpt = Annotated[
    str,
    typer.Option(
        "--context",
        metavar="first|random",
        help="--structure gp: which M rows: the first M of the split, or M drawn at random "
        "with --seed (laplace-torch's draw).",
        rich_help_panel="Fitting",
    ),
]

OutputPositionsOpt = Annotated[
    str | None,
    typer.Option(
        "--output-positions",
        metavar="independent|mean",
        help="Dense outputs (B, C, *S), e.g. segmentation maps: the likelihood per position, "
        "positions independent (log-likelihoods summed) or their mean per input; targets are "
        "(N, *S) label maps (classification) or (N, C, *S). Stored in the posterior: tune, "
        "evaluate and predict follow it (docs/dense-outputs.md).",
        rich_help_panel="Fitting",
    ),
]
IgnoreIndexOpt = Annotated[
    int | None,
    typer.Option(
        "--ignore-index",
        metavar="LABEL",
        help="With --output-positions: the label of a masked position (left out of the fit, "
        "the tuning and the metrics); default: the data spec's ignore_index, else -100.",
        rich_help_panel="Fitting",
    ),
]

EXAMPLES = [
    "laplace fit model.pt2 --data data.yaml -o post.st",
    "laplace fit weights.safetensors --model-factory mypkg.nets:make_mlp "
    "--model-kwargs '{\"hidden\": 64}' --data data.yaml --structure diag -o post.st",
    "laplace fit model.pt2 --data data.yaml -o post.st --checkpoint-every 100 --resume",
    "laplace fit model.pt2 --data data.yaml --subset all --structure gp --context-points 200 "
    "-o post.st",
    "torchrun --nproc-per-node 4 -m laplace_cli fit model.pt2 --data data.yaml -o post.st",
    "laplace fit unet.safetensors --model-factory nets.py:unet --data seg.yaml --subset all "
    "--output-positions independent --ignore-index 255 -o post.st",
]


def fit(
    model: ModelArg,
    data: DataOpt,
    output: OutputFileOpt,
    likelihood: LikelihoodOpt = None,
    subset: SubsetOpt = Subset.LAST_LAYER,
    structure: StructureOpt = Structure.KRON,
    curvature: CurvatureOpt = Curvature.GGN,
    backend: BackendOpt = Backend.AUTO,
    rank: RankOpt = None,
    subnetwork: SubnetworkOpt = None,
    prior_precision: PriorPrecisionOpt = None,
    temperature: TemperatureOpt = None,
    prior: PriorPosteriorOpt = None,
    split: SplitOpt = "train",
    model_factory: ModelFactoryOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    trust_checkpoint: TrustCheckpointOpt = False,
    last_layer_name: LastLayerNameOpt = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    curvature_dtype: CurvatureDtypeOpt = None,
    seed: SeedOpt = None,
    checkpoint_every: CheckpointEveryOpt = None,
    resume: ResumeOpt = False,
    max_memory: MaxMemoryOpt = None,
    context_points: ContextPointsOpt = None,
    context: ContextOpt = "first",
    output_positions: OutputPositionsOpt = None,
    ignore_index: IgnoreIndexOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fit the curvature of MODEL on the train split of --data and write a posterior file.

    The posterior holds the MAP parameters of the chosen subset and the curvature in the chosen
    structure; tune its prior precision with 'laplace tune', score it with 'laplace evaluate'.

    Under torchrun (`torchrun --nproc-per-node N -m laplace_cli fit ...`) each process fits a
    shard of the split and the sums are all-reduced; rank 0 writes the same posterior as one
    process would. --checkpoint-every N and --resume make a long fit resumable.
    """
    flags = dict(locals())  # the flags by name, for _fit_options (which takes what it needs)
    started = time.perf_counter()
    _check_files(model, data, output, prior, model_factory, model_kwargs)
    check_positive(prior_precision, "--prior-precision")
    check_positive(temperature, "--temperature")
    check_subset_flags(subset, structure, rank, subnetwork, last_layer_name)
    check_gp_flags(structure, subset, context_points, context, prior, checkpoint_every, resume)
    check_dense_flags(output_positions, ignore_index, structure)
    apply_threads(threads)
    check_device(device)
    kwargs = parse_json_object(model_kwargs, "--model-kwargs")
    options = _fit_options(**flags)

    from laplace_cli.pipeline.fit_posterior import fit_posterior
    from laplace_cli.pipeline.model_loading import ModelSpec

    result = fit_posterior(  # weight space, or function space for --structure gp
        ModelSpec(str(model), model_factory, kwargs, trust_checkpoint),
        data,
        options,
        output,
        device=device or "auto",
        dtype=dtype.value if dtype is not None else None,
        progress=progress_for(quiet),
    )
    _report(result, output, started, quiet, json_)


def _fit_options(
    *,
    likelihood: Likelihood | None,
    subset: Subset,
    structure: Structure,
    curvature: Curvature,
    backend: Backend,
    rank: int | None,
    subnetwork: str | None,
    prior_precision: float | None,
    temperature: float | None,
    prior: Path | None,
    split: str,
    last_layer_name: str | None,
    batch_size: int | None,
    curvature_dtype: Dtype | None,
    seed: int | None,
    checkpoint_every: int | None,
    resume: bool,
    output: Path,
    max_memory: str | None,
    context_points: int | None,
    context: str,
    output_positions: str | None,
    ignore_index: int | None,
    **_other_flags: Any,
) -> Any:
    """The FitOptions of the checked flags (--max-memory parsed here: a bad size exits 2)."""
    from laplace_cli.posterior.memory import parse_size

    budget = parse_size(max_memory) if max_memory is not None else None

    from laplace_cli.pipeline.fit_stage import FitOptions

    return FitOptions(
        likelihood=likelihood.value if likelihood is not None else None,
        subset=subset.value,
        structure=structure.value,
        curvature=curvature.value,
        backend=backend.value,
        prior_precision=prior_precision if prior_precision is not None else 1.0,
        temperature=temperature if temperature is not None else 1.0,
        prior=str(prior) if prior is not None else None,
        last_layer_name=last_layer_name,
        rank=rank,
        subnetwork=subnetwork,
        split=split,
        batch_size=batch_size,
        seed=seed if seed is not None else 0,
        checkpoint_every=checkpoint_every or 0,
        resume=resume,
        output=str(output),
        max_memory=budget,
        context_points=context_points,
        context=context,
        curvature_dtype=curvature_dtype.value if curvature_dtype is not None else None,
        output_positions=output_positions,
        ignore_index=ignore_index,
    )


def _check_files(
    model: Path,
    data: Path,
    output: Path,
    prior: Path | None,
    model_factory: str | None,
    model_kwargs: str | None,
) -> None:
    """Check the model, data and prior files, the output file and the model factory's flags."""
    require_file(model, "MODEL", allow_model_dir=True)
    require_file(data, "--data")
    check_output_file(output)
    if prior is not None:
        require_file(prior, "--prior")
    check_factory(model_factory)
    parse_json_object(model_kwargs, "--model-kwargs")


def _summary(result: Any, output: Path, ctx: Any, started: float) -> dict[str, Any]:
    """The --json summary (and the numbers of the human one)."""
    la = result.la
    summary = {
        "posterior": str(output),
        "likelihood": la.likelihood.value,
        "subset": la.subset_of_weights.value,
        "structure": la.hessian_structure.value,
        "curvature": la.curvature.value,
        "n_params": la.n_params,
        "n_data": la.n_data,
        "log_marginal_likelihood": (
            result.log_marginal_likelihood
            if result.log_marginal_likelihood is not None
            else float(la.log_marginal_likelihood())
        ),
        "fit_seconds": result.seconds,
        "summary_seconds": result.summary_seconds,
        # Everything this command did: loading, fitting, the summary, writing.
        "total_seconds": time.perf_counter() - started,
    }
    if ctx is not None:
        summary["world_size"] = ctx.world_size
        summary["shard_sizes"] = list(getattr(la, "shard_sizes", []))
    if result.resumed_batches:
        summary["resumed_batches"] = result.resumed_batches
    system = getattr(la, "system", None)  # function-space (gp): the M context points
    if system is not None:
        summary["context_points"] = int(system.n_context)
    if result.notes:
        summary["notes"] = result.notes
    return summary


def _report(result: Any, output: Path, started: float, quiet: bool, json_: bool) -> None:
    """The notes and the summary (from rank 0 alone under torchrun): JSON on stdout with
    --json, one line on stderr otherwise."""
    from laplace_cli.cli.console import emit_json, stderr_console
    from laplace_cli.pipeline import distributed

    ctx = distributed.context()
    if ctx is not None and not ctx.is_main:
        return  # one summary, from rank 0
    summary = _summary(result, output, ctx, started)
    la = result.la
    if not quiet:
        for note in result.notes:
            stderr_console.print(f"note: {note}", markup=False, highlight=False)
    if json_:
        emit_json(summary)
    elif not quiet:
        stderr_console.print(
            f"fitted {summary['structure']} / {summary['subset']} over {la.n_params:,} parameters "
            f"on {la.n_data:,} examples in {summary['total_seconds']:.2f} s (curvature "
            f"{result.seconds:.2f} s, log marginal likelihood {result.summary_seconds:.2f} s); "
            f"log marginal likelihood {summary['log_marginal_likelihood']:.4g}; wrote {output}"
        )
