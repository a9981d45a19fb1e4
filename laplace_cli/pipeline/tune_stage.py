"""The tune stage: optimise the prior precision (and σ for regression) of a loaded posterior."""

from __future__ import annotations

from typing import Any

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.datasets import load_dataset_spec
from laplace_cli.laplace.functional_state import is_functional
from laplace_cli.pipeline.model_loading import (
    LoadedPosterior,
)
from laplace_cli.pipeline.stage_support import (
    Progress,
    ProgressView,
    dense_labels,
    no_progress,
    out_of_memory_is_exit_3,
    split_loader,
)


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
    conformal: list[float] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Optimise the prior precision (and σ for regression) and record the result on `lp.la`.

    Grid search scores `split` of `data_path` (default: the data the posterior was fitted on).
    marglik reads no data; given `data_path` (and `map_check`) it then scores the tuned
    posterior and the MAP on `split` with `loss`, as the grid search does, and warns
    (TuningWarning) when the tuned one is worse. The result gets `likelihood` and, where
    scored, `tuned_loss`, `map_loss`, `worse_than_map`.

    `conformal` levels: after tuning, split conformal thresholds are calibrated on `split` with
    the tuned predictive and stored as the result's (and the posterior's) `tuning.conformal`
    (`pipeline.conformal_stage`); a later tune replaces them with the rest of the record.
    """
    la = lp.la
    if conformal and getattr(la, "output_positions", None) is not None:
        raise BadInputError(  # before any tuning work
            "--conformal: conformal sets are per input, not per position; not available for "
            "a posterior with dense outputs (output_positions): drop --conformal"
        )
    if is_functional(la):  # function-space (GP) Laplace: one scalar prior precision
        from laplace_cli.pipeline.gp_stage import tune_gp

        return tune_gp(
            lp,
            method=method,
            data_path=data_path,
            split=split,
            batch_size=batch_size,
            progress=progress,
            **kwargs,
        )
    check = _data_loaders(lp, method, data_path, split, batch_size, progress, map_check, kwargs)
    if method == "marglik" and la.likelihood == Likelihood.REGRESSION:
        # The library leaves σ alone unless asked (as laplace-torch); the CLI keeps tuning it
        # with the prior for regression, as `laplace tune --help` says.
        kwargs.setdefault("tune_sigma_noise", True)
    loader = kwargs.get("val_loader")
    rows = batch_size or getattr(loader, "batch_size", None)
    with out_of_memory_is_exit_3(f"tune ({method})", rows, la.device):
        result = la.optimize_prior_precision(method=method, progress=progress, **kwargs)
    if check is not None:
        result.update(_map_comparison(la, check, split, progress, kwargs))
    result["likelihood"] = la.likelihood.value
    if conformal:
        _calibrate(lp, data_path, split, batch_size, conformal, progress, kwargs)
    return result


def _data_loaders(
    lp: LoadedPosterior,
    method: str,
    data_path: str | None,
    split: str,
    batch_size: int | None,
    progress: Progress,
    map_check: bool,
    kwargs: dict[str, Any],
) -> Any:
    """Grid search: put the validation loader in `kwargs`. marglik with data: return the loader
    of the MAP comparison (None without one); a bad spec or split fails before the tuning."""
    la = lp.la
    if method == "gridsearch":
        data_path = data_path or lp.metadata.get("data")
        if not data_path:
            raise BadInputError("grid search needs validation data: pass --data")
        spec = load_dataset_spec(data_path)
        loader = split_loader(
            spec,
            split,
            la.likelihood,
            batch_size,
            any_order=True,
            label_maps=dense_labels(la, spec),
        )
        kwargs["val_loader"] = ProgressView(loader, progress, "validation pass")
    elif data_path is not None and map_check:
        spec = load_dataset_spec(data_path)
        return split_loader(
            spec,
            split,
            la.likelihood,
            batch_size,
            any_order=True,
            label_maps=dense_labels(la, spec),
        )
    return None


def _map_comparison(
    la: Any, check: Any, split: str, progress: Progress, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The tuned posterior and the MAP scored on `split` with the tuning's loss and predictive."""
    from laplace_cli.tuning.api import compare_with_map

    return compare_with_map(
        la,
        ProgressView(check, progress, f"score against the MAP on {split!r}"),
        loss=kwargs.get("loss", "nll"),
        pred_type=kwargs.get("pred_type"),
        link_approx=kwargs.get("link_approx"),
        n_samples=kwargs.get("n_samples", 100),
        seed=kwargs.get("seed", 0),
    )


def _calibrate(
    lp: LoadedPosterior,
    data_path: str | None,
    split: str,
    batch_size: int | None,
    conformal: list[float],
    progress: Progress,
    kwargs: dict[str, Any],
) -> None:
    """Split conformal thresholds on `split` with the tuned predictive (stored on `lp.la`)."""
    from laplace_cli.pipeline.conformal_stage import calibrate_conformal
    from laplace_cli.pipeline.predict_stage import PredictOptions

    la = lp.la
    data_path = data_path or lp.metadata.get("data")
    if not data_path:
        raise BadInputError("--conformal needs calibration data: pass --data")
    loader = split_loader(load_dataset_spec(data_path), split, la.likelihood, batch_size)
    options = PredictOptions(
        pred_type=kwargs.get("pred_type"),
        link_approx=kwargs.get("link_approx"),
        n_samples=kwargs.get("n_samples", 100),
        seed=kwargs.get("seed", 0),
    )
    calibrate_conformal(la, loader, conformal, options, split=split, progress=progress)
