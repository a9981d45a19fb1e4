"""Recipes: one YAML file naming the model, the data and the stages to run, validated up front.

    # Digits MLP, K-FAC over all weights.
    # Run:      laplace run recipes/digits_mlp_kron.yaml --output runs/digits_mlp
    # Override: --set fit.structure=diag --set tune.method=gridsearch
    model: {path: ../sample_models/digits_mlp/model.pt2}
    data: ../sample_models/digits_mlp/data.yaml
    stages: [fit, tune, evaluate, predict]
    fit: {subset: all, structure: kron}
    tune: {method: marglik}
    evaluate: {split: test, fail_if: ["ece>0.05"], plot: reliability.png}
    predict: {split: test, format: csv}

Relative paths resolve against the recipe's folder; output file names against the output folder.
Every key is documented in ``docs/recipes.md``, rendered from :mod:`laplace_cli.io.spec_schema`.
Validation (:mod:`laplace_cli.pipeline.recipe_validation`, re-exported here) reports every
problem at once (`recipe.yaml: fit.structure: expected one of
diag, kron, full, lowrank, got 'kronn' (did you mean 'kron'?)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laplace_cli.pipeline.recipe_predict import predict_recipe_split

# Validation lives in its own module; its names stay importable from here.
from laplace_cli.pipeline.recipe_validation import (
    SCHEMA,
    STAGES,
    Recipe,
    apply_overrides,
    did_you_mean,
    load_recipe,
    validate_recipe,
)

__all__ = [
    "SCHEMA",
    "STAGES",
    "Recipe",
    "RunResult",
    "apply_overrides",
    "did_you_mean",
    "load_recipe",
    "run_recipe",
    "validate_recipe",
]


@dataclass
class RunResult:
    """What `run_recipe` produced: files by kind, the evaluation (if run) and the tuning result."""

    files: dict[str, str] = field(default_factory=dict)
    evaluation: Any = None
    tuning: dict[str, Any] | None = None
    fit_seconds: float | None = None
    log_marginal_likelihood: float | None = None
    #: Lines for the user about choices made for them (e.g. the likelihood assumed).
    notes: list[str] = field(default_factory=list)
    #: The doctor stage's document (as `laplace doctor --json`, with `fail_on` and `failed`).
    doctor: dict[str, Any] | None = None


def run_recipe(recipe: Recipe, output_dir: str | Path, progress: Any = None) -> RunResult:
    """Run the recipe's stages in order into `output_dir`.

    Writes `posterior.safetensors` (after fit, rewritten after tune), `report.json` (evaluate,
    plus any plot / HTML asked for) and `predictions.<format>` (predict). Gate failures are
    recorded in the result, not raised, so the caller can write everything first.
    """
    from laplace_cli.pipeline import distributed
    from laplace_cli.pipeline.stage_support import no_progress

    progress = progress or no_progress
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = RunResult()
    # The baseline, the history file and the trackers are checked before the fit (bad input).
    baseline = _evaluate_baseline(recipe) if "evaluate" in recipe.stages else None
    lp, fitted = _run_fit(recipe, out, progress, result)
    # Under torchrun every rank holds the whole posterior after the fit. Rank 0 alone tunes and
    # writes files; the ranks share the evaluate and predict work (rank 0 gathers the rows).
    ctx = distributed.context()
    if "tune" in recipe.stages:
        _run_tune(recipe, lp, ctx, progress, result)
    result.log_marginal_likelihood = float(lp.la.log_marginal_likelihood())
    if "evaluate" in recipe.stages:
        _run_evaluate(recipe, out, lp, fitted, progress, result, baseline)
    if "predict" in recipe.stages:
        written = predict_recipe_split(recipe, out, lp.la, ctx, progress)
        if written is not None:
            result.files["predictions"] = written
    if "doctor" in recipe.stages and (ctx is None or ctx.is_main):
        _run_doctor(recipe, out, lp, progress, result)
    return result


def _run_doctor(recipe: Recipe, out: Path, lp: Any, progress: Any, result: RunResult) -> None:
    """`laplace doctor` on the run's posterior (rank 0); its document written as JSON.

    Last, so that nothing it does can touch what the other stages wrote (its grid search puts
    the prior back, but the order makes that not matter)."""
    import json

    from laplace_cli.io.atomic import atomic_write_bytes
    from laplace_cli.pipeline import doctor

    cfg = recipe.section("doctor")
    split = cfg.get("split", "val")
    fail_on = cfg.get("fail_on", "never")
    findings = doctor.diagnose(
        lp.la,
        str(recipe.data),
        split=split,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
        progress=progress,
    )
    doc = doctor.report(findings, posterior=str(lp.path), data=str(recipe.data), split=split)
    doc["fail_on"] = fail_on
    doc["failed"] = doctor.fails(doc["worst"], fail_on)
    path = out / cfg.get("output", "doctor.json")
    atomic_write_bytes(path, (json.dumps(doc, indent=2, default=str) + "\n").encode())
    result.doctor = doc
    result.files["doctor"] = str(path)


def _model_spec(recipe: Recipe) -> Any:
    """The recipe's `model:` section as a `ModelSpec`."""
    from laplace_cli.pipeline.model_loading import ModelSpec

    return ModelSpec(
        path=recipe.model["path"],
        factory=recipe.model.get("factory"),
        kwargs=dict(recipe.model.get("kwargs") or {}),
        trust_checkpoint=bool(recipe.model.get("trust_checkpoint", False)),
    )


