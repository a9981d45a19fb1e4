"""laplace-torch's subnetwork masks, over the selection functions of `laplace_cli.subsets.subnetwork`.

Same classes, signatures and semantics as `laplace.utils.subnetmask`: construct with the model
(and the size or names), call `.select(train_loader=None)` once; it returns, and `.indices`
then holds, the sorted int64 indices of the chosen entries in the flattened trainable
parameters, ready for `Laplace(..., subset_of_weights="subnetwork", subnetwork_indices=...)`.
The choices are made by the functions the CLI's `--subnetwork` selectors call
(subnetwork.py), so a mask and the CLI pick the same entries:

* `LargestMagnitudeSubnetMask` and `RandomSubnetMask` rank scores with laplace-torch's
  `argsort(descending=True)`; `RandomSubnetMask` draws its scores from the global random stream
  as `torch.rand_like` does there, so under the same `torch.manual_seed` both pick the same;
* `LargestVarianceDiagLaplaceSubnetMask` fits the given diagonal Laplace over all weights on
  `train_loader` and ranks its posterior variances;
* `LargestVarianceSWAGSubnetMask` ranks diagonal SWAG variances (`fit_diagonal_swag_var`);
* `ParamNameSubnetMask`, `ModuleNameSubnetMask`, `LastLayerSubnetMask`: whole tensors/modules.

Index space: laplace-torch's masks index *all* parameters (`parameters_to_vector(
model.parameters())`) while its `SubnetLaplace` indexes the trainable ones; here both index the
trainable ones, so with frozen parameters the indices stay valid for the Laplace (identical when
every parameter is trainable).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from laplace_cli.core.errors import BadInputError
from laplace_cli.masks import largest_variance_indices
from laplace_cli.subsets import subnetwork as sub

__all__ = [
    "SubnetMask",
    "ScoreBasedSubnetMask",
    "RandomSubnetMask",
    "LargestMagnitudeSubnetMask",
    "LargestVarianceDiagLaplaceSubnetMask",
    "LargestVarianceSWAGSubnetMask",
    "ParamNameSubnetMask",
    "ModuleNameSubnetMask",
    "LastLayerSubnetMask",
]


class SubnetMask:
    """Base of the subnetwork masks: `select()` once, then `indices` / `n_params_subnet`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.parameter_vector: Tensor = sub.flat_trainable(model)
        self._n_params = int(self.parameter_vector.numel())
        self._indices: Tensor | None = None
        self._n_params_subnet: int | None = None

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check_select(self) -> None:
        if self._indices is None:
            raise AttributeError("Subnetwork mask not selected. Run select() first.")

    @property
    def indices(self) -> Tensor:
        """The selected sorted int64 indices (after `select()`)."""
        self._check_select()
        return self._indices  # type: ignore[return-value]

    @property
    def n_params_subnet(self) -> int:
        if self._n_params_subnet is None:
            self._check_select()
            self._n_params_subnet = int(self._indices.numel())  # type: ignore[union-attr]
        return self._n_params_subnet

    def convert_subnet_mask_to_indices(self, subnet_mask: Tensor) -> Tensor:
        """Indices of the 1s of a binary (P,) mask over the flattened trainable parameters."""
        if not isinstance(subnet_mask, Tensor):
            raise BadInputError("Subnetwork mask needs to be torch.Tensor!")
        if subnet_mask.is_floating_point() or subnet_mask.is_complex() or subnet_mask.ndim != 1:
            raise BadInputError(
                "Subnetwork mask needs to be 1-dimensional integral or boolean tensor!"
            )
        binary = (subnet_mask == 0) | (subnet_mask == 1)
        if subnet_mask.numel() != self._n_params or not bool(binary.all()):
            raise BadInputError(
                f"Subnetwork mask needs to be a binary vector of size {self._n_params} (the "
                "flattened trainable parameters) where 1s locate the subnetwork parameters"
            )
        return subnet_mask.nonzero(as_tuple=True)[0].to(torch.int64)

    def select(self, train_loader: Any = None) -> Tensor:
        """Select the subnetwork (once); returns its sorted int64 indices."""
        if self._indices is not None:
            raise BadInputError("Subnetwork mask already selected.")
        self._indices = self._select_indices(train_loader)
        return self._indices

    def _select_indices(self, train_loader: Any) -> Tensor:
        return self.convert_subnet_mask_to_indices(self.get_subnet_mask(train_loader))

    def get_subnet_mask(self, train_loader: Any) -> Tensor:
        """A boolean (P,) mask of the subnetwork (laplace-torch's extension point)."""
        raise NotImplementedError

    def _mask_of(self, indices: Tensor) -> Tensor:
        mask = torch.zeros(self._n_params, dtype=torch.bool)
        mask[indices] = True
        return mask


