"""laplace-torch's `FeatureExtractor`: a model wrapper returning the last layer's input too.

The last layer is found by the rule of `subset_of_weights="last_layer"` (the last `nn.Linear`
in module order, or `last_layer_name`; see last_layer.py), not by a probing forward pass as in
laplace-torch (the same layer for models that run their modules in order). Features of more
than two dimensions are reduced with `feature_reduction` ("pick_first", "pick_last",
"average"); 2-D features are returned as they are (a no-op, as laplace-torch). Unlike
laplace-torch, reduced features are not `.squeeze()`d, so a batch of one keeps shape (1, d).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from laplace_cli.core.batches import call_model
from laplace_cli.core.errors import BadInputError

__all__ = ["FeatureReduction", "FeatureExtractor"]


class FeatureReduction(str, Enum):
    """How features of more than two dimensions are reduced to (B, d) (laplace-torch's enum)."""

    PICK_FIRST = "pick_first"
    PICK_LAST = "pick_last"
    AVERAGE = "average"


_REDUCTIONS = tuple(fr.value for fr in FeatureReduction)


class FeatureExtractor(nn.Module):
    """Wraps `model`; `forward_with_features(x)` returns (outputs, last-layer inputs)."""

    def __init__(
        self,
        model: nn.Module,
        last_layer_name: str | None = None,
        enable_backprop: bool = False,
        feature_reduction: str | None = None,
    ) -> None:
        reduction = getattr(feature_reduction, "value", feature_reduction)
        if reduction is not None and reduction not in _REDUCTIONS:
            raise BadInputError(
                "`feature_reduction` must be one of `{'pick_first', 'pick_last', 'average'}`!"
            )
        super().__init__()
        self.model = model
        self.enable_backprop = enable_backprop
        self.feature_reduction = reduction
        self.last_layer: nn.Module | None = None
        self._last_layer_name: str | None = None
        self._features: dict[str, Tensor] = {}
        if last_layer_name is not None:
            self.set_last_layer(last_layer_name)

    def set_last_layer(self, last_layer_name: str) -> None:
        """Use the module `last_layer_name` (an `nn.Linear`) as the last layer."""
        from laplace_cli.subsets.last_layer import LastLayer

        found = LastLayer(self.model, last_layer_name)
        self._last_layer_name = found.last_layer_name
        # A plain attribute, not a second registration of a module that `model` holds
        # already: state_dict keys stay `model.*` only (as laplace-torch's), with no alias.
        self._modules.pop("last_layer", None)
        object.__setattr__(self, "last_layer", found.head)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Accepts laplace-torch's older checkpoints, which held the last layer twice (under
        `model.<name>.` and `last_layer.`): an alias equal to its `model.` entry is dropped;
        one that differs or has no `model.` entry stays, so a strict load refuses it."""
        alias, model_prefix = f"{prefix}last_layer.", f"{prefix}model."
        for key in [k for k in state_dict if k.startswith(alias)]:
            name = key[len(alias) :]
            if self._last_layer_name is not None:
                candidates = [f"{model_prefix}{self._last_layer_name}.{name}"]
            else:  # layer not found yet: any model entry of that parameter name
                candidates = [
                    k for k in state_dict if k.startswith(model_prefix) and k.endswith(f".{name}")
                ]
            value = state_dict[key]
            if any(
                c in state_dict
                and isinstance(state_dict[c], Tensor)
                and state_dict[c].shape == value.shape
                and torch.equal(state_dict[c], value)
                for c in candidates
            ):
                del state_dict[key]
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def find_last_layer(self, x: Any) -> Tensor:
        """Find the last layer (last `nn.Linear`), then return the model's output at `x`."""
        from laplace_cli.subsets.last_layer import LastLayer

        self.set_last_layer(LastLayer(self.model).last_layer_name)
        return self.forward(x)

    def forward(self, x: Any) -> Tensor:
        if self.last_layer is None:
            return self.find_last_layer(x)
        return call_model(self.model, x)

    def forward_with_features(self, x: Any) -> tuple[Tensor, Tensor]:
        """(outputs, features): the model's output and the input of its last layer."""
        if self.last_layer is None:
            from laplace_cli.subsets.last_layer import LastLayer

            self.set_last_layer(LastLayer(self.model).last_layer_name)
        captured: list[Tensor] = []

        def hook(_module: nn.Module, args: tuple, _out: Tensor) -> None:
            captured.append(args[0] if self.enable_backprop else args[0].detach())

        handle = self.last_layer.register_forward_hook(hook)  # type: ignore[union-attr]
        try:
            out = call_model(self.model, x)
        finally:
            handle.remove()
        features = captured[-1]
        self._features[self._last_layer_name] = features  # type: ignore[index]
        if features.ndim > 2 and self.feature_reduction is not None:
            middle = tuple(range(1, features.ndim - 1))
            if self.feature_reduction == "pick_first":
                features = features[(slice(None), *([0] * len(middle)), slice(None))]
            elif self.feature_reduction == "pick_last":
                features = features[(slice(None), *([-1] * len(middle)), slice(None))]
            else:
                features = features.mean(dim=middle)
        return out, features
