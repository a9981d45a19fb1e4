"""laplace-torch's backend class names, as selectors of this project's one curvature engine.

laplace-torch picks the library that computes the curvature with a class passed as
``backend=`` (``CurvlinopsGGN``, ``AsdlEF``, ...). Here one engine computes every structure, so
each class only names *which* curvature to compute:

* ``*GGN`` classes (and ``GGNInterface``): the exact generalised Gauss-Newton, ``curvature="ggn"``;
  with ``backend_kwargs={"stochastic": True, "num_samples": k}`` the Monte-Carlo Fisher,
  ``curvature="mc_fisher"`` with ``n_mc_samples=k`` (laplace-torch's meaning of ``stochastic``).
* ``*EF`` classes (and ``EFInterface``): the empirical Fisher, ``curvature="ef"``.
* ``*Hessian`` classes: refused (``BadInputError``): this project offers no exact Hessian; the
  GGN is its positive semi-definite approximation (``backend=CurvlinopsGGN``).

The curvature is computed by this project's native engine whichever library a class is named
after (the numbers equal laplace-torch's CurvlinopsGGN / ASDL ones, see tests/compare); the
optional ASDL implementation is chosen with the string ``backend="asdl"``. An instance
(laplace-torch's ``CurvlinopsGGN(model, likelihood).diag(X, y)``) computes laplace-torch's
backend results (``diag``, ``full``, ``gradients``, ``jacobians``, ``last_layer_jacobians``)
on one batch with this project's engine; ``kron`` is refused (no
stand-alone ``Kron`` object here), and the ``*Hessian`` classes refuse to be created.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, ClassVar

from laplace_cli.core.errors import BadInputError

__all__ = [
    "CurvatureInterface",
    "GGNInterface",
    "EFInterface",
    "AsdlInterface",
    "AsdlGGN",
    "AsdlEF",
    "AsdlHessian",
    "BackPackInterface",
    "BackPackGGN",
    "BackPackEF",
    "CurvlinopsInterface",
    "CurvlinopsGGN",
    "CurvlinopsEF",
    "CurvlinopsHessian",
    "AsdfghjklInterface",
    "AsdfghjklGGN",
    "AsdfghjklEF",
    "AsdfghjklHessian",
    "resolve_backend",
    "set_backend_engine",
]

#: backend_kwargs keys laplace-torch's Laplace sets itself (ignored here: the subset says it).
_INTERNAL_KWARGS = ("last_layer", "subnetwork_indices", "dict_key_x", "dict_key_y")


class CurvatureInterface:
    """Base of laplace-torch's backend names.

    Passed as a class (`Laplace(..., backend=CurvlinopsGGN)`), it selects the curvature. An
    instance (`CurvlinopsGGN(model, "classification").diag(X, y)`) computes laplace-torch's
    backend results on one batch with this project's engine: the methods delegate to the
    implementation registered by `laplace_cli.laplace.backend_objects` (this package sits below
    the engine's layers and cannot import them). `curvature` is this project's curvature for
    the class (None: not offered here; such instances refuse the curvature methods).
    """

    curvature: ClassVar[str | None] = None
    #: laplace-torch's exact-Hessian backends: refused here (no exact Hessian is offered).
    exact_hessian: ClassVar[bool] = False

    def __init__(
        self,
        model: Any,
        likelihood: str,
        last_layer: bool = False,
        subnetwork_indices: Any = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        *,
        stochastic: bool = False,
        num_samples: int = 1,
        logit_class_dim: int = -1,
        **kwargs: Any,
    ) -> None:
        if type(self).exact_hessian:
            raise NotImplementedError(
                f"{type(self).__name__}: the exact Hessian is not offered by laplace_cli; use "
                "its positive semi-definite approximation, the GGN (CurvlinopsGGN)"
            )
        if str(likelihood) not in ("classification", "regression", "reward_modeling"):
            raise BadInputError(f"likelihood {likelihood!r}: use 'classification' or 'regression'")
        if stochastic and type(self).curvature != "ggn":
            raise BadInputError(
                f"stochastic=True applies to GGN backends (Monte-Carlo Fisher), not "
                f"{type(self).__name__}"
            )
        self.model = model
        # reward modelling fits as classification (laplace-torch's rule)
        self.likelihood = "regression" if str(likelihood) == "regression" else "classification"
        self.last_layer = bool(last_layer)
        self.subnetwork_indices = subnetwork_indices
        self.dict_key_x, self.dict_key_y = dict_key_x, dict_key_y
        self.stochastic = bool(stochastic)
        self.num_samples = int(num_samples)
        # The engine's outputs are (B, C) with the class dimension last; laplace-torch's
        # other values only matter for its multi-dimensional outputs (not supported here).
        self.logit_class_dim = logit_class_dim
        self.factor = 0.5 if self.likelihood == "regression" else 1.0
        self.kwargs = kwargs

    def _engine(self) -> Any:
        if _ENGINE is None:
            # `import laplace_cli.curvature` alone does not load the engine's package (the
            # package root loads it lazily); loading it registers the engine. By name, as the
            # root's lazy loader does: this package must not depend on the layers above it.
            importlib.import_module("laplace_cli.laplace")
        if _ENGINE is None:  # pragma: no cover - the import above registers it
            raise RuntimeError("laplace_cli.laplace did not register the backend engine")
        return _ENGINE

    def _curvature_name(self) -> str:
        name = type(self).curvature
        if name is None:
            raise NotImplementedError(
                f"{type(self).__name__} names no curvature; use GGNInterface, EFInterface or "
                "a named backend (CurvlinopsGGN, CurvlinopsEF, ...)"
            )
        return "mc_fisher" if self.stochastic else name

    def jacobians(self, x: Any, enable_backprop: bool = False) -> tuple[Any, Any]:
        """(Js (B, C, P), f (B, C)): per-sample Jacobians of the outputs and the outputs."""
        return self._engine().jacobians(self, x, enable_backprop)

    def last_layer_jacobians(self, x: Any, enable_backprop: bool = False) -> tuple[Any, Any]:
        """(Js (B, C, P_last), f (B, C)) over the last layer of a `FeatureExtractor` model."""
        return self._engine().last_layer_jacobians(self, x, enable_backprop)

    def gradients(self, x: Any, y: Any) -> tuple[Any, Any]:
        """(Gs (B, P), loss): per-sample gradients of the loss and the summed loss."""
        return self._engine().gradients(self, x, y)

    def full(self, x: Any, y: Any, N: int | None = None, **kwargs: Any) -> tuple[Any, Any]:
        """(loss, H (P, P)): the curvature of one batch, dense."""
        return self._engine().curvature(self, "full", x, y)

    def diag(self, x: Any, y: Any, N: int | None = None, **kwargs: Any) -> tuple[Any, Any]:
        """(loss, h (P,)): the diagonal of the curvature of one batch."""
        return self._engine().curvature(self, "diag", x, y)

    def kron(self, x: Any, y: Any, N: int | None = None, **kwargs: Any) -> tuple[Any, Any]:
        """(loss, H as a `Kron`): the K-FAC curvature of one batch (laplace_cli.utils.Kron).

        `N` is accepted and not used: the input factors are averaged over this batch."""
        return self._engine().curvature(self, "kron", x, y)


#: The implementation behind backend instances (laplace_cli.laplace.backend_objects).
_ENGINE: Any = None


def set_backend_engine(engine: Any) -> None:
    """Register the object whose functions compute backend instances' results."""
    global _ENGINE
    _ENGINE = engine


class GGNInterface(CurvatureInterface):
    """Generalised Gauss-Newton (`stochastic=True` in backend_kwargs: Monte-Carlo Fisher)."""

    curvature = "ggn"


class EFInterface(CurvatureInterface):
    """Empirical Fisher."""

    curvature = "ef"


class AsdlInterface(CurvatureInterface):
    """Named after ASDL; computed by this project's engine (string backend "asdl": ASDL)."""


class AsdlGGN(AsdlInterface, GGNInterface):
    """GGN (laplace-torch: ASDL's exact GGN / K-FAC)."""


class AsdlEF(AsdlInterface, EFInterface):
    """Empirical Fisher (laplace-torch: ASDL's)."""


class AsdlHessian(AsdlInterface):
    """The exact Hessian: not offered by this project (refused when used)."""

    exact_hessian = True


class BackPackInterface(CurvatureInterface):
    """Named after BackPACK; computed by this project's engine."""


class BackPackGGN(BackPackInterface, GGNInterface):
    """GGN (laplace-torch: BackPACK's DiagGGN / KFLR)."""


class BackPackEF(BackPackInterface, EFInterface):
    """Empirical Fisher (laplace-torch: BackPACK's)."""


class CurvlinopsInterface(CurvatureInterface):
    """Named after curvlinops; computed by this project's engine."""


class CurvlinopsGGN(CurvlinopsInterface, GGNInterface):
    """GGN: laplace-torch's default backend, and this project's default curvature."""


class CurvlinopsEF(CurvlinopsInterface, EFInterface):
    """Empirical Fisher (laplace-torch: curvlinops')."""


class CurvlinopsHessian(CurvlinopsInterface):
    """The exact Hessian: not offered by this project (refused when used)."""

    exact_hessian = True


class AsdfghjklInterface(CurvatureInterface):
    """Named after the old ``asdfghjkl`` backend of laplace-torch; computed by this engine."""


class AsdfghjklGGN(AsdfghjklInterface, GGNInterface):
    """GGN (laplace-torch: the old asdfghjkl's)."""


class AsdfghjklEF(AsdfghjklInterface, EFInterface):
    """Empirical Fisher (laplace-torch: the old asdfghjkl's)."""


class AsdfghjklHessian(AsdfghjklInterface):
    """The exact Hessian: not offered by this project (refused when used)."""

    exact_hessian = True


def resolve_backend(
    backend: Any,
    curvature: str,
    n_mc_samples: int,
    backend_kwargs: Mapping[str, Any] | None = None,
    asdl_fisher_kwargs: Mapping[str, Any] | None = None,
) -> tuple[str, str, int]:
    """(engine, curvature, n_mc_samples) for `Laplace`'s `backend` / `curvature` arguments.

    `backend` is this project's string ("auto", "native", "asdl"), None (laplace-torch's
    default: the GGN) or a `CurvatureInterface` subclass. A class decides the curvature; an
    explicit `curvature` other than the default "ggn" that disagrees with it is refused.
    """
    kwargs = dict(backend_kwargs or {})
    if asdl_fisher_kwargs:
        # laplace-torch forwards these to ASDL's fisher_for_cross_entropy (e.g. a sampling
        # option); this engine has no such knobs, so a value would be silently ignored.
        raise BadInputError(
            f"asdl_fisher_kwargs {sorted(asdl_fisher_kwargs)} have no meaning in laplace_cli "
            "(its curvature is computed by its own engine); leave them out, and choose the "
            "curvature with backend= or curvature='ggn' | 'ef' | 'mc_fisher'"
        )
    stochastic = bool(kwargs.pop("stochastic", False))
    num_samples = kwargs.pop("num_samples", None)
    for key in _INTERNAL_KWARGS:
        kwargs.pop(key, None)
    if kwargs:
        raise BadInputError(
            f"backend_kwargs {sorted(kwargs)} are not understood; laplace_cli takes "
            "'stochastic' (Monte-Carlo Fisher) and 'num_samples' (its samples per input)"
        )
    if backend is None:
        backend = GGNInterface
    if isinstance(backend, type) and issubclass(backend, CurvatureInterface):
        wanted = backend.curvature
        if wanted is None:
            raise BadInputError(
                f"backend {backend.__name__}: the exact Hessian is not offered by laplace_cli; "
                "use its positive semi-definite approximation, the GGN "
                "(backend=CurvlinopsGGN, or curvature='ggn')"
            )
        if stochastic:
            if wanted != "ggn":
                raise BadInputError(
                    f"backend_kwargs stochastic=True applies to GGN backends (Monte-Carlo "
                    f"Fisher), not {backend.__name__}"
                )
            wanted = "mc_fisher"
        if str(curvature) not in ("ggn", wanted):
            raise BadInputError(
                f"backend {backend.__name__} computes {wanted!r} but curvature={curvature!r} "
                "was given; pass one of them"
            )
        n = int(num_samples) if num_samples is not None else n_mc_samples
        return "auto", wanted, n
    if isinstance(backend, CurvatureInterface):
        raise BadInputError("pass the backend class, not an instance")
    if isinstance(backend, type):
        raise BadInputError(
            f"backend {backend.__name__} is not one of laplace_cli.curvature's classes "
            "(CurvlinopsGGN, AsdlGGN, BackPackEF, ...); or pass 'auto', 'native' or 'asdl'"
        )
    if stochastic:
        curvature = "mc_fisher"
    n = int(num_samples) if num_samples is not None else n_mc_samples
    return backend, str(curvature), n