def _fit_options(recipe: Recipe) -> Any:
    """The recipe's `fit:` section as `FitOptions`, with the defaults of `laplace fit`."""
    from laplace_cli.pipeline.fit_stage import FitOptions

    fit_cfg = recipe.section("fit")
    return FitOptions(
        likelihood=fit_cfg.get("likelihood"),
        subset=fit_cfg.get("subset", "last_layer"),
        structure=fit_cfg.get("structure", "kron"),
        curvature=fit_cfg.get("curvature", "ggn"),
        backend=fit_cfg.get("backend", "auto"),
        prior_precision=float(fit_cfg.get("prior_precision", 1.0)),
        temperature=float(fit_cfg.get("temperature", 1.0)),
        sigma_noise=fit_cfg.get("sigma_noise"),
        last_layer_name=fit_cfg.get("last_layer_name"),
        kron_approx=fit_cfg.get("kron_approx", "expand"),
        rank=fit_cfg.get("rank"),
        subnetwork=fit_cfg.get("subnetwork"),
        split=fit_cfg.get("split", "train"),
        batch_size=fit_cfg.get("batch_size", recipe.batch_size),
        seed=recipe.seed,
        output_positions=fit_cfg.get("output_positions"),
        ignore_index=fit_cfg.get("ignore_index"),
    )


def _run_fit(recipe: Recipe, out: Path, progress: Any, result: RunResult) -> tuple[Any, Any]:
    """Fit and write `posterior.safetensors`: `(LoadedPosterior, FitResult)`."""
    from laplace_cli.pipeline.fit_stage import fit
    from laplace_cli.pipeline.model_loading import LoadedPosterior, save_posterior

    options = _fit_options(recipe)
    if options.structure == "gp":  # function-space Laplace on M context points
        from laplace_cli.pipeline.gp_stage import fit_gp

        cfg = recipe.section("fit")
        fitted = fit_gp(
            _model_spec(recipe),
            recipe.data,
            options,
            cfg.get("context_points"),
            cfg.get("context", "first"),
            device=recipe.device,
            dtype=recipe.dtype,
            progress=progress,
        )
    else:
        fitted = fit(
            _model_spec(recipe),
            recipe.data,
            options,
            device=recipe.device,
            dtype=recipe.dtype,
            progress=progress,
        )
    la = fitted.la
    result.fit_seconds = fitted.seconds
    result.notes = list(fitted.notes)
    posterior_path = out / "posterior.safetensors"
    extra = {"data": str(recipe.data), "fit_seconds": round(fitted.seconds, 3)}
    save_posterior(la, posterior_path, fitted.loaded, extra)
    result.files["posterior"] = str(posterior_path)
    return LoadedPosterior(la, extra, fitted.loaded, str(posterior_path)), fitted


def _run_tune(recipe: Recipe, lp: Any, ctx: Any, progress: Any, result: RunResult) -> None:
    """Tune on rank 0 and rewrite the posterior; under torchrun every rank takes the result."""
    from laplace_cli.pipeline.model_loading import resave
    from laplace_cli.pipeline.tune_stage import tune

    if ctx is None or ctx.is_main:
        cfg = recipe.section("tune")
        method = cfg.pop("method", "marglik")
        split = cfg.pop("split", "val")
        cfg.setdefault("prior_structure", "scalar")  # as `laplace tune`, both methods
        from laplace_cli.tuning.grid import check_grid

        cfg.update(
            check_grid(
                cfg.pop("grid_min", None),
                cfg.pop("grid_max", None),
                cfg.pop("grid_size", None),
                names=("tune.grid_min", "tune.grid_max", "tune.grid_size"),
            )
        )
        from laplace_cli.io.datasets import load_dataset_spec

        result.tuning = tune(
            lp,
            method=method,
            data_path=str(recipe.data),
            split=split,
            batch_size=recipe.batch_size,
            progress=progress,
            seed=recipe.seed,
            # marglik: score the tuned posterior against the MAP where the split exists.
            map_check=split in load_dataset_spec(recipe.data).splits,
            **cfg,
        )
        resave(lp, Path(lp.path))
    if ctx is not None:
        result.tuning = _share_tuning(lp.la, ctx)


