"""The stages users run — fit, tune, evaluate, predict — as library functions.

The CLI commands and `laplace run` call these, so a recipe and the equivalent commands agree by
construction. Nothing here prints or knows about the terminal: long loops take an optional
`progress(iterable, total, description)` wrapper that the CLI fills with a progress bar.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from laplace_cli.core.batches import batch_size, split_batch, to_device
from laplace_cli.core.enums import Likelihood, LinkApprox, PredType
from laplace_cli.core.errors import BadInputError, LaplaceCliError, NumericalError
from laplace_cli.io.checkpoints import (
    ModelRef,
    load_model,
    model_fingerprint,
    resolve_device,
    resolve_dtype,
)
from laplace_cli.io.datasets import DatasetSpec, LabelError, load_dataset_spec, make_loader
from laplace_cli.io.posterior_file import check_fingerprint, read_posterior, write_posterior
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.laplace.rebuild import laplace_from_state
from laplace_cli.laplace.serialization import laplace_state
from laplace_cli.posterior.predictive import (
    RowSeeds,
    check_pred_options,
)

Progress = Callable[[Iterable[Any], int | None, str], Iterable[Any]]


def no_progress(
    it: Iterable[Any], total: int | None = None, description: str = ""
) -> Iterable[Any]:
    return it


def len_or_none(obj: Any) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


class ProgressView:
    """A loader seen through `progress`, re-iterable: each pass starts a fresh progress wrapper.

    `progress(loader, ...)` is a one-shot generator, so handing it to code that walks the data
    more than once (lowrank's Krylov passes) would see the data once and then nothing. This
    view calls `progress` again on every `iter()`, keeps `len()`, and passes other attributes
    (`dataset`, `batch_size`, `sampler`) through to the loader.
    """

    def __init__(self, loader: Iterable[Any], progress: Progress, description: str) -> None:
        self.loader = loader
        self._progress = progress
        self._description = description
        self.passes = 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: a pass (and its bar) starts at the first batch asked for, so `iter(view)`
        # alone (Laplace.fit's is-it-an-iterator check) starts nothing.
        self.passes += 1
        label = self._description if self.passes == 1 else f"{self._description} ({self.passes})"
        yield from self._progress(self.loader, len_or_none(self.loader), label)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (copy / unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


def check_model_accepts(la: Laplace, x: Any, source: str) -> None:
    """Raise `BadInputError` (exit 2) when the model cannot run on inputs like `x`.

    Features of the wrong shape for the model (64 flat CSV columns for a CNN that takes
    (1, 8, 8) images, a data spec of another model) would otherwise fail deep inside the
    curvature or predictive code as an internal error (exit 70). One forward pass of the model
    on the first batch tells the two apart before any work starts; the engine's own input
    errors (`LaplaceCliError`, e.g. sequence outputs) keep their class and get `source` in front.

    Args:
        la: The Laplace approximation whose model will run on the inputs.
        x: A batch of inputs (tensor, or dict of tensors for text models), as the loader gives it.
        source: Where the inputs come from, for the message (file, split).
    """
    try:
        la.subset.output(to_device(x, la.device, la.dtype))
    except torch.OutOfMemoryError:
        raise
    except LaplaceCliError as exc:
        raise type(exc)(f"{source}: {exc}") from exc
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        shape = (
            {k: tuple(v.shape[1:]) for k, v in x.items()}
            if isinstance(x, Mapping)
            else tuple(x.shape[1:])
        )
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInputError(
            f"{source}: the model does not accept inputs of shape {shape} per row ({first})"
        ) from exc


# --- models -------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """Where a model comes from: a checkpoint, optionally with a factory and its kwargs."""

    path: str
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    trust_checkpoint: bool = False


@dataclass
class LoadedModel:
    model: nn.Module
    ref: ModelRef
    fingerprint: str


def load_model_spec(spec: ModelSpec, device: str = "auto", dtype: str | None = None) -> LoadedModel:
    """Load a checkpoint on the chosen device and dtype, and fingerprint its parameters."""
    model, ref = load_model(
        str(Path(spec.path).expanduser().resolve()),
        factory=_absolute_factory(spec.factory),
        factory_kwargs=spec.kwargs or None,
        trust_checkpoint=spec.trust_checkpoint,
        device=resolve_device(device),
        dtype=resolve_dtype(dtype),
    )
    # The fingerprint is taken before any --dtype/--device conversion, so a posterior fitted in
    # float64 still matches the same checkpoint loaded in float32.
    return LoadedModel(model, ref, ref.fingerprint or model_fingerprint(model))


def _absolute_factory(factory: str | None) -> str | None:
    """A file-style factory (`path/to/file.py:fn`) with an absolute path, so the posterior's
    model reference still works from another working directory."""
    if factory and ".py:" in factory:
        file, _, fn = factory.rpartition(":")
        if Path(file).exists():
            return f"{Path(file).resolve()}:{fn}"
    return factory


def model_spec_from_ref(ref: Mapping[str, Any], trust_checkpoint: bool = False) -> ModelSpec:
    """The model a posterior names (its recorded path, factory and kwargs)."""
    if not ref or not ref.get("path"):
        raise BadInputError("the posterior names no model; pass --model (and --model-factory)")
    if ref.get("factory") and not trust_checkpoint:
        _check_recorded_factory(str(ref["factory"]))
    return ModelSpec(
        path=str(ref["path"]),
        factory=ref.get("factory"),
        kwargs=dict(ref.get("kwargs") or {}),
        trust_checkpoint=trust_checkpoint,
    )


def _installed_code_dirs() -> list[Path]:
    """The standard library and site-packages folders of this interpreter."""
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    dirs = [paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    dirs += site.getsitepackages() + [site.getusersitepackages()]
    return [Path(d).resolve() for d in dirs if d]


def _is_installed_code(where: Path) -> bool:
    """Under this interpreter's stdlib / site-packages, or any Python's (lib/pythonX.Y/...)."""
    if any(where.is_relative_to(d) for d in _installed_code_dirs()):
        return True
    parts = where.parts
    return any(
        part in ("site-packages", "dist-packages")
        or (i > 0 and parts[i - 1] in ("lib", "lib64") and part.startswith("python"))
        for i, part in enumerate(parts)
    )


def _check_recorded_factory(factory: str) -> None:
    """Refuse a factory that a posterior file names from the Python installation.

    A posterior is a data file; its metadata names the factory that rebuilds the model and the
    kwargs to call it with. Calling whatever a file names would let a hostile posterior run
    commands (`subprocess:call` with `{"args": [...]}`) or overwrite files (`torch:save`), so a
    recorded factory must be the user's own code: a module or file outside the standard library
    and site-packages. This is decided from the file's location, before importing anything.
    An installed factory is confirmed on the command line with --model/--model-factory.
    """
    import importlib.util
    import sys

    target = factory.rpartition(":")[0]
    if target.endswith(".py") or "/" in target:
        origin: str | None = str(Path(target).expanduser())
    else:
        top = target.split(".")[0]
        sys.path.insert(0, str(Path.cwd()))  # as import_callable: the working directory first
        try:
            found = importlib.util.find_spec(top) if top.isidentifier() else None
        except (ImportError, ValueError):
            found = None
        finally:
            sys.path.remove(str(Path.cwd()))
        if found is None:
            return  # not importable: loading the model reports it
        origin = found.origin if found.has_location else None
        if origin is None and found.submodule_search_locations:  # a namespace package
            origin = next(iter(found.submodule_search_locations))
    where = Path(origin).resolve() if origin else None
    if where is None or _is_installed_code(where):
        raise BadInputError(
            f"the posterior names the model factory {factory!r}, which is "
            f"{'built into Python' if where is None else f'installed code ({where})'}; a "
            "posterior file may only name your own code. If this is the right factory, say so: "
            f"--model CHECKPOINT --model-factory {factory}"
        )


# --- data ---------------------------------------------------------------------------------------
def resolve_likelihood(flag: str | None, spec: DatasetSpec | None) -> Likelihood:
    """CLI flag over the spec's `task`, classification by default."""
    if flag:
        return Likelihood.parse(flag, "--likelihood")
    if spec is not None and spec.task is not None:
        return Likelihood.parse(spec.task, "task")
    return Likelihood.CLASSIFICATION


def split_loader(
    spec: DatasetSpec,
    split: str,
    likelihood: Likelihood,
    batch_size: int | None = None,
    *,
    any_order: bool = False,
    require_labels: bool = True,
) -> Any:
    """The split's loader; `any_order=True` (fit, tune, evaluate: results that do not depend on
    the row order) lets text splits batch rows of similar length together (less padding).
    `require_labels=False` (predict, out-of-distribution data) accepts a split without targets."""
    return make_loader(
        spec,
        split,
        batch_size=batch_size,
        task=likelihood,
        by_length=any_order,
        require_labels=require_labels,
    )


def likelihood_note(flag: str | None, spec: DatasetSpec, data_path: str | Path) -> str | None:
    """The line saying classification was assumed (no `--likelihood`, no `task:`), else None."""
    if flag or spec.task is not None:
        return None
    return (
        f"likelihood: classification (assumed: {data_path} has no task: and no --likelihood "
        "was given; for real-valued targets add `task: regression` to the spec)"
    )


# --- fit ----------------------------------------------------------------------------------------
@dataclass
class FitOptions:
    likelihood: str | None = None
    subset: str = "last_layer"
    structure: str = "kron"
    curvature: str = "ggn"
    backend: str = "auto"
    prior_precision: float = 1.0
    temperature: float = 1.0
    sigma_noise: float | None = None
    prior: str | None = None
    last_layer_name: str | None = None
    kron_approx: str = "expand"
    rank: int | None = None
    #: `laplace_cli.masks.selectors` text (`largest_magnitude:128`, an index file) for
    #: subset "subnetwork"; relative file paths resolve against the working directory.
    subnetwork: str | None = None
    split: str = "train"
    batch_size: int | None = None
    seed: int = 0
    max_memory: int | None = None
    #: Resumable fits (`laplace_cli.pipeline.resume`): save the partial sums every N batches (0: never)
    #: to the checkpoint of `output` (`<output>.ckpt`), and/or continue from it.
    checkpoint_every: int = 0
    resume: bool = False
    output: str | None = None
    #: Fit this rank's shard and all-reduce when launched by torchrun (`laplace_cli.pipeline.distributed`).
    distributed: bool = True


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
    spec = load_dataset_spec(data_path)
    likelihood = resolve_likelihood(options.likelihood, spec)
    loaded = load_model_spec(model_spec, device, dtype)
    torch.manual_seed(options.seed)
    la = _new_laplace(model_spec, options, loaded, spec, likelihood, device, dtype, progress)
    from laplace_cli.pipeline import distributed

    ctx = distributed.context(device) if options.distributed else None
    if ctx is not None:
        # The MC Fisher draws targets from a stream seeded by `seed`: one stream per rank, so
        # the shards' draws are independent (rank 0's equals a one-process fit's over its rows).
        la.seed = options.seed + ctx.rank
    note = likelihood_note(options.likelihood, spec, data_path)
    loader = _fit_loader(spec, options, likelihood, ctx, note, data_path)
    shard = len(loader.dataset) if hasattr(loader, "dataset") else None
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


def _new_laplace(
    model_spec: ModelSpec,
    options: FitOptions,
    loaded: LoadedModel,
    spec: DatasetSpec,
    likelihood: Likelihood,
    device: str,
    dtype: str | None,
    progress: Progress,
) -> Laplace:
    """The (unfitted) Laplace of `options`, with its subnetwork chosen and --prior set."""
    sigma = options.sigma_noise if options.sigma_noise is not None else 1.0
    indices = _subnetwork_indices(options, loaded, spec, likelihood, device, progress)
    la = Laplace(
        loaded.model,
        likelihood,
        options.subset,
        options.structure,
        subnetwork_indices=indices,
        curvature=options.curvature,
        backend=options.backend,
        prior_precision=options.prior_precision,
        temperature=options.temperature,
        sigma_noise=sigma if likelihood == Likelihood.REGRESSION else 1.0,
        last_layer_name=options.last_layer_name,
        kron_approx=options.kron_approx,
        rank=options.rank,
        max_memory=options.max_memory,
        seed=options.seed,
    )
    _check_single_pass(options, la)
    if options.prior:
        prior_la = load_posterior(
            options.prior, model_override=model_spec, device=device, dtype=dtype
        ).la
        set_prior = getattr(la, "set_prior_from", None)
        if set_prior is None:
            raise BadInputError("--prior (a posterior as prior) is not implemented yet")
        set_prior(prior_la)
    return la


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

    try:
        return distributed.shard_loader(
            split_loader(spec, options.split, likelihood, options.batch_size, any_order=True), ctx
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
    """Fit the curvature from `start_batch` on (all-reduced across ranks under torchrun)."""
    from laplace_cli.pipeline import distributed

    try:
        la.fit(
            ProgressView(loader, progress, f"fit {options.structure}"),
            override=start_batch == 0,
            reduce=None if ctx is None else lambda ts: distributed.all_reduce_sum(ts, ctx),
            start_batch=start_batch,
            on_batch=checkpoint.on_batch if checkpoint is not None else None,
        )
    except (BadInputError, NumericalError) as err:
        # The engine knows the batch, not the file: name the data file and split as well
        # (same class, so the exit code is unchanged).
        raise type(err)(f"{data_path}: split {options.split!r}: {err}") from err


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


def _subnetwork_indices(
    options: FitOptions,
    loaded: LoadedModel,
    spec: DatasetSpec,
    likelihood: Likelihood,
    device: str,
    progress: Progress,
) -> Tensor | None:
    """The indices `options.subnetwork` selects (subset "subnetwork"), else None."""
    from laplace_cli.masks.selectors import (
        parse_subnetwork,
        select_subnetwork,
        selector_choices,
    )

    is_subnetwork = options.subset == "subnetwork"
    if options.subnetwork is None:
        if is_subnetwork:
            raise BadInputError(
                "subset 'subnetwork' needs a selector (--subnetwork, or fit.subnetwork in a "
                f"recipe), e.g. largest_magnitude:128; {selector_choices()}"
            )
        return None
    if not is_subnetwork:
        raise BadInputError(
            f"a subnetwork selector ({options.subnetwork!r}) applies to subset 'subnetwork' "
            f"only, got subset {options.subset!r}"
        )
    selector = parse_subnetwork(options.subnetwork)

    def diag_laplace() -> Laplace:
        # largest_variance (Daxberger et al. 2021): a diagonal GGN Laplace over all weights on
        # the fit's split, with the fit's prior precision, ranks the parameters.
        la = Laplace(
            loaded.model,
            likelihood,
            "all",
            "diag",
            prior_precision=options.prior_precision,
            max_memory=options.max_memory,
            seed=options.seed,
        )
        loader = split_loader(spec, options.split, likelihood, options.batch_size, any_order=True)
        la.fit(ProgressView(loader, progress, "fit diag (largest_variance)"))
        return la

    return select_subnetwork(selector, loaded.model, seed=options.seed, diag_laplace=diag_laplace)


def _check_single_pass(options: FitOptions, la: Laplace) -> None:
    """Refuse, before any data is read, what a structure that walks the data several times
    (lowrank's matrix-free eigensolver) cannot do: resumable fits and sharded (torchrun) fits."""
    if not getattr(la.posterior, "needs_loader", False):
        return
    what = f"structure {options.structure!r} passes over the data several times"
    if options.checkpoint_every or options.resume:
        raise BadInputError(
            f"{what} and cannot be checkpointed or resumed: drop --checkpoint-every/--resume "
            "(lowrank runs in one go), or use diag, kron or full"
        )
    from laplace_cli.pipeline import distributed

    if options.distributed and distributed.env_world_size() > 1:
        raise BadInputError(
            f"{what} and cannot be fitted in shards under torchrun: run 'laplace fit' in one "
            "process (without torchrun), or use diag, kron or full"
        )


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


def save_posterior(
    la: Laplace, path: str | Path, loaded: LoadedModel, extra: dict[str, Any] | None = None
) -> None:
    """Write the posterior file atomically, with the model reference and fingerprint.

    In a distributed run only rank 0 writes, and the metadata records `world_size` and the
    examples of each rank's shard (`shard_sizes`) of a sharded fit.
    """
    from laplace_cli.pipeline import distributed

    ctx = distributed.context()
    if ctx is not None and not ctx.is_main:
        return
    shards = getattr(la, "shard_sizes", None)
    if shards is not None:
        extra = {"world_size": len(shards), "shard_sizes": list(shards), **(extra or {})}
    from laplace_cli.io.model_paths import portable_model_ref

    # Paths relative to the posterior, so that a moved run folder still finds its model.
    ref = portable_model_ref(loaded.ref.to_dict(), path)
    tensors, metadata = laplace_state(
        la, model_ref=ref, fingerprint=loaded.fingerprint, extra=extra
    )
    write_posterior(path, tensors, metadata)


# --- load ---------------------------------------------------------------------------------------
@dataclass
class LoadedPosterior:
    la: Laplace
    metadata: dict[str, Any]
    loaded: LoadedModel
    path: str


def load_posterior(
    path: str | Path,
    *,
    model_override: ModelSpec | None = None,
    trust_checkpoint: bool = False,
    device: str = "auto",
    dtype: str | None = None,
) -> LoadedPosterior:
    """Read a posterior file, load the model it names (or `model_override`), check the fingerprint."""
    pf = read_posterior(path)
    meta = pf.metadata
    recorded = meta.get("model") or {}
    if model_override is None:
        from laplace_cli.io.model_paths import resolve_model_ref

        # Paths are stored relative to the posterior file (older files: absolute).
        recorded = resolve_model_ref(recorded, path)
        spec = model_spec_from_ref(recorded, trust_checkpoint)
    else:
        spec = model_override
    if dtype is None:
        dtype = {torch.float64: "float64", torch.float32: "float32"}.get(pf.tensors["mean"].dtype)
    loaded = load_model_spec(spec, device, dtype)
    check_fingerprint(
        {**meta, "model": recorded},  # names the checkpoint where it was found
        loaded.fingerprint,
        str(path),
        model=spec.path,
        overridden=model_override is not None,
    )
    la = laplace_from_state(loaded.model, pf.tensors, meta)
    return LoadedPosterior(la, meta, loaded, str(path))


def resave(
    lp: LoadedPosterior, path: str | Path | None = None, extra: dict[str, Any] | None = None
) -> None:
    """Write a (re-tuned) posterior back, in place by default, keeping its extra metadata."""
    keep = {
        k: lp.metadata[k]
        for k in ("data", "fit_seconds", "world_size", "shard_sizes")
        if k in lp.metadata
    }
    keep.update(extra or {})
    save_posterior(lp.la, path or lp.path, lp.loaded, keep)


# --- tune ---------------------------------------------------------------------------------------
def tune(
    lp: LoadedPosterior,
    *,
    method: str = "marglik",
    data_path: str | None = None,
    split: str = "val",
    batch_size: int | None = None,
    progress: Progress = no_progress,
    map_check: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """Optimise the prior precision (and σ for regression) and record the result on `lp.la`.

    Grid search scores `split` of `data_path` (default: the data the posterior was fitted on).
    marglik reads no data; given `data_path` (and `map_check`) it then scores the tuned
    posterior and the MAP on `split` with `loss`, as the grid search does, and warns
    (TuningWarning) when the tuned one is worse. The result gets `likelihood` and, where
    scored, `tuned_loss`, `map_loss`, `worse_than_map`.
    """
    la = lp.la
    check = None
    if method == "gridsearch":
        data_path = data_path or lp.metadata.get("data")
        if not data_path:
            raise BadInputError("grid search needs validation data: pass --data")
        spec = load_dataset_spec(data_path)
        loader = split_loader(spec, split, la.likelihood, batch_size, any_order=True)
        kwargs["val_loader"] = ProgressView(loader, progress, "validation pass")
    elif data_path is not None and map_check:
        spec = load_dataset_spec(data_path)  # a bad spec or split fails before the tuning
        check = split_loader(spec, split, la.likelihood, batch_size, any_order=True)
    if method == "marglik" and la.likelihood == Likelihood.REGRESSION:
        # The library leaves σ alone unless asked (as laplace-torch); the CLI keeps tuning it
        # with the prior for regression, as `laplace tune --help` says.
        kwargs.setdefault("tune_sigma_noise", True)
    result = la.optimize_prior_precision(method=method, progress=progress, **kwargs)
    if check is not None:
        from laplace_cli.tuning.api import compare_with_map

        result.update(
            compare_with_map(
                la,
                ProgressView(check, progress, f"score against the MAP on {split!r}"),
                loss=kwargs.get("loss", "nll"),
                pred_type=kwargs.get("pred_type"),
                link_approx=kwargs.get("link_approx"),
                n_samples=kwargs.get("n_samples", 100),
                seed=kwargs.get("seed", 0),
            )
        )
    result["likelihood"] = la.likelihood.value
    return result


# --- predictions --------------------------------------------------------------------------------
@dataclass
class PredictOptions:
    pred_type: str | None = None
    link_approx: str | None = None
    n_samples: int = 100
    interval: float = 0.95
    seed: int = 0


def default_pred_options(la: Laplace, options: PredictOptions) -> tuple[PredType, LinkApprox]:
    """Explicit options, else what the posterior was tuned for, else glm / probit (nn: mc)."""
    tuned = la.tuning or {}
    pred_type = options.pred_type or tuned.get("pred_type") or "glm"
    link_approx = options.link_approx or tuned.get("link_approx")
    if not link_approx:
        link_approx = "mc" if pred_type == "nn" else "probit"
    return check_pred_options(pred_type, link_approx)


def normal_quantile(level: float) -> float:
    """z with P(|N(0,1)| ≤ z) = level."""
    if not 0 < level < 1:
        raise BadInputError(f"--interval must lie strictly between 0 and 1, got {level}")
    return math.sqrt(2.0) * float(torch.erfinv(torch.tensor(level, dtype=torch.float64)))


def predict_batch(
    la: Laplace,
    x: Any,
    pred_type: PredType,
    link_approx: LinkApprox,
    n_samples: int,
    generator: torch.Generator | RowSeeds | None,
    interval: float = 0.95,
) -> dict[str, Tensor]:
    """Everything a prediction row needs for one batch (`Laplace.uncertainty`)."""
    if la.likelihood == Likelihood.REGRESSION:
        normal_quantile(interval)  # validates the level with the option's name
    return la.uncertainty(x, pred_type, link_approx, n_samples, generator, level=interval)


ROW_FIELDS = {
    Likelihood.REGRESSION: ("mean", "var", "var_total", "lower", "upper"),
    Likelihood.CLASSIFICATION: ("pred", "probs", "var", "entropy", "max_prob", "mutual_info"),
    Likelihood.BINARY: ("pred", "probs", "var", "entropy", "max_prob", "mutual_info"),
}


def prediction_rows(la: Laplace, ids: list[Any], pred: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Rows with the normative field names (JSONL form: per-class values as lists)."""
    fields = [f for f in ROW_FIELDS[la.likelihood] if f in pred]
    columns = {f: pred[f].detach().cpu().tolist() for f in fields}
    return [{"id": rid, **{f: columns[f][i] for f in fields}} for i, rid in enumerate(ids)]


def number_chunks(chunks: Iterable[tuple[list[Any], Any]]) -> Iterator[tuple[list[Any], Any, int]]:
    """`(ids, x, start)`: each chunk with the global index of its first row.

    Number the chunks before dealing them to processes (`distributed.round_robin`), so that
    each row keeps its index, and with it its Monte Carlo stream (`RowSeeds`)."""
    start = 0
    for ids, x in chunks:
        yield ids, x, start
        start += len(ids)


def iter_prediction_rows(
    la: Laplace,
    chunks: Iterable[tuple[list[Any], Tensor] | tuple[list[Any], Tensor, int]],
    options: PredictOptions,
    source: str = "input",
) -> Iterator[list[dict[str, Any]]]:
    """Stream rows chunk by chunk: memory is bounded by one chunk, whatever the input length.

    Chunks are `(ids, x)`, or `(ids, x, start)` from `number_chunks` (needed when they are not
    all seen here, as under torchrun). Monte Carlo draws are seeded per row from
    `options.seed` and the row's global index (`RowSeeds`), so a row's scores do not depend on
    the batch size or on the batch it falls in. `source` names the inputs in errors (the
    first chunk is checked against the model)."""
    pred_type, link_approx = default_pred_options(la, options)
    checked = False
    seen = 0
    for chunk in chunks:
        ids, x = chunk[0], chunk[1]
        start = chunk[2] if len(chunk) > 2 else seen
        seen = start + len(ids)
        generator = RowSeeds(options.seed, start)
        with la.subset.reuse_forward():  # the check's forward pass serves the prediction
            if not checked:
                check_model_accepts(la, x, source)
                checked = True
            # Float features are checked; token ids (dict / integer batches) cannot be NaN.
            if isinstance(x, Tensor) and x.is_floating_point() and not torch.isfinite(x).all():
                bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero()[0, 0])
                raise BadInputError(f"{source}: row {ids[bad]}: features contain NaN or Inf")
            pred = predict_batch(
                la, x, pred_type, link_approx, options.n_samples, generator, options.interval
            )
        yield prediction_rows(la, list(ids), pred)


def loader_chunks(loader: Iterable[Any]) -> Iterator[tuple[list[int], Tensor]]:
    """(ids, x) chunks from a split's DataLoader; ids are global row numbers."""
    start = 0
    for batch in loader:
        x, _ = split_batch(batch)
        n = batch_size(x)  # dict (text) batches too
        yield list(range(start, start + n)), x
        start += n
