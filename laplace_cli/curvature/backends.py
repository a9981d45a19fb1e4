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
optional ASDL implementation is chosen with the string ``backend="asdl"``. The classes are
markers: creating an instance (laplace-torch's ``CurvlinopsGGN(model, likelihood).diag(X, y)``)
raises ``NotImplementedError``; use ``Laplace(...).fit`` and its ``posterior_precision``.
"""

from __future__ import annotations

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
]

#: backend_kwargs keys laplace-torch's Laplace sets itself (ignored here: the subset says it).
_INTERNAL_KWARGS = ("last_layer", "subnetwork_indices", "dict_key_x", "dict_key_y")


class CurvatureInterface:
    """Base of laplace-torch's backend names; pass a subclass (not an instance) as `backend=`.

    `curvature` is this project's curvature for the class (None: not offered here).
    """

    curvature: ClassVar[str | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} only selects the curvature in laplace_cli: pass the class "
            f"as Laplace(..., backend={type(self).__name__}); this project has no separate "
            "backend objects (read la.posterior_precision after la.fit instead)"
        )


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


class AsdfghjklInterface(CurvatureInterface):
    """Named after the old ``asdfghjkl`` backend of laplace-torch; computed by this engine."""


class AsdfghjklGGN(AsdfghjklInterface, GGNInterface):
    """GGN (laplace-torch: the old asdfghjkl's)."""


class AsdfghjklEF(AsdfghjklInterface, EFInterface):
    """Empirical Fisher (laplace-torch: the old asdfghjkl's)."""


class AsdfghjklHessian(AsdfghjklInterface):
    """The exact Hessian: not offered by this project (refused when used)."""


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
    if isinstance(backend, CurvatureInterface):  # pragma: no cover - __init__ refuses
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
