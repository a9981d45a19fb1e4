"""`laplace train`: marginal-likelihood training of a factory-built model on a dataset spec."""

from __future__ import annotations

from pathlib import Path

from laplace_cli.cli.common import (
    apply_threads,
    check_device,
    check_factory,
    check_positive,
    parse_json_object,
    progress_for,
    require_file,
)
from laplace_cli.cli.options import (
    BatchSizeOpt,
    BurninOpt,
    DataOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    EpochsOpt,
    FixSigmaNoiseOpt,
    HyperstepsOpt,
    JsonOpt,
    LikelihoodOpt,
    LrHypOpt,
    LrOpt,
    MarglikFrequencyOpt,
    ModelFactoryOpt,
    ModelKwargsOpt,
    PatienceOpt,
    PriorPrecisionOpt,
    PriorStructureOpt,
    QuietOpt,
    SeedOpt,
    SigmaNoiseInitOpt,
    SplitOpt,
    StructureOpt,
    TemperatureOpt,
    ThreadsOpt,
    TrainOutputOpt,
)
from laplace_cli.core.enums import Likelihood, PriorStructure, Structure
from laplace_cli.core.errors import BadInputError

EXAMPLES = [
    "laplace train --model-factory sample_models/models.py:diabetes_mlp --model-kwargs "
    "'{\"hidden\": 16}' --data sample_models/diabetes_mlp/data.yaml --epochs 200 -o runs/d16",
    "laplace train --model-factory mypkg.nets:make_mlp --data data.yaml --structure diag "
    "--patience 10 -o runs/mlp",
]

#: Structures whose log marginal likelihood is differentiable in δ and σ over all weights.
TRAIN_STRUCTURES = (Structure.KRON, Structure.DIAG, Structure.FULL)


