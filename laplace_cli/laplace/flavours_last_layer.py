"""laplace-torch's last-layer Laplace classes, as thin layers over `laplace_cli.Laplace`.

Each fixes `subset_of_weights="last_layer"` and a structure, with laplace-torch's constructor
signature; see laplace_cli/laplace/flavours.py. Unlike laplace-torch the model is not deep-copied
into a `FeatureExtractor` (this project's last-layer subset reads the features with a hook and
never mutates or copies the model); `laplace_cli.utils.FeatureExtractor` is available on its
own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.flavours import (
    DiagLaplace,
    FullLaplace,
    KronLaplace,
    ParametricLaplace,
    refuse_damping,
)
from laplace_cli.laplace.functional_ll import FunctionalLLLaplace

__all__ = ["LLLaplace", "DiagLLLaplace", "KronLLLaplace", "FullLLLaplace", "FunctionalLLLaplace"]


class LLLaplace(ParametricLaplace):
    """Base of the last-layer flavours (laplace-torch's `LLLaplace`); construct a subclass.

    Args (laplace-torch's order): model, likelihood, sigma_noise, prior_precision, prior_mean,
    temperature, enable_backprop, feature_reduction, dict_key_x, dict_key_y, backend,
    last_layer_name, backend_kwargs, asdl_fisher_kwargs (refused, as in laplace-torch).
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        sigma_noise: float | torch.Tensor = 1.0,
        prior_precision: float | torch.Tensor = 1.0,
        prior_mean: float | torch.Tensor = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        feature_reduction: str | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: type | str | None = None,
        last_layer_name: str | None = None,
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if asdl_fisher_kwargs is not None:
            raise BadInputError("Last-layer Laplace does not support asdl_fisher_kwargs.")
        self._init_flavour(
            model,
            likelihood,
            sigma_noise=sigma_noise,
            prior_precision=prior_precision,
            prior_mean=prior_mean,
            temperature=temperature,
            enable_backprop=enable_backprop,
            feature_reduction=feature_reduction,
            dict_key_x=dict_key_x,
            dict_key_y=dict_key_y,
            backend=backend,
            last_layer_name=last_layer_name,
            backend_kwargs=backend_kwargs,
            **kwargs,
        )

    # laplace-torch finds an unnamed last layer at `fit` and checks the prior mean's length
    # only then: until `fit` a prior mean of another length is kept as given (and read back),
    # and `fit` refuses it before any curvature is computed. Every other value is checked now.
    @property
    def prior_mean(self) -> torch.Tensor:
        pending = self.__dict__.get("_pending_prior_mean")
        return pending if pending is not None else ParametricLaplace.prior_mean.fget(self)

    @prior_mean.setter
    def prior_mean(self, value: float | torch.Tensor) -> None:
        self.__dict__.pop("_pending_prior_mean", None)
        t = torch.as_tensor(value)
        if (
            not self.__dict__.get("fitted", False)
            and self._layer_unknown()
            and t.ndim == 1
            and t.numel() not in (1, self.n_params)
        ):
            ParametricLaplace.prior_mean.fset(self, 0.0)
            self.__dict__["_pending_prior_mean"] = t.to(device=self._device, dtype=self._dtype)
            return
        ParametricLaplace.prior_mean.fset(self, value)

    def fit(self, train_loader: Any, override: bool = True, **kwargs: Any) -> Any:
        """`Laplace.fit`, after checking a prior mean kept from construction (see above)."""
        pending = self.__dict__.get("_pending_prior_mean")
        if pending is not None:
            # raises BadInputError (wrong length) and stays pending, so a retry refuses it too
            ParametricLaplace.prior_mean.fset(self, pending)
            del self.__dict__["_pending_prior_mean"]
        return super().fit(train_loader, override, **kwargs)


class FullLLLaplace(LLLaplace, FullLaplace):
    """Dense posterior precision over the last layer (laplace-torch's `FullLLLaplace`)."""

    _key = ("last_layer", "full")


class KronLLLaplace(LLLaplace, KronLaplace):
    """K-FAC posterior precision over the last layer; `damping` as in `KronLaplace`."""

    _key = ("last_layer", "kron")

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        sigma_noise: float | torch.Tensor = 1.0,
        prior_precision: float | torch.Tensor = 1.0,
        prior_mean: float | torch.Tensor = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        feature_reduction: str | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: type | str | None = None,
        last_layer_name: str | None = None,
        damping: bool = False,
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        refuse_damping(damping)
        LLLaplace.__init__(
            self,
            model,
            likelihood,
            sigma_noise,
            prior_precision,
            prior_mean,
            temperature,
            enable_backprop,
            feature_reduction,
            dict_key_x,
            dict_key_y,
            backend,
            last_layer_name,
            backend_kwargs,
            asdl_fisher_kwargs,
            **kwargs,
        )


class DiagLLLaplace(LLLaplace, DiagLaplace):
    """Diagonal posterior precision over the last layer (laplace-torch's `DiagLLLaplace`)."""

    _key = ("last_layer", "diag")


# laplace-torch users see (and pickle by) its module path, laplace_cli.lllaplace, which re-exports
# these classes; the code lives here, in the laplace package.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = "laplace_cli.lllaplace"
