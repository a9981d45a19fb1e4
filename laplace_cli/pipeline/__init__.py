"""The stages the CLI runs (fit, tune, evaluate, predict), recipes, resume, distributed runs, gates, reports."""

from __future__ import annotations

from laplace_cli.pipeline.fit_stage import FitOptions, FitResult, fit
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
    predict_batch,
    prediction_rows,
)
from laplace_cli.pipeline.stage_support import (
    Progress,
    check_model_accepts,
    no_progress,
    resolve_likelihood,
    split_loader,
)
from laplace_cli.pipeline.tune_stage import tune

__all__ = [
    "Progress",
    "no_progress",
    "check_model_accepts",
    "ModelSpec",
    "LoadedModel",
    "load_model_spec",
    "model_spec_from_ref",
    "resolve_likelihood",
    "split_loader",
    "FitOptions",
    "FitResult",
    "fit",
    "save_posterior",
    "LoadedPosterior",
    "load_posterior",
    "resave",
    "tune",
    "PredictOptions",
    "default_pred_options",
    "normal_quantile",
    "predict_batch",
    "ROW_FIELDS",
    "prediction_rows",
    "iter_prediction_rows",
    "loader_chunks",
]
