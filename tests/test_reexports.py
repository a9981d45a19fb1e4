"""Modules split by concept keep their old import paths: each name is the very object of the new
module (a re-export, not a copy that could drift)."""

from __future__ import annotations

import importlib

import pytest

# old module -> {new module: names it re-exports from there}
MOVED = {
    "laplace_cli.io.spec_schema": {
        "laplace_cli.io.schema_keys": ["KINDS", "REQUIRED", "UNSET", "Key", "Section", "keys_of"],
        "laplace_cli.io.data_spec_schema": ["DATA_FORMATS", "DATA_SPEC_SECTIONS"],
        "laplace_cli.io.recipe_schema": ["RECIPE_SECTIONS", "RECIPE_STAGES", "RECIPE_FIT"],
        "laplace_cli.io.recipe_scoring_schema": ["RECIPE_EVALUATE", "RECIPE_PREDICT"],
    },
    "laplace_cli.io.checkpoints": {
        "laplace_cli.io.devices": ["resolve_device", "resolve_dtype"],
        "laplace_cli.io.fingerprint": ["model_fingerprint"],
    },
    "laplace_cli.pipeline.recipes": {
        "laplace_cli.pipeline.recipe_validation": [
            "SCHEMA",
            "STAGES",
            "Recipe",
            "apply_overrides",
            "did_you_mean",
            "load_recipe",
            "validate_recipe",
        ],
    },
    "laplace_cli.pipeline.report": {
        "laplace_cli.pipeline.report_plots": [
            "figure_class",
            "plot_coverage",
            "plot_reliability",
            "plot_risk_coverage",
        ],
        "laplace_cli.pipeline.report_html": ["TABLE_HEADINGS", "TABLE_TITLES", "write_html_report"],
        "laplace_cli.pipeline.report_glossary": ["GLOSSARY", "glossary_entry"],
    },
    "laplace_cli.pipeline.gates": {
        "laplace_cli.pipeline.gate_parsing": [
            "BOUNDS",
            "DEFAULT_ROW",
            "GRAMMAR",
            "Gate",
            "MetricRef",
            "needs_intervals",
            "parse_gate",
            "parse_gates",
        ],
    },
    "laplace_cli.metrics.bootstrap": {
        "laplace_cli.metrics.bootstrap_statistics": [
            "BINNINGS",
            "Statistic",
            "auroc_statistic",
            "binary_statistic",
            "classification_statistic",
            "regression_statistic",
        ],
    },
    "laplace_cli.metrics.classification": {
        "laplace_cli.metrics.calibration": [
            "ReliabilityBins",
            "adaptive_ece",
            "ece",
            "mce",
            "reliability_bins",
        ],
    },
    "laplace_cli.pipeline.evaluation": {
        "laplace_cli.pipeline.split_outputs": ["SplitOutputs", "collect_outputs"],
        "laplace_cli.pipeline.evaluation_report": [
            "IDENTITY_KEYS",
            "REPORT_SCHEMA_VERSION",
            "EvaluationResult",
            "add_identity",
            "jsonable",
            "save_evaluation_outputs",
        ],
        "laplace_cli.pipeline.evaluation_scoring": ["WORSE_THAN_MAP"],
    },
    "laplace_cli.pipeline.fit_stage": {
        "laplace_cli.pipeline.fit_setup": ["FitOptions"],
    },
    "laplace_cli.io.posterior_metadata": {
        "laplace_cli.io.posterior_schema": [
            "BLOCK_KINDS",
            "FORMAT",
            "FORMAT_VERSION",
            "JSON_KEYS",
            "KNOWN_KEYS",
            "KNOWN_VERSIONS",
            "REQUIRED_KEYS",
            "STR_KEYS",
            "decode_metadata",
            "encode_metadata",
            "with_defaults",
        ],
        "laplace_cli.io.posterior_key_checks": [
            "check_blocks",
            "conformal_problems",
            "dense_problems",
            "gp_problems",
        ],
    },
    "laplace_cli.io.dataset_specs": {
        "laplace_cli.io.split_specs": [
            "SPLIT_KEYS",
            "SplitSpec",
            "positive_int",
            "resolve_relative",
            "short_repr",
            "unknown_keys",
            "validate_split",
        ],
    },
    "laplace_cli.io.datasets": {
        "laplace_cli.io.dataset_labels": [
            "LabelError",
            "check_label_maps",
            "check_labels",
        ],
        "laplace_cli.io.split_specs": [
            "SplitSpec",
            "SPLIT_KEYS",
        ],
    },
    "laplace_cli.cli.options": {
        "laplace_cli.cli.options_inputs": [
            "ModelArg",
            "DataOpt",
            "SplitOpt",
            "PosteriorOpt",
            "PosteriorArg",
            "PosteriorsArg",
            "PriorPosteriorOpt",
            "OodDataOpt",
            "ConformalLevelOpt",
            "ConformalCalibrateOpt",
            "ConformalPredictOpt",
            "ConformalScoreOpt",
            "PerLabelTemperatureOpt",
            "BootstrapOpt",
            "ConfidenceOpt",
            "IntervalMethodOpt",
            "BinsOpt",
            "BinningOpt",
            "InputOpt",
            "XKeyOpt",
            "ColumnsOpt",
            "HeaderOpt",
            "RecipeArg",
        ],
        "laplace_cli.cli.options_fitting": [
            "ModelOverrideOpt",
            "ModelFactoryOpt",
            "ModelKwargsOpt",
            "TrustCheckpointOpt",
            "LastLayerNameOpt",
            "LikelihoodOpt",
            "SubsetOpt",
            "StructureOpt",
            "CurvatureOpt",
            "BackendOpt",
            "RankOpt",
            "SubnetworkOpt",
            "PriorPrecisionOpt",
            "TemperatureOpt",
            "MethodOpt",
            "PriorStructureOpt",
            "GridMinOpt",
            "GridMaxOpt",
            "GridSizeOpt",
            "TuneLossOpt",
        ],
        "laplace_cli.cli.options_output": [
            "PredTypeOpt",
            "LinkApproxOpt",
            "SamplesOpt",
            "IntervalOpt",
            "BatchSizeOpt",
            "OutputFileOpt",
            "OutputDirOpt",
            "FormatOpt",
            "ReportOpt",
            "PlotOpt",
            "HtmlOpt",
            "FailIfOpt",
            "SetOpt",
        ],
        "laplace_cli.cli.options_execution": [
            "DeviceOpt",
            "DtypeOpt",
            "CurvatureDtypeOpt",
            "SeedOpt",
            "CheckpointEveryOpt",
            "ResumeOpt",
            "ThreadsOpt",
            "JsonOpt",
            "QuietOpt",
            "DebugOpt",
            "BaselineOpt",
            "StrictBaselineOpt",
            "HistoryOpt",
            "JunitOpt",
            "SummaryMdOpt",
            "LogOpt",
        ],
        "laplace_cli.cli.options_training": [
            "TrainOutputOpt",
            "EpochsOpt",
            "LrOpt",
            "LrHypOpt",
            "HyperstepsOpt",
            "MarglikFrequencyOpt",
            "BurninOpt",
            "PatienceOpt",
            "SigmaNoiseInitOpt",
            "FixSigmaNoiseOpt",
        ],
    },
}

CASES = [
    (old, new, name)
    for old, parts in MOVED.items()
    for new, names in parts.items()
    for name in names
]


@pytest.mark.parametrize(("old", "new", "name"), CASES, ids=[f"{o}.{n}" for o, _, n in CASES])
def test_old_path_gives_the_new_modules_object(old: str, new: str, name: str) -> None:
    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    assert getattr(old_module, name) is getattr(new_module, name)
    public = getattr(old_module, "__all__", None)
    if public is not None and not name.isupper():
        assert name in public, f"{old}.__all__ lacks {name}"
