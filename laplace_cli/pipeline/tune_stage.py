"""The tune stage: optimise the prior precision (and σ for regression) of a loaded posterior."""

from __future__ import annotations

from typing import Any

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.datasets import load_dataset_spec
from laplace_cli.pipeline.model_loading import (
    LoadedPosterior,
)
from laplace_cli.pipeline.stage_support import (
    Progress,
    ProgressView,
    no_progress,
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
