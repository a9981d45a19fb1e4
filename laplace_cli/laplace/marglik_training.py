"""Marginal-likelihood training (laplace-torch's `marglik_training`, Immer et al. 2021, Alg. 1).

The network is trained on the negative log joint (loss + prior) while its hyperparameters
(prior precision δ per structure, observation noise σ for regression) follow the gradient of the
Laplace log marginal likelihood, re-estimated every `marglik_frequency` epochs; the model state
with the best marginal likelihood is returned with its fitted `Laplace`. The run's steps (an
epoch, an estimate, the final fit) are `MarglikRun`'s (laplace/marglik_run.py).

Every epoch trains the network on the mean negative log joint over the batches
(`criterion(f, y) + ½ θᵀ diag(δ) θ / N / c`, c = T for classification, T / (2σ²) for
regression, δ and σ held fixed); from epoch `n_epochs_burnin` on, every `marglik_frequency`
epochs a Laplace approximation over all weights is fitted and `n_hypersteps` Adam steps
(rate `lr_hyp`) on log δ (and log σ unless `fix_sigma_noise`) follow −log p(D). The state
with the lowest −log p(D) at the last hyperstep of an estimate is kept.

Same signature, defaults, update order and result as laplace-torch 0.3, so trajectories compare
(tests/laplace/test_marglik_training.py). Where this differs on purpose (docs/migrating.md):
- `backend=None` is the GGN (laplace-torch's default class, AsdlGGN, names the same curvature);
- regression targets of shape (N,) are taken as (N, 1) and the multi-output Gaussian loss is
  summed over outputs (laplace-torch averages over N·C, which weights the prior C times too much
  against the log joint the marginal likelihood scores); identical for one output;
- the network trains in `train()` mode in every epoch (laplace-torch leaves it in the `eval()`
  mode of the Laplace fit after the first estimate: dropout / batch norm then stop training);
- non-finite losses or marginal likelihoods raise `NumericalError` naming the epoch;
- keyword-only extras: `patience` (early stopping, off by default as in laplace-torch),
  `progress` (a `progress(iterable, total, description)` wrapper, e.g. the CLI's rich bar),
  `curvature`, `max_memory`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from laplace_cli.core.enums import Likelihood, PriorStructure, Structure
from laplace_cli.core.errors import BadInputError, LaplaceWarning
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.laplace.marglik_run import MarglikRun

Progress = Callable[[Iterable[Any], "int | None", str], Iterable[Any]]


def _no_progress(
    it: Iterable[Any], total: int | None = None, description: str = ""
) -> Iterable[Any]:
    return it


def _tqdm_progress(it: Iterable[Any], total: int | None = None, description: str = "") -> Any:
    try:
        import tqdm
    except ImportError:  # the bar is cosmetic
        return it
    return tqdm.tqdm(it, total=total, desc=description, leave=False)


def _prior_structure(value: PriorStructure | str) -> PriorStructure:
    text = str(getattr(value, "value", value))
    if text == "diagonal":  # laplace-torch's docstring spells it both ways
        text = "diag"
    return PriorStructure.parse(text, "prior_structure")


def marglik_training(
    model: nn.Module,
    train_loader: Iterable[Any],
    likelihood: Likelihood | str = Likelihood.CLASSIFICATION,
    hessian_structure: Structure | str = Structure.KRON,
    backend: Any = None,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.Adam,
    optimizer_kwargs: dict[str, Any] | None = None,
    scheduler_cls: type | None = None,
    scheduler_kwargs: dict[str, Any] | None = None,
    n_epochs: int = 300,
    lr_hyp: float = 1e-1,
    prior_structure: PriorStructure | str = PriorStructure.LAYERWISE,
    n_epochs_burnin: int = 0,
    n_hypersteps: int = 10,
    marglik_frequency: int = 1,
    prior_prec_init: float = 1.0,
    sigma_noise_init: float = 1.0,
    temperature: float = 1.0,
    fix_sigma_noise: bool = False,
    progress_bar: bool = False,
    enable_backprop: bool = False,
    dict_key_x: str = "input_ids",
    dict_key_y: str = "labels",
    *,
    patience: int | None = None,
    progress: Progress | None = None,
    curvature: str = "ggn",
    max_memory: int | None = None,
) -> tuple[Laplace, nn.Module, list[float], list[float]]:
    """Train `model` and its Laplace hyperparameters jointly; laplace-torch's signature.

    Args (the module docstring describes the training loop):
        model: returns logits or the mean (regression); its device and dtype are the run's.
        train_loader: re-iterable (x, y) or dict batches; N from `.dataset`, else one pass.
        prior_structure: "scalar", "layerwise" or "diag" (one δ per parameter; not with kron).
        patience: stop after this many estimates without improvement (None: all `n_epochs`).
        progress_bar: a tqdm bar over the epochs; `progress` replaces it with any wrapper.
        max_memory: bytes every Laplace may use (default: half the free memory at the start).

    Returns:
        (la, model, margliks, losses): the Laplace fitted on the best model with the best
        hyperparameters; the model with the best state loaded; −log p(D) after every hyperstep
        (before its update, as laplace-torch records it); the mean training loss per epoch.
    """
    run = _start_run(
        model,
        train_loader,
        likelihood,
        hessian_structure,
        backend,
        optimizer_cls,
        optimizer_kwargs,
        scheduler_cls,
        scheduler_kwargs,
        n_epochs,
        lr_hyp,
        prior_structure,
        n_epochs_burnin,
        n_hypersteps,
        marglik_frequency,
        prior_prec_init,
        sigma_noise_init,
        temperature,
        fix_sigma_noise,
        dict_key_x,
        dict_key_y,
        patience,
        curvature,
        max_memory,
    )
    wrap = progress if progress is not None else (_tqdm_progress if progress_bar else _no_progress)
    for epoch in wrap(range(1, n_epochs + 1), n_epochs, "marglik training"):
        run.train_epoch(epoch)
        if epoch % marglik_frequency != 0 or epoch < n_epochs_burnin:
            continue
        run.estimate(epoch, n_hypersteps)
        if patience is not None and run.since_best >= patience:
            break
    return run.final_laplace(enable_backprop, n_hypersteps), model, run.margliks, run.losses


def _checked_arguments(
    likelihood: Likelihood | str,
    prior_structure: PriorStructure | str,
    optimizer_kwargs: dict[str, Any] | None,
    n_epochs: int,
    n_hypersteps: int,
    marglik_frequency: int,
    n_epochs_burnin: int,
    lr_hyp: float,
    prior_prec_init: float,
    sigma_noise_init: float,
    temperature: float,
    patience: int | None,
) -> tuple[Likelihood, PriorStructure, dict[str, Any] | None]:
    """The checked likelihood, prior structure and optimizer kwargs of `marglik_training`."""
    for name, value in (
        ("n_epochs", n_epochs),
        ("n_hypersteps", n_hypersteps),
        ("marglik_frequency", marglik_frequency),
    ):
        if int(value) != value or value < 1:
            raise BadInputError(f"{name} must be a positive integer, got {value!r}")
    if n_epochs_burnin < 0:
        raise BadInputError(f"n_epochs_burnin must be 0 or more, got {n_epochs_burnin!r}")
    for name, value in (
        ("lr_hyp", lr_hyp),
        ("prior_prec_init", prior_prec_init),
        ("sigma_noise_init", sigma_noise_init),
        ("temperature", temperature),
    ):
        if not (math.isfinite(value) and value > 0):
            raise BadInputError(f"{name} must be a positive number, got {value!r}")
    if patience is not None and (int(patience) != patience or patience < 1):
        raise BadInputError(f"patience must be a positive integer or None, got {patience!r}")
    lik = Likelihood.parse(getattr(likelihood, "value", likelihood), "likelihood")
    if lik not in (Likelihood.CLASSIFICATION, Likelihood.REGRESSION):
        raise BadInputError(
            f"marglik_training: likelihood must be classification or regression, got {lik.value!r}"
        )
    prior_struct = _prior_structure(prior_structure)
    if optimizer_kwargs is not None and "weight_decay" in optimizer_kwargs:
        # The prior term is the weight decay, and it is optimised: a second one would double it.
        # stacklevel 4: the caller of `marglik_training` (through `_start_run` and this function).
        warnings.warn("Weight decay is handled and optimized. Will be set to 0.", LaplaceWarning, 4)
        optimizer_kwargs = {**optimizer_kwargs, "weight_decay": 0.0}
    return lik, prior_struct, optimizer_kwargs


def _start_run(
    model: nn.Module,
    train_loader: Iterable[Any],
    likelihood: Likelihood | str,
    hessian_structure: Structure | str,
    backend: Any,
    optimizer_cls: type[torch.optim.Optimizer],
    optimizer_kwargs: dict[str, Any] | None,
    scheduler_cls: type | None,
    scheduler_kwargs: dict[str, Any] | None,
    n_epochs: int,
    lr_hyp: float,
    prior_structure: PriorStructure | str,
    n_epochs_burnin: int,
    n_hypersteps: int,
    marglik_frequency: int,
    prior_prec_init: float,
    sigma_noise_init: float,
    temperature: float,
    fix_sigma_noise: bool,
    dict_key_x: str,
    dict_key_y: str,
    patience: int | None,
    curvature: str,
    max_memory: int | None,
) -> MarglikRun:
    """Check the options of `marglik_training`; its `MarglikRun`, with the optimizers made."""
    lik, prior_struct, optimizer_kwargs = _checked_arguments(
        likelihood,
        prior_structure,
        optimizer_kwargs,
        n_epochs,
        n_hypersteps,
        marglik_frequency,
        n_epochs_burnin,
        lr_hyp,
        prior_prec_init,
        sigma_noise_init,
        temperature,
        patience,
    )
    run = MarglikRun(
        model,
        train_loader,
        lik,
        prior_struct,
        dict(
            hessian_structure=hessian_structure,
            curvature=curvature,
            temperature=temperature,
            backend=backend,
            max_memory=max_memory,
            dict_key_x=dict_key_x,
            dict_key_y=dict_key_y,
        ),
        prior_prec_init=prior_prec_init,
        sigma_noise_init=sigma_noise_init,
        fix_sigma_noise=fix_sigma_noise,
    )
    run.make_optimizers(
        optimizer_cls(model.parameters(), **(optimizer_kwargs or {})),
        scheduler_cls,
        scheduler_kwargs,
        lr_hyp,
    )
    return run
