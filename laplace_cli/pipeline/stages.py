"""The stages users run — fit, tune, evaluate, predict — as library functions (re-exports).

The code lives in `stage_support` (progress, input check, data splits), `model_loading` (models,
posterior files), `fit_stage`, `tune_stage` and `predict_stage`; this module keeps the old import
path (`from laplace_cli.pipeline.stages import fit`) working.
"""

from __future__ import annotations

from laplace_cli.pipeline.fit_stage import FitOptions, FitResult, fit, fit_and_save
from laplace_cli.pipeline.model_loading import (
    LoadedModel,
    LoadedPosterior,
    ModelSpec,
    load_model_spec,
    load_posterior,
    model_spec_from_ref,
    resave,
    save_posterior,
)
from laplace_cli.pipeline.predict_stage import (
    ROW_FIELDS,
    PredictOptions,
    default_pred_options,
    iter_prediction_rows,
    loader_chunks,
    normal_quantile,
    number_chunks,
    predict_batch,
    prediction_rows,
)
from laplace_cli.pipeline.stage_support import (
    Progress,
    ProgressView,
    check_model_accepts,
    len_or_none,
    likelihood_note,
    no_progress,
    resolve_likelihood,
    split_loader,
)
from laplace_cli.pipeline.tune_stage import tune

__all__ = [
    "ROW_FIELDS",
    "FitOptions",
    "FitResult",
    "LoadedModel",
    "LoadedPosterior",
    "ModelSpec",
    "PredictOptions",
    "Progress",
    "ProgressView",
    "check_model_accepts",
    "default_pred_options",
    "fit",
    "fit_and_save",
    "iter_prediction_rows",
    "len_or_none",
    "likelihood_note",
    "load_model_spec",
    "load_posterior",
    "loader_chunks",
    "model_spec_from_ref",
    "no_progress",
    "normal_quantile",
    "number_chunks",
    "predict_batch",
    "prediction_rows",
    "resave",
    "resolve_likelihood",
    "save_posterior",
    "split_loader",
    "tune",
]
