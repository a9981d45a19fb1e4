"""One `marglik_training` run's state and steps (laplace/marglik_training.py has the API and
its docstring): an epoch of network training on the negative log joint, one marginal-likelihood
estimate (a Laplace fit and Adam hypersteps on log δ, log σ), the final Laplace."""

from __future__ import annotations

import math
from collections.abc import Iterable
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from laplace_cli.core.batches import batch_size, call_model, split_batch, to_device
from laplace_cli.core.enums import Likelihood, PriorStructure
from laplace_cli.core.errors import BadInputError, NumericalError
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.posterior.memory import default_budget

__all__ = ["MarglikRun"]


class MarglikRun:
    """The state of one `marglik_training` run and its steps: an epoch of network training,
    one marginal-likelihood estimate (fit + hypersteps), and the final Laplace."""

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable[Any],
        lik: Likelihood,
        prior_struct: PriorStructure,
        laplace_kwargs: dict[str, Any],
        *,
        prior_prec_init: float,
        sigma_noise_init: float,
        fix_sigma_noise: bool,
    ) -> None:
        self.model, self.loader, self.lik, self.prior_struct = (
            model,
            train_loader,
            lik,
            prior_struct,
        )
        self.regression = lik == Likelihood.REGRESSION
        self.temperature = laplace_kwargs["temperature"]
        self.sigma_noise_init, self.fix_sigma_noise = sigma_noise_init, fix_sigma_noise
        self.x_key, self.y_key = laplace_kwargs["dict_key_x"], laplace_kwargs["dict_key_y"]
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise BadInputError("marglik_training: the model has no trainable parameters")
        first = trainable[0]
        self.device, self.dtype = first.device, first.dtype
        self.sizes = [p.numel() for p in trainable]
        self.n_data = _dataset_size(train_loader, self.x_key, self.y_key)
        if laplace_kwargs["max_memory"] is None:
            # Half of the memory free now, decided once: a Laplace is built at every estimate,
            # and a budget re-read from a momentarily busy machine would stop a long run midway.
            laplace_kwargs = {**laplace_kwargs, "max_memory": default_budget(self.device)}
        self.laplace_kwargs = laplace_kwargs
        # Refuse a structure / prior combination before any training (kron has no
        # per-parameter δ).
        self.laplace_for(
            sigma_noise_init if self.regression else 1.0,
            self._initial_log_prior(1.0, first).detach(),
        )
        # laplace-torch starts δ at T·δ₀ (the prior of the tempered posterior).
        self.log_prior = self._initial_log_prior(
            math.log(self.temperature * prior_prec_init), first
        ).requires_grad_(True)
        self.log_sigma = torch.full(
            (1,), math.log(sigma_noise_init), dtype=self.dtype, device=self.device
        )
        self.best = math.inf
        self.best_state: dict[str, Tensor] | None = None
        self.best_prior: Tensor | None = None
        self.best_sigma: Any = None
        self.since_best = 0
        self.margliks: list[float] = []
        self.losses: list[float] = []

    def _initial_log_prior(self, value: float, like: Tensor) -> Tensor:
        return _initial_log_prior(value, self.prior_struct, len(self.sizes), sum(self.sizes), like)

    def laplace_for(self, sigma: Any, prior: Tensor, backprop: bool = False) -> Laplace:
        return Laplace(
            self.model,
            self.lik,
            subset_of_weights="all",
            sigma_noise=sigma,
            prior_precision=prior,
            enable_backprop=backprop,
            **self.laplace_kwargs,
        )

    def make_optimizers(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler_cls: type | None,
        scheduler_kwargs: dict[str, Any] | None,
        lr_hyp: float,
    ) -> None:
        hyperparameters = [self.log_prior]
        if self.regression:
            self.log_sigma.requires_grad_(True)
            hyperparameters.append(self.log_sigma)  # as laplace-torch: in Adam even when fixed
        self.optimizer = optimizer
        self.scheduler = None
        if scheduler_cls is not None:
            self.scheduler = scheduler_cls(optimizer, **(scheduler_kwargs or {}))
        self.hyper_optimizer = torch.optim.Adam(hyperparameters, lr=lr_hyp)

    def sigma_value(self, live: bool = False) -> Any:
        if not self.regression:
            return 1.0
        if self.fix_sigma_noise:
            return self.sigma_noise_init
        return self.log_sigma.exp() if live else self.log_sigma.detach().exp()

    def train_epoch(self, epoch: int) -> None:
        """One pass over the data on the mean negative log joint, δ and σ held fixed."""
        loss_sum, n_seen = 0.0, 0
        self.model.train()
        for batch in self.loader:
            x, y = split_batch(batch, self.x_key, self.y_key)
            # Floating inputs in the model's dtype, as `Laplace.fit` takes them (a float32
            # data file with a float64 model); integer labels and token ids stay as they are.
            x = to_device(x, self.device, self.dtype)
            if y.is_floating_point():
                y = y.to(device=self.device, dtype=self.dtype)
            else:
                y = y.to(self.device)
            self.optimizer.zero_grad()
            # The scale of the likelihood in the log joint (laplace-torch's crit_factor).
            if self.regression:
                factor = self.temperature / (2 * self.sigma_value() ** 2)
            else:
                factor = self.temperature
            theta = parameters_to_vector([p for p in self.model.parameters() if p.requires_grad])
            delta = _expand(self.log_prior.detach().exp(), self.sizes)
            f = call_model(self.model, x)
            prior_term = 0.5 * (delta * theta) @ theta / self.n_data / factor
            loss = _data_loss(f, y, self.regression) + prior_term
            loss.backward()
            self.optimizer.step()
            rows = batch_size(x)
            loss_sum += float(loss.detach()) * rows
            n_seen += rows
            if self.scheduler is not None:
                self.scheduler.step()
        self.losses.append(loss_sum / self.n_data)
        if not math.isfinite(self.losses[-1]):
            raise NumericalError(
                f"marglik_training: the training loss is {self.losses[-1]} in epoch {epoch}; "
                "lower the learning rate (optimizer_kwargs={'lr': ...})"
            )
        if n_seen != self.n_data:
            raise BadInputError(
                f"marglik_training: the loader gave {n_seen} rows in epoch {epoch}, but its "
                f"dataset has {self.n_data}; the loader must cover the training set once per "
                "epoch"
            )

    def estimate(self, epoch: int, n_hypersteps: int) -> None:
        """Fit a Laplace, take `n_hypersteps` Adam steps on −log p(D), keep the best state."""
        la = self.laplace_for(self.sigma_value(), self.log_prior.detach().exp())
        la.fit(self.loader)
        for _ in range(n_hypersteps):
            self.hyper_optimizer.zero_grad()
            sigma = None if (not self.regression or self.fix_sigma_noise) else self.log_sigma.exp()
            prior = self.log_prior.exp()
            neg_marglik = -la.log_marginal_likelihood(prior, sigma)
            neg_marglik.backward()
            self.hyper_optimizer.step()
            self.margliks.append(float(neg_marglik.detach()))
        if not math.isfinite(self.margliks[-1]):
            raise NumericalError(
                f"marglik_training: the log marginal likelihood is {-self.margliks[-1]} in "
                f"epoch {epoch}; lower lr_hyp or start from another prior_prec_init"
            )
        if self.margliks[-1] < self.best:
            # The model as it is now and the hyperparameters that scored this value (before
            # the last hyperstep's update), as laplace-torch keeps them.
            self.best = self.margliks[-1]
            self.best_state = deepcopy(self.model.state_dict())
            self.best_prior = prior.detach().clone()
            self.best_sigma = self.sigma_value() if sigma is None else sigma.detach().clone()
            self.since_best = 0
        else:
            self.since_best += 1

    def final_laplace(self, enable_backprop: bool, n_hypersteps: int) -> Laplace:
        """The Laplace fitted on the best model with the best hyperparameters."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            prior_final, sigma_final = self.best_prior, self.best_sigma
        else:  # no estimate was made (n_epochs below the burn-in): the current values
            prior_final, sigma_final = self.log_prior.detach().exp(), self.sigma_value()
        la = self.laplace_for(sigma_final, prior_final, enable_backprop)
        la.fit(self.loader)
        # Recorded in a saved posterior's metadata (`tuning`), like `optimize_prior_precision`'s.
        la.tuning = {
            "method": "marglik_training",
            "prior_structure": self.prior_struct.value,
            "tuned": ["prior_precision"]
            + (["sigma_noise"] if self.regression and not self.fix_sigma_noise else []),
            "log_evidence": None if self.best_state is None else -self.best,
            "epochs_run": len(self.losses),
            "n_estimates": len(self.margliks) // n_hypersteps,
        }
        return la


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