class ScoreBasedSubnetMask(SubnetMask):
    """The `n_params_subnet` parameters with the largest scores (`compute_param_scores`)."""

    def __init__(self, model: nn.Module, n_params_subnet: int) -> None:
        super().__init__(model)
        if n_params_subnet is None:
            raise BadInputError(
                "Need to pass number of subnetwork parameters when using subnetwork Laplace."
            )
        if n_params_subnet > self._n_params:
            raise BadInputError(
                f"Subnetwork ({n_params_subnet}) cannot be larger than model ({self._n_params})."
            )
        self._n_params_subnet = int(n_params_subnet)
        self._param_scores: Tensor | None = None

    def compute_param_scores(self, train_loader: Any) -> Tensor:
        raise NotImplementedError

    def get_subnet_mask(self, train_loader: Any) -> Tensor:
        return self._mask_of(self._select_indices(train_loader))

    def _select_indices(self, train_loader: Any) -> Tensor:
        if self._param_scores is None:
            self._param_scores = self.compute_param_scores(train_loader)
        if self._param_scores.shape != self.parameter_vector.shape:
            raise BadInputError("Parameter scores need to be of same shape as parameter vector.")
        return sub.top_score_indices(self._param_scores, self._n_params_subnet)  # type: ignore[arg-type]


class RandomSubnetMask(ScoreBasedSubnetMask):
    """Parameters drawn uniformly at random (the global random stream, as laplace-torch)."""

    def _select_indices(self, train_loader: Any) -> Tensor:
        if self._param_scores is not None:  # scores set by hand: rank those
            return super()._select_indices(train_loader)
        return sub.random_indices(self.model, self._n_params_subnet)  # type: ignore[arg-type]

    def compute_param_scores(self, train_loader: Any) -> Tensor:
        return torch.rand_like(self.parameter_vector)


class LargestMagnitudeSubnetMask(ScoreBasedSubnetMask):
    """The parameters with the largest |θ|."""

    def _select_indices(self, train_loader: Any) -> Tensor:
        if self._param_scores is not None:
            return super()._select_indices(train_loader)
        return sub.largest_magnitude_indices(self.model, self._n_params_subnet)  # type: ignore[arg-type]

    def compute_param_scores(self, train_loader: Any) -> Tensor:
        return self.parameter_vector.abs()


class LargestVarianceDiagLaplaceSubnetMask(ScoreBasedSubnetMask):
    """The parameters with the largest variance under a diagonal Laplace over all weights.

    `diag_laplace_model`: a `laplace_cli.DiagLaplace` (or `Laplace(..., "all", "diag")`); it is
    fitted on `train_loader` by `select`.
    """

    def __init__(self, model: nn.Module, n_params_subnet: int, diag_laplace_model: Any) -> None:
        super().__init__(model, n_params_subnet)
        self.diag_laplace_model = diag_laplace_model

    def _select_indices(self, train_loader: Any) -> Tensor:
        if self._param_scores is not None:
            return super()._select_indices(train_loader)
        if train_loader is None:
            raise BadInputError("Need to pass train loader for subnet selection.")
        self.diag_laplace_model.fit(train_loader)
        return largest_variance_indices(self.diag_laplace_model, self._n_params_subnet)  # type: ignore[arg-type]

    def compute_param_scores(self, train_loader: Any) -> Tensor:
        if train_loader is None:
            raise BadInputError("Need to pass train loader for subnet selection.")
        self.diag_laplace_model.fit(train_loader)
        return self.diag_laplace_model.posterior_variance


