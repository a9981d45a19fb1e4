"""The fit stage: load the model and the train split, fit the curvature, save the posterior.

The options and the unfitted `Laplace` they describe live in `pipeline.fit_setup` (`FitOptions`
is re-exported here); this module runs the fit: the loader, the first-batch check, the
checkpoint, the curvature and the log marginal likelihood, and saving the posterior.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from laplace_cli.core.batches import split_batch
from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError, NumericalError
from laplace_cli.io.dataset_specs import DEFAULT_BATCH_SIZE
from laplace_cli.io.datasets import DatasetSpec, LabelError, load_dataset_spec
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.pipeline.fit_setup import FitOptions, dense_settings, new_laplace
from laplace_cli.pipeline.model_loading import (
    LoadedModel,
    ModelSpec,
    load_model_spec,
    save_posterior,
)
from laplace_cli.pipeline.stage_support import (
    Progress,
    ProgressView,
    check_model_accepts,
    likelihood_note,
    no_progress,
    out_of_memory_is_exit_3,
    resolve_likelihood,
    split_loader,
)

__all__ = ["FitOptions", "FitResult", "fit", "fit_and_save"]


@dataclass
class FitResult:
    la: Laplace
    loaded: LoadedModel
    data_path: str
    seconds: float
    #: The fit's checkpoint (remove it once the posterior is written), if any.
    checkpoint: Any = None
    #: Batches restored from a checkpoint instead of fitted now (0: a fresh fit).
    resumed_batches: int = 0
    #: Lines for the user about choices made for them (e.g. the likelihood assumed).
    notes: list[str] = field(default_factory=list)
    #: The log marginal likelihood at the fitted prior (rank 0 only under torchrun), and the
    #: seconds it took (not part of `seconds`, the curvature fit).
    log_marginal_likelihood: float | None = None
    summary_seconds: float = 0.0


def fit(
    model_spec: ModelSpec,
    data_path: str | Path,
    options: FitOptions,
    *,
    device: str = "auto",
    dtype: str | None = None,
    progress: Progress = no_progress,
) -> FitResult:
    """Load the model and the train split, fit the curvature, return the fitted Laplace."""
    # Every split's files, keys and columns (not only the train split's): a test split that
    # names a missing column fails now, not after the fit at `evaluate`.
    spec = load_dataset_spec(data_path, check_files=True)
    likelihood = resolve_likelihood(options.likelihood, spec)
    loaded = load_model_spec(model_spec, device, dtype)
    torch.manual_seed(options.seed)
    with out_of_memory_is_exit_3(
        f"fit {options.structure} (allocating the posterior)",
        options.batch_size or spec.batch_size or DEFAULT_BATCH_SIZE,
        next(iter(loaded.model.parameters()), torch.empty(0)).device,
    ):
        la = new_laplace(model_spec, options, loaded, spec, likelihood, device, dtype, progress)
    from laplace_cli.pipeline import distributed

    ctx = distributed.context(device) if options.distributed else None
    if ctx is not None:
        # The MC Fisher draws targets from a stream seeded by `seed`: one stream per rank, so
        # the shards' draws are independent (rank 0's equals a one-process fit's over its rows).
        la.seed = options.seed + ctx.rank
    note = likelihood_note(options.likelihood, spec, data_path)
    loader = _fit_loader(spec, options, likelihood, ctx, note, data_path)
    shard = len(loader.dataset) if hasattr(loader, "dataset") else None
    rows = getattr(loader, "batch_size", None)
    with out_of_memory_is_exit_3("fit (the first batch)", rows, la.device):
        _check_first_batch(la, loader, f"{data_path}: split {options.split!r}")
    checkpoint = _fit_checkpoint(options, la, loaded, data_path, loader, ctx)
    start_batch = checkpoint.restore(la) if checkpoint is not None and options.resume else 0
    start = time.perf_counter()
    _fit_curvature(la, loader, options, checkpoint, start_batch, ctx, data_path, progress)
    if ctx is not None:
        # Recorded in the posterior's metadata by `save_posterior` (world_size, shard_sizes).
        la.shard_sizes = distributed.all_gather_ints(shard or 0, ctx)
    seconds = time.perf_counter() - start
    # The summary's log marginal likelihood is part of the work (a Cholesky factorisation of a
    # full P×P precision: seconds at P in the thousands): timed and shown like the fit.
    log_ml, summary_start = None, time.perf_counter()
    if ctx is None or ctx.is_main:
        with out_of_memory_is_exit_3("fit (log marginal likelihood)", rows, la.device):
            for _ in progress([None], 1, "log marginal likelihood"):
                log_ml = float(la.log_marginal_likelihood())
    return FitResult(
        la,
        loaded,
        str(data_path),
        seconds,
        checkpoint=checkpoint,
        resumed_batches=start_batch,
        notes=[note] if note else [],
        log_marginal_likelihood=log_ml,
        summary_seconds=time.perf_counter() - summary_start,
    )


def _fit_loader(
    spec: DatasetSpec,
    options: FitOptions,
    likelihood: Likelihood,
    ctx: Any,
    note: str | None,
    data_path: str | Path,
) -> Any:
    """The fit split's loader (this rank's shard under torchrun); labels that do not fit an
    assumed classification say how to declare a regression."""
    from laplace_cli.pipeline import distributed

    dense = dense_settings(options, spec)
    try:
        return distributed.shard_loader(
            split_loader(
                spec,
                options.split,
                likelihood,
                options.batch_size,
                any_order=True,
                label_maps=dense.get("ignore_index"),
            ),
            ctx,
        )
    except LabelError as err:
        if note is None:
            raise
        # Classification was only assumed: real-valued targets must not become a silent wrong
        # likelihood, and the fix is one line in the spec.
        raise LabelError(
            f"{err}\n{data_path} has no task: and no --likelihood was given, so classification "
            "was assumed; for real-valued targets add `task: regression` to the spec (or pass "
            "--likelihood regression)"
        ) from err


def _check_first_batch(la: Laplace, loader: Any, source: str) -> None:
    """Check that the model accepts the first batch, before any work is done."""
    with torch.random.fork_rng(devices=[]):  # a loader iterator draws a seed: keep the stream
        first = next(iter(loader), None)
    if first is not None:
        x_first, _ = split_batch(first, la.dict_key_x, la.dict_key_y)
        check_model_accepts(la, x_first, source)


def _fit_curvature(
    la: Laplace,
    loader: Any,
    options: FitOptions,
    checkpoint: Any,
    start_batch: int,
    ctx: Any,
    data_path: str | Path,
    progress: Progress,
) -> None:
    """Fit the curvature from `start_batch` on (all-reduced across ranks under torchrun); an
    out-of-memory error names the structure, the split and the batch size (exit 3)."""
    try:
        with out_of_memory_is_exit_3(
            f"fit {options.structure} on split {options.split!r}",
            getattr(loader, "batch_size", None),
            la.device,
        ):
            _fit_with_progress(la, loader, options, checkpoint, start_batch, ctx, progress)
    except (BadInputError, NumericalError) as err:
        # The engine knows the batch, not the file: name the data file and split as well
        # (same class, so the exit code is unchanged).
        raise type(err)(f"{data_path}: split {options.split!r}: {err}") from err


def _fit_with_progress(
    la: Laplace,
    loader: Any,
    options: FitOptions,
    checkpoint: Any,
    start_batch: int,
    ctx: Any,
    progress: Progress,
) -> None:
    from laplace_cli.pipeline import distributed

    la.fit(
        ProgressView(loader, progress, f"fit {options.structure}"),
        override=start_batch == 0,
        reduce=None if ctx is None else lambda ts: distributed.all_reduce_sum(ts, ctx),
        start_batch=start_batch,
        on_batch=checkpoint.on_batch if checkpoint is not None else None,
    )


def fit_and_save(
    model_spec: ModelSpec,
    data_path: Path,
    options: FitOptions,
    output: str | Path,
    *,
    device: str = "auto",
    dtype: str | None = None,
    progress: Progress = no_progress,
) -> FitResult:
    """`fit`, then write the posterior to `output` (rank 0 under torchrun) and remove the fit's
    checkpoint once it is written; every rank returns its `FitResult`."""
    result = fit(model_spec, data_path, options, device=device, dtype=dtype, progress=progress)
    save_posterior(
        result.la,
        output,
        result.loaded,
        {"data": str(data_path.resolve()), "fit_seconds": round(result.seconds, 3)},
    )
    from laplace_cli.pipeline import distributed

    ctx = distributed.context()
    if ctx is not None:
        ctx.barrier()  # rank 0 has written the posterior: the checkpoints are no longer needed
    if result.checkpoint is not None:
        result.checkpoint.remove()
    return result


def _fit_checkpoint(options: FitOptions, la: Laplace, loaded: LoadedModel, data_path, loader, ctx):
    """The `FitCheckpoint` of this fit (per rank), or None without --checkpoint-every/--resume."""
    if not options.checkpoint_every and not options.resume:
        return None
    if options.checkpoint_every < 0:
        raise BadInputError(
            f"--checkpoint-every: expected a positive integer, got {options.checkpoint_every}"
        )
    if not options.output:
        raise BadInputError("a resumable fit needs the output file (-o) to name its checkpoint")
    if getattr(la.posterior, "needs_loader", False):
        raise BadInputError(
            f"structure {options.structure!r} passes over the data several times and cannot be "
            "checkpointed or resumed; use diag, kron or full"
        )
    if getattr(loader, "sampler", None) is not None and not isinstance(
        loader.sampler, torch.utils.data.SequentialSampler
    ):
        raise BadInputError("a resumable fit needs the data in a fixed order (no shuffling)")
    from laplace_cli.pipeline.resume import FitCheckpoint, checkpoint_path, fit_config

    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    config = fit_config(
        fingerprint=loaded.fingerprint,
        data=str(Path(data_path).resolve()),
        split=options.split,
        batch_size=getattr(loader, "batch_size", None),
        shard_rows=len(loader.dataset) if hasattr(loader, "dataset") else None,
        likelihood=la.likelihood,
        subset=la.subset_of_weights,
        structure=la.hessian_structure,
        curvature=la.curvature,
        kron_approx=la.kron_approx,
        last_layer_name=options.last_layer_name,
        prior=options.prior,
        seed=options.seed,
        dtype=la.dtype,
        n_params=la.n_params,
        rank=rank,
        world_size=world,
    )
    return FitCheckpoint(
        checkpoint_path(options.output, rank, world), options.checkpoint_every, config
    ).attach(la)
