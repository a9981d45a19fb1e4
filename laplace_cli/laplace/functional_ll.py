"""Function-space Laplace over the last layer (laplace-torch's `FunctionalLLLaplace`).

`FunctionalLaplace` (laplace/functional.py) with the parameter subset restricted to the last
layer, whose Jacobian is built from the head's features without autograd.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from laplace_cli.core.enums import Likelihood
from laplace_cli.laplace.functional import FunctionalLaplace
from laplace_cli.subsets.base import ParameterSubset
from laplace_cli.subsets.last_layer import LastLayer

__all__ = ["FunctionalLLLaplace"]


class FunctionalLLLaplace(FunctionalLaplace):
    """GP (function-space) Laplace over the last layer: the kernel of the head's Jacobian.

    For the last Linear layer J(x) = I_C ⊗ [φ(x), 1], so the kernel is (φ·φ' + 1) I_C, built
    from features without a Jacobian. laplace-torch's constructor order (with
    `feature_reduction` and `last_layer_name`).
    """

    _key: ClassVar[tuple[str, str]] = ("last_layer", "gp")

    def __init__(
        self,
        model: nn.Module,
        likelihood: str | Likelihood,
        n_subset: int | None = None,
        sigma_noise: float | Tensor = 1.0,
        prior_precision: float | Tensor = 1.0,
        prior_mean: float | Tensor = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        feature_reduction: str | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        last_layer_name: str | None = None,
        backend: Any = None,
        backend_kwargs: dict[str, Any] | None = None,
        independent_outputs: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            likelihood,
            n_subset,
            sigma_noise,
            prior_precision,
            prior_mean,
            temperature,
            enable_backprop,
            dict_key_x,
            dict_key_y,
            backend,
            backend_kwargs,
            independent_outputs,
            seed,
            last_layer_name=last_layer_name,
            feature_reduction=feature_reduction,
            **kwargs,
        )

    def _make_subset(
        self, last_layer_name: str | None, feature_reduction: str | None
    ) -> ParameterSubset:
        return LastLayer(self.model, last_layer_name, feature_reduction)