def _evaluate_baseline(recipe: Recipe) -> Any:
    """Check `evaluate`'s history file, trackers and baseline gates; return the baseline."""
    from laplace_cli.io.history import check_history_file
    from laplace_cli.pipeline.baseline import check_baseline_gates, load_baseline
    from laplace_cli.pipeline.gates import parse_gates
    from laplace_cli.pipeline.trackers import check_trackers

    cfg = recipe.section("evaluate")
    if cfg.get("history"):
        check_history_file(cfg["history"])
    check_trackers(cfg.get("log") or [])
    base = load_baseline(cfg["baseline"], cfg.get("history")) if cfg.get("baseline") else None
    check_baseline_gates(parse_gates(cfg.get("fail_if") or []), base)
    return base


def _bootstrap_settings(cfg: dict[str, Any], seed: int | None) -> Any:
    """`evaluate.bootstrap` and friends as `metrics.bootstrap.BootstrapSettings` (None: off)."""
    from laplace_cli.metrics.bootstrap import BootstrapSettings

    n_resamples = int(cfg.get("bootstrap", 0))
    if n_resamples == 0:
        return None
    return BootstrapSettings(
        n_resamples=n_resamples,
        confidence=float(cfg.get("confidence", 0.95)),
        seed=seed if seed is not None else 0,
        method=cfg.get("interval_method", "prediction"),
    )


def _run_evaluate(
    recipe: Recipe,
    out: Path,
    lp: Any,
    fitted: Any,
    progress: Any,
    result: RunResult,
    baseline: Any = None,
) -> None:
    """Evaluate (the ranks share the work); rank 0 writes the report and its plot / HTML."""
    from laplace_cli.pipeline.evaluation import evaluate
    from laplace_cli.pipeline.predict_stage import PredictOptions
    from laplace_cli.pipeline.publish import PublishOptions, publish_evaluation

    la = lp.la
    cfg = recipe.section("evaluate")
    opts = PredictOptions(
        pred_type=cfg.get("pred_type"),
        link_approx=cfg.get("link_approx"),
        n_samples=int(cfg.get("samples", 100)),
        seed=recipe.seed,
    )
    evaluation = evaluate(
        la,
        recipe.data,
        split=cfg.get("split", "test"),
        ood_data=cfg.get("ood_data"),
        ood_split=cfg.get("ood_split", "test"),
        conformal_level=float(cfg.get("conformal_level", 0.9)),
        options=opts,
        gates=cfg.get("fail_if"),
        batch_size=recipe.batch_size,
        progress=progress,
        gate_rows=baseline.gate_rows() if baseline is not None else None,
        n_bins=int(cfg.get("bins", 15)),
        binning=cfg.get("binning", "equal-width"),
        bootstrap_settings=_bootstrap_settings(cfg, recipe.seed),
    )
    result.evaluation = evaluation
    if evaluation is not None:  # rank 0 writes the report
        report = out / cfg.get("report", "report.json")
        outputs = PublishOptions(
            report=report,
            plot=out / cfg["plot"] if cfg.get("plot") else None,
            html=out / cfg["html"] if cfg.get("html") else None,
            baseline=baseline,
            strict_baseline=bool(cfg.get("strict_baseline", False)),
            history=cfg.get("history"),
            junit=out / cfg["junit"] if cfg.get("junit") else None,
            summary_md=out / cfg["summary_md"] if cfg.get("summary_md") else None,
            trackers=cfg.get("log") or [],
        )
        written = publish_evaluation(
            evaluation,
            la.likelihood,
            recipe.data,
            outputs,
            extra={
                "posterior": str(lp.path),
                "fingerprint": fitted.loaded.fingerprint,
                "model": fitted.loaded.ref.to_dict(),
                "recipe": recipe.source,
                "fit_seconds": fitted.seconds,
                "tuning": result.tuning,
            },
        )
        result.files.update(written)


def _share_tuning(la: Any, ctx: Any) -> dict[str, Any] | None:
    """Rank 0's tuned hyperparameters set on every rank's posterior (exactly, not re-tuned)."""
    from laplace_cli.pipeline import distributed

    tuned = None
    if ctx.is_main:
        tuned = {
            "prior_precision": la.prior_precision.detach().cpu(),
            "sigma_noise": la.sigma_noise.detach().cpu(),
            "temperature": la.temperature,
            "tuning": la.tuning,
        }
    tuned = distributed.broadcast_from_main(tuned, ctx)
    if not ctx.is_main:
        la.sigma_noise = tuned["sigma_noise"]
        la.prior_precision = tuned["prior_precision"]
        la.temperature = tuned["temperature"]
        la.tuning = tuned["tuning"]
    return tuned["tuning"]
