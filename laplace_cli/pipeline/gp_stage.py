"""Function-space (GP) Laplace in the pipeline: fit on M context points, save, tune.

`laplace fit --structure gp --context-points M` builds a `FunctionalLaplace` (subset all) or a
`FunctionalLLLaplace` (subset last_layer) on the train split, with the M context points chosen
by `--context first` (the first M rows of the split) or `--context random` (a seeded draw, as
laplace-torch's). Predict and evaluate go through the usual stages (`predict_stage` sends a GP
posterior to `laplace.functional_prediction`); tune goes through `tune_gp` here.

The posterior file holds the M context inputs: training rows (docs/posterior-format.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from laplace_cli.core.enums import Likelihood, Structure, Subset
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.datasets import load_dataset_spec
from laplace_cli.laplace.functional import FunctionalLaplace
from laplace_cli.laplace.functional_ll import FunctionalLLLaplace
from laplace_cli.laplace.precision import check_half_precision, model_dtype_of
from laplace_cli.pipeline.fit_stage import FitOptions, FitResult
from laplace_cli.pipeline.model_loading import (
    LoadedPosterior,
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

__all__ = ["CONTEXT_STRATEGIES", "fit_gp", "fit_gp_and_save", "tune_gp"]

#: How the M context points are chosen among the train split's rows.
CONTEXT_STRATEGIES = ("first", "random")


def fit_gp(
    model_spec: ModelSpec,
    data_path: str | Path,
    options: FitOptions,
    context_points: int | None,
    context: str = "first",
    *,
    device: str = "auto",
    dtype: str | None = None,
    progress: Progress = no_progress,
) -> FitResult:
    """Fit function-space Laplace on `context_points` rows of the train split (None: every row)."""
    if options.subset not in (Subset.ALL.value, Subset.LAST_LAYER.value):
        raise BadInputError(
            f"--structure gp is for --subset all or last_layer, got --subset {options.subset}"
        )
    if context not in CONTEXT_STRATEGIES:
        raise BadInputError(f"--context: expected first or random, got {context!r}")
    spec = load_dataset_spec(data_path, check_files=True)
    likelihood = resolve_likelihood(options.likelihood, spec)
    if likelihood == Likelihood.BINARY:
        raise BadInputError(
            "--structure gp supports classification and regression; for a binary likelihood "
            "use --structure kron, diag or full"
        )
    loaded = load_model_spec(model_spec, device, dtype)
    torch.manual_seed(options.seed)
    kwargs: dict[str, Any] = {
        "n_subset": context_points,
        "prior_precision": options.prior_precision,
        "temperature": options.temperature,
        "seed": options.seed,
        "context": context,
        "max_memory": options.max_memory,
    }
    if options.sigma_noise is not None:
        kwargs["sigma_noise"] = options.sigma_noise
    check_half_precision(model_dtype_of(loaded.model), Structure.GP)  # exit 2, with the why
    if options.subset == Subset.LAST_LAYER.value:
        la: FunctionalLaplace = FunctionalLLLaplace(
            loaded.model, likelihood, last_layer_name=options.last_layer_name, **kwargs
        )
    else:
        la = FunctionalLaplace(loaded.model, likelihood, **kwargs)
    note = likelihood_note(options.likelihood, spec, data_path)
    # A fixed row order: "first" means the first rows of the split as the spec lists them.
    loader = split_loader(spec, options.split, likelihood, options.batch_size)
    rows = getattr(loader, "batch_size", None)
    first = next(iter(loader), None)
    if first is None:
        raise BadInputError(f"{data_path}: split {options.split!r} has no rows")
    with out_of_memory_is_exit_3("fit gp (the first batch)", rows, la.device):
        check_model_accepts(la, first[0], f"{data_path}: split {options.split!r}")
    start = time.perf_counter()
    with out_of_memory_is_exit_3("fit gp (the context kernel)", rows, la.device):
        la.fit(ProgressView(loader, progress, "fit gp"))
    seconds = time.perf_counter() - start
    summary_start = time.perf_counter()
    log_ml = float(la.log_marginal_likelihood().detach())
    return FitResult(
        la,  # type: ignore[arg-type]
        loaded,
        str(data_path),
        seconds,
        notes=[note] if note else [],
        log_marginal_likelihood=log_ml,
        summary_seconds=time.perf_counter() - summary_start,
    )


def fit_gp_and_save(
    model_spec: ModelSpec,
    data_path: Path,
    options: FitOptions,
    output: str | Path,
    context_points: int | None,
    context: str = "first",
    *,
    device: str = "auto",
    dtype: str | None = None,
    progress: Progress = no_progress,
) -> FitResult:
    """`fit_gp`, then write the posterior file (it carries the M context inputs)."""
    result = fit_gp(
        model_spec,
        data_path,
        options,
        context_points,
        context,
        device=device,
        dtype=dtype,
        progress=progress,
    )
    save_posterior(
        result.la,
        output,
        result.loaded,
        {"data": str(Path(data_path).resolve()), "fit_seconds": round(result.seconds, 3)},
    )
    return result


def tune_gp(
    lp: LoadedPosterior,
    *,
    method: str = "marglik",
    data_path: str | None = None,
    split: str = "val",
    batch_size: int | None = None,
    progress: Progress = no_progress,
    **kwargs: Any,
) -> dict[str, Any]:
    """Tune a GP posterior's scalar prior precision: marglik (no data) or gridsearch on `split`.

    Grid search minimises the predictive NLL of `split` (the test kernels are computed once for
    the whole grid). The result is recorded on `lp.la.tuning` and returned in `tune`'s form.
    """
    la: FunctionalLaplace = lp.la  # type: ignore[assignment]
    prior_structure = kwargs.get("prior_structure") or "scalar"
    if prior_structure != "scalar":
        raise BadInputError(
            "a gp posterior has one scalar prior precision: use --prior-structure scalar"
        )
    if kwargs.get("pred_type") not in (None, "glm"):
        raise BadInputError("a gp posterior predicts with --pred-type glm only")
    if kwargs.get("loss") not in (None, "nll"):
        raise BadInputError("grid search of a gp posterior minimises --loss nll only")
    # The grid as `tuning.grid.check_grid` gives it (log10 bounds and the number of values).
    grid = {
        k: kwargs[k]
        for k in ("log_prior_prec_min", "log_prior_prec_max", "grid_size")
        if kwargs.get(k) is not None
    }
    if method == "gridsearch":
        data_path = data_path or lp.metadata.get("data")
        if not data_path:
            raise BadInputError("grid search needs validation data: pass --data")
        loader = split_loader(load_dataset_spec(data_path), split, la.likelihood, batch_size)
        with out_of_memory_is_exit_3("tune gp (gridsearch)", batch_size, la.device):
            la.optimize_prior_precision(
                method="gridsearch",
                val_loader=ProgressView(loader, progress, "validation pass"),
                link_approx=kwargs.get("link_approx") or "probit",
                **grid,
            )
    elif method == "marglik":
        for _ in progress([None], 1, "tune gp (marglik)"):
            la.optimize_prior_precision(method="marglik")
    else:
        raise BadInputError(f"--method: expected marglik or gridsearch, got {method!r}")
    result: dict[str, Any] = {
        "method": method,
        "prior_structure": "scalar",
        "prior_precision": [float(v) for v in la.prior_precision.reshape(-1)],
        "sigma_noise": [float(la.sigma_noise)],
        "tuned": ["prior_precision"],
        "log_evidence": float(la.log_marginal_likelihood().detach()),
        "likelihood": la.likelihood.value,
    }
    la.tuning = {k: result[k] for k in ("method", "prior_structure", "prior_precision")}
    return result