class LargestVarianceSWAGSubnetMask(ScoreBasedSubnetMask):
    """The parameters with the largest diagonal-SWAG variance (`fit_diagonal_swag_var`)."""

    def __init__(
        self,
        model: nn.Module,
        n_params_subnet: int,
        likelihood: str = "classification",
        swag_n_snapshots: int = 40,
        swag_snapshot_freq: int = 1,
        swag_lr: float = 0.01,
    ) -> None:
        if str(getattr(likelihood, "value", likelihood)) not in ("classification", "regression"):
            raise BadInputError("Only available for classification and regression!")
        super().__init__(model, n_params_subnet)
        self.likelihood = str(getattr(likelihood, "value", likelihood))
        self.swag_n_snapshots = swag_n_snapshots
        self.swag_snapshot_freq = swag_snapshot_freq
        self.swag_lr = swag_lr

    def compute_param_scores(self, train_loader: Any) -> Tensor:
        from laplace_cli.utils.swag import fit_diagonal_swag_var

        if train_loader is None:
            raise BadInputError("Need to pass train loader for subnet selection.")
        criterion = (
            nn.CrossEntropyLoss(reduction="mean")
            if self.likelihood == "classification"
            else nn.MSELoss(reduction="mean")
        )
        return fit_diagonal_swag_var(
            self.model,
            train_loader,
            criterion,
            n_snapshots_total=self.swag_n_snapshots,
            snapshot_freq=self.swag_snapshot_freq,
            lr=self.swag_lr,
        )


class ParamNameSubnetMask(SubnetMask):
    """Every entry of the named parameter tensors (names as in `model.named_parameters()`)."""

    def __init__(self, model: nn.Module, parameter_names: list[str]) -> None:
        super().__init__(model)
        self._parameter_names = list(parameter_names)

    def _select_indices(self, train_loader: Any) -> Tensor:
        if not self._parameter_names:
            raise BadInputError("Parameter name list cannot be empty.")
        return sub.indices_by_param_name(self.model, self._parameter_names)

    def get_subnet_mask(self, train_loader: Any) -> Tensor:
        return self._mask_of(self._select_indices(train_loader))


class ModuleNameSubnetMask(SubnetMask):
    """Every trainable entry of the named leaf modules (names as in `named_modules()`)."""

    def __init__(self, model: nn.Module, module_names: list[str]) -> None:
        super().__init__(model)
        self._module_names = list(module_names)

    def _select_indices(self, train_loader: Any) -> Tensor:
        if not self._module_names:
            raise BadInputError("Module name list cannot be empty.")
        modules = dict(self.model.named_modules())
        for name in self._module_names:
            # laplace-torch takes leaf modules only (a parent would double-count children).
            if name in modules and any(True for _ in modules[name].children()):
                raise BadInputError(f'Module "{name}" has children, which is not supported.')
        return sub.indices_by_module_name(self.model, self._module_names)

    def get_subnet_mask(self, train_loader: Any) -> Tensor:
        return self._mask_of(self._select_indices(train_loader))


class LastLayerSubnetMask(ModuleNameSubnetMask):
    """Every entry of the last layer (the last `nn.Linear`, or `last_layer_name`).

    laplace-torch finds the last layer with a forward pass on the first training batch, so its
    `select` needs `train_loader`; here it is found from the modules (the rule of
    `subset_of_weights="last_layer"`) and `train_loader` may be omitted.
    """

    def __init__(self, model: nn.Module, last_layer_name: str | None = None) -> None:
        super().__init__(model, [])
        self._last_layer_name = last_layer_name

    def _select_indices(self, train_loader: Any) -> Tensor:
        from laplace_cli.subsets.last_layer import LastLayer

        name = LastLayer(self.model, self._last_layer_name).last_layer_name
        self._module_names = [name]
        return super()._select_indices(train_loader)
