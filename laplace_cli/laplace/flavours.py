"""laplace-torch's Laplace classes over all weights, as thin layers over `laplace_cli.Laplace`.

laplace-torch has one class per (subset of weights, Hessian structure); this project has one
class, `Laplace`, taking both as arguments. Each flavour here is a subclass of `Laplace` that
fixes the pair (`_key`, as in laplace-torch) and takes laplace-torch's constructor signature
(positional order included), then runs `Laplace.__init__`: one engine, no second
implementation. `Laplace(model, lik, subset_of_weights=..., hessian_structure=...)` returns an
instance of the matching flavour (as laplace-torch's factory does), so
`isinstance(Laplace(model, "classification", hessian_structure="kron"), KronLaplace)` holds.

Keyword arguments beyond laplace-torch's (`curvature`, `rank`, `seed`, `max_memory`, ...)
pass through to `Laplace`. laplace-torch arguments with no meaning here are refused with the
alternative: `damping=True` (K-FAC damping), `asdl_fisher_kwargs`, Hessian backends. Function-
space Laplace (`FunctionalLaplace`, `hessian_structure="gp"`) lives in laplace/functional.py
(its own class, not a `Laplace` flavour: a GP posterior, no weight-space precision); ELLA and
VaLLA raise `NotImplementedError`. See docs/migrating.md.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn

from laplace_cli.core.batches import keep_graph
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.laplace.backends import (
    CurvatureInterface,
    CurvlinopsEF,
    CurvlinopsGGN,
    CurvlinopsHessian,
)
from laplace_cli.laplace.functional import BaseFunctionalLaplace, FunctionalLaplace
from laplace_cli.posterior.kron_matrix import Kron, KronDecomposed

__all__ = [
    "BaseLaplace",
    "ParametricLaplace",
    "DiagLaplace",
    "KronLaplace",
    "FullLaplace",
    "LowRankLaplace",
    "FunctionalLaplace",
    "BaseFunctionalLaplace",
    "ELLA",
    "VaLLA",
]

#: laplace-torch's base class of every Laplace; here the one engine class itself.
BaseLaplace = Laplace

FUNCTION_SPACE_MESSAGE = (
    "laplace-torch's ELLA and VaLLA (Nyström / variational function-space Laplace) are not "
    "implemented in laplace_cli; use FunctionalLaplace / FunctionalLLLaplace "
    "(hessian_structure='gp') or a weight-space structure ('diag', 'kron', 'full', 'lowrank')"
)


def _laplace_accepts(name: str) -> bool:
    return name in inspect.signature(Laplace.__init__).parameters


class ParametricLaplace(Laplace):
    """laplace-torch's base of weight-space Laplace flavours; construct a subclass.

    Args (laplace-torch's order): model, likelihood, sigma_noise, prior_precision, prior_mean,
    temperature, enable_backprop, dict_key_x, dict_key_y, backend, backend_kwargs,
    asdl_fisher_kwargs; further keywords go to `laplace_cli.Laplace`.
    """

    #: (subset_of_weights, hessian_structure), as laplace-torch's `_key`; None: abstract.
    _key: ClassVar[tuple[str, str] | None] = None

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        sigma_noise: float | torch.Tensor = 1.0,
        prior_precision: float | torch.Tensor = 1.0,
        prior_mean: float | torch.Tensor = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: type | str | None = None,
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._init_flavour(
            model,
            likelihood,
            sigma_noise=sigma_noise,
            prior_precision=prior_precision,
            prior_mean=prior_mean,
            temperature=temperature,
            enable_backprop=enable_backprop,
            dict_key_x=dict_key_x,
            dict_key_y=dict_key_y,
            backend=backend,
            backend_kwargs=backend_kwargs,
            asdl_fisher_kwargs=asdl_fisher_kwargs,
            **kwargs,
        )

    def _init_flavour(self, model: nn.Module, likelihood: str, **kwargs: Any) -> None:
        """`Laplace.__init__` with this flavour's subset and structure."""
        key = type(self)._key
        if key is None:
            raise NotImplementedError(
                f"{type(self).__name__} is an abstract base: construct a flavour (DiagLaplace, "
                "KronLLLaplace, FullSubnetLaplace, ...) or call laplace_cli.Laplace(model, "
                "likelihood, subset_of_weights=..., hessian_structure=...)"
            )
        subset, structure = key
        for name in ("sigma_noise", "prior_precision", "prior_mean"):
            if isinstance(kwargs.get(name), (str, bytes)):
                # laplace-torch refuses non-real hyperparameters with a ValueError (torch's
                # own error would be a TypeError).
                raise BadInputError(
                    f"{name} must be a real number or a tensor, got {kwargs[name]!r}"
                )
        for name, fixed in (("subset_of_weights", subset), ("hessian_structure", structure)):
            given = kwargs.pop(name, fixed)
            if str(getattr(given, "value", given)) != fixed:
                raise BadInputError(
                    f"{type(self).__name__} has {name}={fixed!r}, got {given!r}; use "
                    f"laplace_cli.Laplace(..., {name}={given!r}) for another one"
                )
        if not kwargs.get("enable_backprop"):
            kwargs.pop("enable_backprop", None)
        elif not _laplace_accepts("enable_backprop"):  # pragma: no cover - engine-dependent
            raise NotImplementedError("enable_backprop=True is not available in this version")
        if kwargs.get("backend") is None:
            kwargs["backend"] = "auto"  # laplace-torch's None: its default GGN, ours too
        Laplace.__init__(self, model, likelihood, subset, structure, **kwargs)

    @property
    def backend(self) -> CurvatureInterface:
        """laplace-torch's backend object (`la.backend.jacobians(x)`, `.diag(X, y)`, ...),
        bound to this model, likelihood and subset; computed by this engine (see
        laplace/backend_objects.py). The class is the one passed as `backend=`; for None or a
        string, CurvlinopsGGN (CurvlinopsEF for curvature="ef"). Not part of `state_dict`."""
        # `laplace_cli.Laplace(...)` builds flavours too, so the cache may not exist yet
        cached = self.__dict__.get("_backend_object")
        if cached is None:
            cached = self.__dict__["_backend_object"] = _backend_object(self)
        return cached

    # --- laplace-torch's values before `fit` (the engine's own state is untouched) ---------
    def _init_H(self) -> None:
        """laplace-torch's (private) reset of H to zeros. Before `fit` H is zeros already, so
        this does nothing; after it, resetting is refused (the engine keeps one fit)."""
        if self.fitted:
            raise NotImplementedError(
                "_init_H after fit is not offered: refit with fit(..., override=True) or "
                "construct a new Laplace"
            )

    def _layer_unknown(self) -> bool:
        """laplace-torch finds an unnamed last layer at `fit`: until then mean and H are None."""
        return self.subset_of_weights.value == "last_layer" and self.last_layer_name is None

    @property
    def mean(self) -> torch.Tensor | None:
        """After `fit` the MAP θ* (P,). Before it, as laplace-torch: the prior mean (P,) for
        every parameter, or None for a last-layer flavour without `last_layer_name`."""
        if self.fitted or self.subset_of_weights.value == "subnetwork":
            return Laplace.mean.fget(self)
        if self._layer_unknown():
            return None
        return self.prior_mean.expand(self.n_params).clone()

    @mean.setter
    def mean(self, value: torch.Tensor) -> None:
        Laplace.mean.fset(self, value)

    @property
    def H(self) -> torch.Tensor | None:
        """The curvature in the structure's form (see `Laplace.H`). Before `fit`, as
        laplace-torch: zeros (diag (P,), full (P, P)), or None (lowrank; a last-layer flavour
        without `last_layer_name`)."""
        if self.fitted:
            return Laplace.H.fget(self)
        if self._layer_unknown() or self.hessian_structure.value not in ("diag", "full"):
            return None
        shape = (self.n_params,) * (1 if self.hessian_structure.value == "diag" else 2)
        return torch.zeros(shape, dtype=self._dtype, device=self._device)


class _LastLayerFeatures:
    """laplace-torch's `FeatureExtractor` interface (`last_layer`, `forward_with_features`)
    over this engine's last-layer subset, for a last-layer flavour's backend object: the
    features come from the subset's hook (with its `feature_reduction`), the model is not
    copied."""

    def __init__(self, la: Laplace) -> None:
        self._la = la
        self.last_layer = la.subset.head
        self.enable_backprop = la.enable_backprop

    def forward_with_features(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # keep_graph: with enable_backprop the features stay differentiable in the inputs
        with keep_graph(self.enable_backprop):
            phi, f = self._la.subset.features(x)
        return f, phi

    def __call__(self, x: Any) -> torch.Tensor:
        return self.forward_with_features(x)[0]


def _backend_object(la: ParametricLaplace) -> CurvatureInterface:
    """laplace-torch's `backend_cls(model, likelihood, last_layer=..., subnetwork_indices=...,
    ...)` for a flavour, with the class and options that select the engine's curvature."""
    cls = getattr(la, "_backend_class", None)
    curvature = la.curvature.value
    if not (isinstance(cls, type) and issubclass(cls, CurvatureInterface)):
        named = {"ef": CurvlinopsEF, "hessian": CurvlinopsHessian}
        cls = named.get(curvature, CurvlinopsGGN)
    last_layer = la.subset_of_weights.value == "last_layer"
    subnet = la.subset_of_weights.value == "subnetwork"
    return cls(
        _LastLayerFeatures(la) if last_layer else la.model,
        "reward_modeling" if la.reward_modeling else la.likelihood.value,
        last_layer=last_layer,
        subnetwork_indices=la.subset.indices if subnet else None,
        dict_key_x=la.dict_key_x,
        dict_key_y=la.dict_key_y,
        stochastic=curvature == "mc_fisher",
        num_samples=la.n_mc_samples,
    )


class DiagLaplace(ParametricLaplace):
    """Diagonal posterior precision over all weights (laplace-torch's `DiagLaplace`)."""

    _key = ("all", "diag")

    @property
    def posterior_precision(self) -> torch.Tensor:
        """The posterior precision's diagonal (P,), laplace-torch's form for diag."""
        self.require_fit()
        return self.posterior.diag_precision(self.prior_precision, self.curvature_scale())


class FullLaplace(ParametricLaplace):
    """Dense posterior precision over all weights (laplace-torch's `FullLaplace`)."""

    _key = ("all", "full")


def refuse_damping(damping: bool) -> None:
    if damping:
        raise BadInputError(
            "damping=True (laplace-torch's damped K-FAC, which adds the prior to each Kronecker "
            "factor) is not offered by laplace_cli; its K-FAC adds the prior exactly as "
            "laplace-torch's default damping=False: leave damping out, or use "
            "hessian_structure='diag' / 'full'"
        )


class KronLaplace(ParametricLaplace):
    """Kronecker-factored (K-FAC) posterior precision over all weights.

    `damping` is laplace-torch's; only False (its default) is offered.
    """

    _key = ("all", "kron")

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        sigma_noise: float | torch.Tensor = 1.0,
        prior_precision: float | torch.Tensor = 1.0,
        prior_mean: float | torch.Tensor = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: type | str | None = None,
        damping: bool = False,
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        refuse_damping(damping)
        super().__init__(
            model,
            likelihood,
            sigma_noise,
            prior_precision,
            prior_mean,
            temperature,
            enable_backprop,
            dict_key_x,
            dict_key_y,
            backend,
            backend_kwargs,
            asdl_fisher_kwargs,
            **kwargs,
        )

    damping = False  # laplace-torch's attribute; damping is not offered (see __init__)

    # laplace-torch's forms: views built from the fitted K-FAC posterior (posterior/kron.py),
    # which keeps its own factors; changing a returned object changes nothing here.
    @property
    def H_facs(self) -> Kron:
        """The summed curvature's Kronecker factors (laplace-torch's `H_facs`), a `Kron`."""
        return self.posterior.as_kron()

    @property
    def H(self) -> Kron | KronDecomposed | None:
        """laplace-torch's `H`: before `fit` the zero `Kron` (None for a last-layer flavour
        without `last_layer_name`), after it the eigendecomposed curvature (no σ, temperature
        or prior), a `KronDecomposed`."""
        if self.fitted:
            return self.posterior.as_kron_decomposed()
        return None if self._layer_unknown() else self.posterior.as_kron()

    @property
    def posterior_precision(self) -> KronDecomposed:
        """The posterior precision as a `KronDecomposed` (laplace-torch's form); `.to_matrix()`
        gives the dense (P, P) matrix."""
        self.require_fit()
        return self.posterior.as_kron_decomposed(self.prior_precision, self.curvature_scale())


class LowRankLaplace(ParametricLaplace):
    """Low-rank + diagonal posterior precision over all weights.

    laplace-torch takes the top eigenpairs of the exact Hessian (old asdfghjkl); here they are
    the top-`rank` eigenpairs of the GGN (default min(P, 100); keyword `rank`), found
    matrix-free (posterior/lowrank.py): a positive semi-definite curvature, so the posterior is
    always proper. A Hessian backend is refused.
    """

    _key = ("all", "lowrank")

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        backend: type | str | None = None,
        sigma_noise: float | torch.Tensor = 1.0,
        prior_precision: float | torch.Tensor = 1.0,
        prior_mean: float | torch.Tensor = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            likelihood,
            sigma_noise,
            prior_precision,
            prior_mean,
            temperature,
            enable_backprop,
            dict_key_x,
            dict_key_y,
            backend,
            backend_kwargs,
            **kwargs,
        )


class ELLA(BaseFunctionalLaplace):
    """laplace-torch's Nyström function-space Laplace: not implemented here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(FUNCTION_SPACE_MESSAGE)


class VaLLA(BaseFunctionalLaplace):
    """laplace-torch's variational function-space Laplace: not implemented here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(FUNCTION_SPACE_MESSAGE)


# laplace-torch users see (and pickle by) its module path, laplace_cli.baselaplace, which re-exports
# these classes; the code lives here, in the laplace package.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = "laplace_cli.baselaplace"
