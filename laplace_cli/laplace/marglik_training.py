"""Marginal-likelihood training (laplace-torch's `marglik_training`, Immer et al. 2021, Alg. 1).

The network is trained on the negative log joint (loss + prior) while its hyperparameters
(prior precision δ per structure, observation noise σ for regression) follow the gradient of the
Laplace log marginal likelihood, re-estimated every `marglik_frequency` epochs; the model state
with the best marginal likelihood is returned with its fitted `Laplace`.

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
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from laplace_cli.core.batches import batch_size, call_model, split_batch, to_device
from laplace_cli.core.enums import Likelihood, PriorStructure, Structure
from laplace_cli.core.errors import BadInputError, LaplaceWarning, NumericalError
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.posterior.memory import default_budget

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


def _initial_log_prior(
    value: float, structure: PriorStructure, n_groups: int, n_params: int, like: Tensor
) -> Tensor:
    """log δ in the requested structure: (1,), one per parameter tensor, or one per parameter."""
    size = {PriorStructure.SCALAR: 1, PriorStructure.LAYERWISE: n_groups}.get(structure, n_params)
    return torch.full((size,), value, dtype=like.dtype, device=like.device)


def _expand(prior: Tensor, sizes: list[int]) -> Tensor:
    """δ as one value per trainable parameter (P,), in `model.parameters()` order."""
    if prior.numel() == 1:
        return prior.expand(sum(sizes))
    if prior.numel() == len(sizes):
        return torch.repeat_interleave(prior, torch.tensor(sizes, device=prior.device))
    return prior


def _check_options(
    n_epochs: int,
    n_hypersteps: int,
    marglik_frequency: int,
    n_epochs_burnin: int,
    lr_hyp: float,
    prior_prec_init: float,
    sigma_noise_init: float,
    temperature: float,
    patience: int | None,
) -> None:
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

    Every epoch trains the network on the mean negative log joint over the batches
    (`criterion(f, y) + ½ θᵀ diag(δ) θ / N / c`, c = T for classification, T / (2σ²) for
    regression, δ and σ held fixed); from epoch `n_epochs_burnin` on, every `marglik_frequency`
    epochs a Laplace approximation over all weights is fitted and `n_hypersteps` Adam steps
    (rate `lr_hyp`) on log δ (and log σ unless `fix_sigma_noise`) follow −log p(D). The state
    with the lowest −log p(D) at the last hyperstep of an estimate is kept.

    Args:
        model: returns logits (classification) or the mean (regression); its device and dtype
            are those of the run.
        train_loader: a re-iterable loader of (x, y) or dict batches; N is
            `len(train_loader.dataset)` when there is one, else counted in one pass first.
        prior_structure: "scalar", "layerwise" (one δ per parameter tensor) or "diag" (one per
            parameter; not with kron).
        patience: stop after this many marginal-likelihood estimates without improvement
            (None: train all `n_epochs`, laplace-torch's behaviour).
        progress_bar: a tqdm bar over the epochs; `progress` replaces it with any wrapper.
        max_memory: the bytes every Laplace of the run may use (default: half of the memory
            free at the start, decided once for the whole run).

    Returns:
        (la, model, margliks, losses): the Laplace fitted on the best model with the best
        hyperparameters; the model with the best state loaded; −log p(D) after every hyperstep
        (before its update, as laplace-torch records it); the mean training loss per epoch.
    """
    _check_options(
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
    lik = Likelihood.parse(getattr(likelihood, "value", likelihood), "likelihood")
    if lik not in (Likelihood.CLASSIFICATION, Likelihood.REGRESSION):
        raise BadInputError(
            f"marglik_training: likelihood must be classification or regression, got {lik.value!r}"
        )
    regression = lik == Likelihood.REGRESSION
    prior_struct = _prior_structure(prior_structure)
    if optimizer_kwargs is not None and "weight_decay" in optimizer_kwargs:
        # The prior term is the weight decay, and it is optimised: a second one would double it.
        warnings.warn("Weight decay is handled and optimized. Will be set to 0.", LaplaceWarning, 2)
        optimizer_kwargs = {**optimizer_kwargs, "weight_decay": 0.0}

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise BadInputError("marglik_training: the model has no trainable parameters")
    first = trainable[0]
    device, dtype = first.device, first.dtype
    sizes = [p.numel() for p in trainable]
    n_data = _dataset_size(train_loader, dict_key_x, dict_key_y)
    if max_memory is None:
        # Half of the memory free now, decided once: a Laplace is built at every estimate, and
        # a budget re-read from a momentarily busy machine would stop a long run midway.
        max_memory = default_budget(device)

    def laplace_for(sigma: Any, prior: Tensor, backprop: bool = False) -> Laplace:
        return Laplace(
            model,
            lik,
            subset_of_weights="all",
            hessian_structure=hessian_structure,
            curvature=curvature,
            sigma_noise=sigma,
            prior_precision=prior,
            temperature=temperature,
            backend=backend,
            max_memory=max_memory,
            enable_backprop=backprop,
            dict_key_x=dict_key_x,
            dict_key_y=dict_key_y,
        )

    # Refuse a structure / prior combination before any training (kron has no per-parameter δ).
    laplace_for(
        sigma_noise_init if regression else 1.0,
        _initial_log_prior(1.0, prior_struct, len(sizes), sum(sizes), first).detach(),
    )

    # laplace-torch starts δ at T·δ₀ (the prior of the tempered posterior).
    log_prior = _initial_log_prior(
        math.log(temperature * prior_prec_init), prior_struct, len(sizes), sum(sizes), first
    ).requires_grad_(True)
    hyperparameters = [log_prior]
    log_sigma = torch.full((1,), math.log(sigma_noise_init), dtype=dtype, device=device)
    if regression:
        log_sigma.requires_grad_(True)
        hyperparameters.append(log_sigma)  # as laplace-torch: in Adam even when σ is fixed

    optimizer = optimizer_cls(model.parameters(), **(optimizer_kwargs or {}))
    scheduler = None
    if scheduler_cls is not None:
        scheduler = scheduler_cls(optimizer, **(scheduler_kwargs or {}))
    hyper_optimizer = torch.optim.Adam(hyperparameters, lr=lr_hyp)

    def sigma_value(live: bool = False) -> Any:
        if not regression:
            return 1.0
        if fix_sigma_noise:
            return sigma_noise_init
        return log_sigma.exp() if live else log_sigma.detach().exp()

    best = math.inf
    best_state: dict[str, Tensor] | None = None
    best_prior: Tensor | None = None
    best_sigma: Any = None
    since_best = 0
    margliks: list[float] = []
    losses: list[float] = []
    wrap = progress if progress is not None else (_tqdm_progress if progress_bar else _no_progress)

    for epoch in wrap(range(1, n_epochs + 1), n_epochs, "marglik training"):
        loss_sum, n_seen = 0.0, 0
        model.train()
        for batch in train_loader:
            x, y = split_batch(batch, dict_key_x, dict_key_y)
            # Floating inputs in the model's dtype, as `Laplace.fit` takes them (a float32
            # data file with a float64 model); integer labels and token ids stay as they are.
            x = to_device(x, device, dtype)
            y = y.to(device=device, dtype=dtype) if y.is_floating_point() else y.to(device)
            optimizer.zero_grad()
            # The scale of the likelihood in the log joint (laplace-torch's crit_factor).
            factor = temperature / (2 * sigma_value() ** 2) if regression else temperature
            theta = parameters_to_vector([p for p in model.parameters() if p.requires_grad])
            delta = _expand(log_prior.detach().exp(), sizes)
            f = call_model(model, x)
            loss = _data_loss(f, y, regression) + 0.5 * (delta * theta) @ theta / n_data / factor
            loss.backward()
            optimizer.step()
            rows = batch_size(x)
            loss_sum += float(loss.detach()) * rows
            n_seen += rows
            if scheduler is not None:
                scheduler.step()
        losses.append(loss_sum / n_data)
        if not math.isfinite(losses[-1]):
            raise NumericalError(
                f"marglik_training: the training loss is {losses[-1]} in epoch {epoch}; lower "
                "the learning rate (optimizer_kwargs={'lr': ...})"
            )
        if n_seen != n_data:
            raise BadInputError(
                f"marglik_training: the loader gave {n_seen} rows in epoch {epoch}, but its "
                f"dataset has {n_data}; the loader must cover the training set once per epoch"
            )

        if epoch % marglik_frequency != 0 or epoch < n_epochs_burnin:
            continue
        la = laplace_for(sigma_value(), log_prior.detach().exp())
        la.fit(train_loader)
        for _ in range(n_hypersteps):
            hyper_optimizer.zero_grad()
            sigma = None if (not regression or fix_sigma_noise) else log_sigma.exp()
            prior = log_prior.exp()
            neg_marglik = -la.log_marginal_likelihood(prior, sigma)
            neg_marglik.backward()
            hyper_optimizer.step()
            margliks.append(float(neg_marglik.detach()))
        if not math.isfinite(margliks[-1]):
            raise NumericalError(
                f"marglik_training: the log marginal likelihood is {-margliks[-1]} in epoch "
                f"{epoch}; lower lr_hyp or start from another prior_prec_init"
            )
        if margliks[-1] < best:
            # The model as it is now and the hyperparameters that scored this value (before
            # the last hyperstep's update), as laplace-torch keeps them.
            best = margliks[-1]
            best_state = deepcopy(model.state_dict())
            best_prior = prior.detach().clone()
            best_sigma = sigma_value() if sigma is None else sigma.detach().clone()
            since_best = 0
        else:
            since_best += 1
            if patience is not None and since_best >= patience:
                break

    if best_state is not None:
        model.load_state_dict(best_state)
        prior_final, sigma_final = best_prior, best_sigma
    else:  # no estimate was made (n_epochs below the burn-in): the current values
        prior_final, sigma_final = log_prior.detach().exp(), sigma_value()
    la = laplace_for(sigma_final, prior_final, enable_backprop)
    la.fit(train_loader)
    # Recorded in a saved posterior's metadata (`tuning`), like `optimize_prior_precision`'s.
    la.tuning = {
        "method": "marglik_training",
        "prior_structure": prior_struct.value,
        "tuned": ["prior_precision"]
        + (["sigma_noise"] if regression and not fix_sigma_noise else []),
        "log_evidence": None if best_state is None else -best,
        "epochs_run": len(losses),
        "n_estimates": len(margliks) // n_hypersteps,
    }
    return la, model, margliks, losses


def _data_loss(f: Tensor, y: Tensor, regression: bool) -> Tensor:
    """The batch mean of the per-example loss: cross-entropy, or the squared error summed over
    outputs (laplace-torch's MSELoss(mean) for one output)."""
    if not regression:
        return nn.functional.cross_entropy(f, y, reduction="mean")
    if f.ndim == 2 and y.ndim == 1 and f.shape[1] == 1:
        y = y.unsqueeze(-1)  # (N,) targets are (N, 1), as Laplace takes them
    if f.shape != y.shape:
        raise BadInputError(
            f"marglik_training: regression targets have shape {tuple(y.shape)}, the model's "
            f"output {tuple(f.shape)}; they must match"
        )
    return (f - y.to(f.dtype)).square().reshape(f.shape[0], -1).sum(1).mean()


def _dataset_size(loader: Iterable[Any], x_key: str, y_key: str) -> int:
    """N from `len(loader.dataset)`, else by counting one pass (e.g. a list of batches)."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        n = len(dataset)
    else:
        n = sum(batch_size(split_batch(batch, x_key, y_key)[0]) for batch in loader)
    if n < 1:
        raise BadInputError("marglik_training: the training loader is empty")
    return n