def train(
    output: TrainOutputOpt,
    model_factory: ModelFactoryOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    data: DataOpt = None,
    likelihood: LikelihoodOpt = None,
    structure: StructureOpt = Structure.KRON,
    prior_structure: PriorStructureOpt = PriorStructure.LAYERWISE,
    epochs: EpochsOpt = 100,
    lr: LrOpt = 1e-3,
    lr_hyp: LrHypOpt = 0.1,
    hypersteps: HyperstepsOpt = 10,
    marglik_frequency: MarglikFrequencyOpt = 1,
    burnin: BurninOpt = 0,
    patience: PatienceOpt = None,
    prior_precision: PriorPrecisionOpt = None,
    sigma_noise: SigmaNoiseInitOpt = None,
    fix_sigma_noise: FixSigmaNoiseOpt = False,
    temperature: TemperatureOpt = None,
    split: SplitOpt = "train",
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    seed: SeedOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train a fresh model from --model-factory with marginal-likelihood training (laplace-torch's
    marglik_training) on the train split of --data; write the weights and the posterior.

    The network and its prior precision (and the observation noise, for regression) are trained
    together: every --marglik-frequency epochs a Laplace approximation over all weights is fitted
    and the hyperparameters follow its log marginal likelihood. The state with the best marginal
    likelihood is kept. OUTPUT/model.safetensors and OUTPUT/posterior.st are written atomically;
    use them with 'laplace predict -p OUTPUT/posterior.st' or refit with 'laplace fit
    OUTPUT/model.safetensors --model-factory ...'. No validation split is needed.
    """
    _check(output, model_factory, model_kwargs, data, structure, likelihood, fix_sigma_noise)
    _check_positive(lr, lr_hyp, prior_precision, sigma_noise, temperature)
    apply_threads(threads)
    check_device(device)
    kwargs = parse_json_object(model_kwargs, "--model-kwargs")

    from laplace_cli.pipeline.train_stage import TrainOptions, train_and_save

    options = TrainOptions(
        likelihood=likelihood.value if likelihood is not None else None,
        structure=structure.value,
        prior_structure=prior_structure.value,
        epochs=epochs,
        lr=lr,
        lr_hyp=lr_hyp,
        hypersteps=hypersteps,
        marglik_frequency=marglik_frequency,
        burnin=burnin,
        prior_precision=prior_precision if prior_precision is not None else 1.0,
        sigma_noise=sigma_noise if sigma_noise is not None else 1.0,
        fix_sigma_noise=fix_sigma_noise,
        temperature=temperature if temperature is not None else 1.0,
        patience=patience,
        split=split,
        batch_size=batch_size,
        seed=seed if seed is not None else 0,
    )
    output.mkdir(parents=True, exist_ok=True)
    result = train_and_save(
        model_factory,  # type: ignore[arg-type]  # checked above
        kwargs,
        data,  # type: ignore[arg-type]
        options,
        output / "model.safetensors",
        output / "posterior.st",
        device=device or "auto",
        dtype=dtype.value if dtype is not None else None,
        progress=progress_for(quiet),
    )
    _report(result, quiet, json_)


def _check(
    output: Path,
    model_factory: str | None,
    model_kwargs: str | None,
    data: Path | None,
    structure: Structure,
    likelihood: Likelihood | None,
    fix_sigma_noise: bool,
) -> None:
    if model_factory is None:
        raise BadInputError(
            "laplace train needs --model-factory (pkg.module:function or file.py:function) to "
            "build the model; to fit a trained checkpoint use 'laplace fit'"
        )
    check_factory(model_factory)
    parse_json_object(model_kwargs, "--model-kwargs")
    if data is None:
        raise BadInputError("laplace train needs --data (a dataset spec YAML)")
    require_file(data, "--data")
    if output.exists() and not output.is_dir():
        raise BadInputError(f"--output {output}: is a file; give a folder (it is created)")
    if structure not in TRAIN_STRUCTURES:
        names = ", ".join(s.value for s in TRAIN_STRUCTURES)
        raise BadInputError(
            f"--structure {structure.value}: marginal-likelihood training needs one of {names}; "
            f"fit {structure.value} afterwards with 'laplace fit'"
        )
    if likelihood is not None and likelihood not in (
        Likelihood.CLASSIFICATION,
        Likelihood.REGRESSION,
    ):
        raise BadInputError(
            f"--likelihood {likelihood.value}: laplace train takes classification or regression"
        )


def _check_positive(
    lr: float,
    lr_hyp: float,
    prior_precision: float | None,
    sigma_noise: float | None,
    temperature: float | None,
) -> None:
    for value, option in (
        (lr, "--lr"),
        (lr_hyp, "--lr-hyp"),
        (prior_precision, "--prior-precision"),
        (sigma_noise, "--sigma-noise"),
        (temperature, "--temperature"),
    ):
        check_positive(value, option)


def _report(result, quiet: bool, json_: bool) -> None:
    from laplace_cli.cli.console import emit_json, stderr_console

    la = result.la
    summary = {
        "checkpoint": result.checkpoint,
        "posterior": result.posterior,
        "likelihood": la.likelihood.value,
        "structure": la.hessian_structure.value,
        "n_params": la.n_params,
        "n_data": la.n_data,
        "epochs_run": result.epochs_run,
        "log_marginal_likelihood": result.log_marginal_likelihood,
        "prior_precision": [float(v) for v in la.prior_precision.detach().cpu().reshape(-1)],
        "sigma_noise": [float(v) for v in la.sigma_noise.detach().cpu().reshape(-1)],
        "final_loss": result.losses[-1],
        "seconds": result.seconds,
    }
    if not quiet:
        for note in result.notes:
            stderr_console.print(f"note: {note}", markup=False, highlight=False)
    if json_:
        emit_json(summary)
    elif not quiet:
        stderr_console.print(
            f"trained {la.n_params:,} parameters on {la.n_data:,} examples for "
            f"{result.epochs_run} epochs in {result.seconds:.2f} s; best log marginal likelihood "
            f"{result.log_marginal_likelihood:.4g}; wrote {result.checkpoint} and "
            f"{result.posterior}",
            markup=False,
            highlight=False,
        )
