"""The fit's options and the unfitted `Laplace` they describe: the subnetwork chosen, the dense
output settings and --prior applied, and what a multi-pass structure cannot do refused before
any data is read (`pipeline.fit_stage` runs the fit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.datasets import DatasetSpec
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.pipeline.model_loading import LoadedModel, ModelSpec, load_posterior
from laplace_cli.pipeline.stage_support import Progress, ProgressView, split_loader

__all__ = ["FitOptions", "dense_settings", "new_laplace"]


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
    #: structure "gp" (`pipeline.gp_stage`): M context points (None: every row), and which rows.
    context_points: int | None = None
    context: str = "first"
    #: dtype of the curvature and posterior (float32 / float64); None: the model's, float32 for
    #: a bfloat16 / float16 model (`laplace.precision`).
    curvature_dtype: str | None = None
    #: Dense outputs (B, C, *S) (docs/dense-outputs.md): "independent" or "mean" per position
    #: (None: (B, C) outputs), and the label of a masked position (None: the spec's
    #: `ignore_index`, else -100).
    output_positions: str | None = None
    ignore_index: int | None = None


def new_laplace(
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
    dense = dense_settings(options, spec)
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
        curvature_dtype=options.curvature_dtype,
        **dense,
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


def dense_settings(options: FitOptions, spec: DatasetSpec) -> dict[str, Any]:
    """`Laplace`'s output_positions / ignore_index (`--ignore-index` over the spec's key)."""
    if options.output_positions is None:
        if options.ignore_index is not None:
            raise BadInputError(
                "--ignore-index applies to dense outputs; add --output-positions independent "
                "(or mean), or drop --ignore-index"
            )
        return {}
    ignore = options.ignore_index if options.ignore_index is not None else spec.ignore_index
    return {
        "output_positions": options.output_positions,
        "ignore_index": -100 if ignore is None else int(ignore),
    }


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
