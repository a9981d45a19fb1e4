"""Which curvature a `backend=` argument selects: laplace-torch's backend classes as selectors.

laplace-torch picks the library that computes the curvature with a class passed as
``backend=`` (``CurvlinopsGGN``, ``AsdlEF``, ...). Here one engine computes every structure, so
a class only names *which* curvature to compute (its ``curvature`` class attribute):
``*GGN`` → ``"ggn"`` (``backend_kwargs={"stochastic": True, "num_samples": k}``: the
Monte-Carlo Fisher, laplace-torch's meaning of ``stochastic``), ``*EF`` → ``"ef"``, and the
``*Hessian`` classes → ``"hessian"`` (the exact Hessian of the loss, laplace_cli/fisher/hessian.py;
full and diag structures, kron / lowrank refused when fitting starts).

`BackendSelector` is the part of those classes the engine needs: `Laplace` (approximation.py)
resolves its arguments here, below the classes themselves (laplace/backends.py), whose
instances compute with `Laplace` - so the engine never imports them and no cycle forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from laplace_cli.core.errors import BadInputError

__all__ = ["BackendSelector", "resolve_backend"]

#: backend_kwargs keys laplace-torch's Laplace sets itself (ignored here: the subset says it).
_INTERNAL_KWARGS = ("last_layer", "subnetwork_indices", "dict_key_x", "dict_key_y")


class BackendSelector:
    """What a laplace-torch backend class tells the engine: the curvature it names.

    `curvature` is this project's curvature for the class (None: not offered here);
    `exact_hessian` marks laplace-torch's exact-Hessian backends (curvature "hessian", which
    has no Kronecker form)."""

    curvature: ClassVar[str | None] = None
    exact_hessian: ClassVar[bool] = False


class _DefaultGGN(BackendSelector):
    """`backend=None`: laplace-torch's default, the GGN."""

    curvature = "ggn"


# error messages name laplace-torch's default class, as they did when it stood here
_DefaultGGN.__name__ = _DefaultGGN.__qualname__ = "GGNInterface"


def resolve_backend(
    backend: Any,
    curvature: str,
    n_mc_samples: int,
    backend_kwargs: Mapping[str, Any] | None = None,
    asdl_fisher_kwargs: Mapping[str, Any] | None = None,
) -> tuple[str, str, int]:
    """(engine, curvature, n_mc_samples) for `Laplace`'s `backend` / `curvature` arguments.

    `backend` is this project's string ("auto", "native", "asdl"), None (laplace-torch's
    default: the GGN) or a `BackendSelector` subclass (laplace-torch's `CurvatureInterface`
    and its named classes, laplace_cli/laplace/backends.py). A class decides the curvature; an
    explicit `curvature` other than the default "ggn" that disagrees with it is refused.
    """
    kwargs = dict(backend_kwargs or {})
    if asdl_fisher_kwargs:
        # laplace-torch forwards these to ASDL's fisher_for_cross_entropy (e.g. a sampling
        # option); this engine has no such knobs, so a value would be silently ignored.
        raise BadInputError(
            f"asdl_fisher_kwargs {sorted(asdl_fisher_kwargs)} have no meaning in laplace_cli "
            "(its curvature is computed by its own engine); leave them out, and choose the "
            "curvature with backend= or curvature='ggn' | 'ef' | 'mc_fisher' | 'hessian'"
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
    if backend is None:  # laplace-torch's default: its GGN
        backend = _DefaultGGN
    if isinstance(backend, type) and issubclass(backend, BackendSelector):
        wanted = backend.curvature
        if wanted is None:
            raise BadInputError(
                f"backend {backend.__name__} names no curvature; pass a named backend "
                "(CurvlinopsGGN, CurvlinopsEF, CurvlinopsHessian, ...) or curvature='ggn'"
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
    if isinstance(backend, BackendSelector):
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
