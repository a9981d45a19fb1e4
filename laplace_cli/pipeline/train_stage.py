"""The train stage: build a model from a factory, train it with marginal-likelihood training on a
split of a dataset spec, write the weights (safetensors) and the fitted posterior.

Both files are written atomically; the posterior names the checkpoint and the factory, so
`laplace fit / tune / evaluate / predict` take either (docs/cli.md "laplace train").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.atomic import atomic_write_bytes
from laplace_cli.io.checkpoints import model_fingerprint, resolve_device, resolve_dtype
from laplace_cli.io.datasets import load_dataset_spec, make_loader
from laplace_cli.io.model_factories import build_from_factory
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.laplace.marglik_training import marglik_training
from laplace_cli.pipeline.model_loading import ModelSpec, load_model_spec, save_posterior
from laplace_cli.pipeline.stage_support import (
    Progress,
    likelihood_note,
    no_progress,
    resolve_likelihood,
)


@dataclass
class TrainOptions:
    likelihood: str | None = None
    structure: str = "kron"
    prior_structure: str = "layerwise"
    epochs: int = 100
    lr: float = 1e-3
    lr_hyp: float = 0.1
    hypersteps: int = 10
    marglik_frequency: int = 1
    burnin: int = 0
    prior_precision: float = 1.0
    sigma_noise: float = 1.0
    fix_sigma_noise: bool = False
    temperature: float = 1.0
    #: Stop after this many marglik estimates without improvement (None: all epochs).
    patience: int | None = None
    split: str = "train"
    batch_size: int | None = None
    seed: int = 0


@dataclass
class TrainResult:
    la: Laplace
    checkpoint: str
    posterior: str
    log_marginal_likelihood: float
    margliks: list[float]
    losses: list[float]
    epochs_run: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def train_and_save(
    factory: str,
    factory_kwargs: dict[str, Any],
    data_path: str | Path,
    options: TrainOptions,
    checkpoint: str | Path,
    posterior: str | Path,
    *,
    device: str = "auto",
    dtype: str | None = None,
    progress: Progress = no_progress,
) -> TrainResult:
    """Train a fresh factory-built model by marglik training; write its weights and posterior.

    The seed fixes the initial weights and the batch order (the split is shuffled every epoch);
    the checkpoint holds the best-marglik state, which the posterior was fitted on.
    """
    started = time.perf_counter()
    spec = load_dataset_spec(data_path)
    likelihood = resolve_likelihood(options.likelihood, spec)
    note = likelihood_note(options.likelihood, spec, data_path)
    torch.manual_seed(options.seed)
    model = build_from_factory(factory, factory_kwargs)
    # The checkpoint is loaded by the factory, whose parameters keep their own dtype.
    factory_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    model = model.to(device=resolve_device(device), dtype=resolve_dtype(dtype))
    generator = torch.Generator().manual_seed(options.seed)
    loader = make_loader(
        spec,
        options.split,
        batch_size=options.batch_size,
        shuffle=True,
        task=likelihood,
        generator=generator,
    )
    la, model, margliks, losses = _marglik_train(model, loader, likelihood, options, progress)
    write_weights(model, checkpoint, factory_dtype)
    # The posterior's model reference (the checkpoint with its factory) and fingerprint come
    # from loading what was written, as `laplace fit CHECKPOINT --dtype ...` would.
    loaded = load_model_spec(
        ModelSpec(str(checkpoint), factory, factory_kwargs), device=device, dtype=dtype
    )
    if loaded.fingerprint != model_fingerprint(model):
        # Trained in another dtype than the factory's (--dtype float64 over a float32 model):
        # the checkpoint holds the rounded weights, so the posterior is refitted on exactly
        # those, with the hyperparameters marglik training chose.
        la = _refit(la, loaded.model, loader)
    log_ml = float(la.log_marginal_likelihood())
    epochs_run = len(losses)
    save_posterior(
        la,
        posterior,
        loaded,
        {"data": str(Path(data_path).resolve())},
    )
    return TrainResult(
        la,
        str(checkpoint),
        str(posterior),
        log_ml,
        margliks,
        losses,
        epochs_run,
        time.perf_counter() - started,
        [note] if note else [],
    )


def _marglik_train(
    model: torch.nn.Module,
    loader: Any,
    likelihood: str,
    options: TrainOptions,
    progress: Progress,
) -> tuple[Laplace, torch.nn.Module, list[float], list[float]]:
    """`marglik_training` with the options of `laplace train`; refuses a run with no estimate."""
    la, model, margliks, losses = marglik_training(
        model,
        loader,
        likelihood=likelihood,
        hessian_structure=options.structure,
        optimizer_kwargs={"lr": options.lr},
        n_epochs=options.epochs,
        lr_hyp=options.lr_hyp,
        prior_structure=options.prior_structure,
        n_epochs_burnin=options.burnin,
        n_hypersteps=options.hypersteps,
        marglik_frequency=options.marglik_frequency,
        prior_prec_init=options.prior_precision,
        sigma_noise_init=options.sigma_noise,
        temperature=options.temperature,
        fix_sigma_noise=options.fix_sigma_noise,
        patience=options.patience,
        progress=progress,
    )
    if not margliks:
        raise BadInputError(
            f"--epochs {options.epochs} ends before the first marginal-likelihood estimate "
            f"(--burnin {options.burnin}, --marglik-frequency {options.marglik_frequency}); "
            "train for more epochs or lower them"
        )
    return la, model, margliks, losses


def _refit(la: Laplace, model: torch.nn.Module, loader: Any) -> Laplace:
    """A Laplace like `la` (settings, hyperparameters, tuning record) fitted on `model`."""
    refit = Laplace(
        model,
        la.likelihood,
        "all",
        la.hessian_structure,
        prior_precision=la.prior_precision.detach(),
        sigma_noise=la.sigma_noise.detach(),
        temperature=la.temperature,
    )
    refit.fit(loader)
    refit.tuning = dict(la.tuning)
    return refit


def write_weights(
    model: torch.nn.Module, path: str | Path, dtype: torch.dtype | None = None
) -> None:
    """The model's state dict as safetensors, written atomically; floating tensors in `dtype`
    when given (copied to the CPU, contiguous and unshared, as safetensors requires)."""
    from safetensors.torch import save

    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous().clone()
    atomic_write_bytes(path, save(state))
