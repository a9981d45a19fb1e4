"""laplace-torch's backend class names, as selectors of this project's one curvature engine.

laplace-torch picks the library that computes the curvature with a class passed as
``backend=`` (``CurvlinopsGGN``, ``AsdlEF``, ...). Here one engine computes every structure, so
each class only names *which* curvature to compute:

* ``*GGN`` classes (and ``GGNInterface``): the exact generalised Gauss-Newton, ``curvature="ggn"``;
  with ``backend_kwargs={"stochastic": True, "num_samples": k}`` the Monte-Carlo Fisher,
  ``curvature="mc_fisher"`` with ``n_mc_samples=k`` (laplace-torch's meaning of ``stochastic``).
* ``*EF`` classes (and ``EFInterface``): the empirical Fisher, ``curvature="ef"``.
* ``*Hessian`` classes: the exact Hessian of the loss, ``curvature="hessian"``
  (laplace_cli/fisher/hessian.py) for the full and diag structures, over all weights, the last
  layer or a subnetwork; kron and lowrank refuse it when fitting starts (``BadInputError``
  naming 'ggn' / 'ef'), as laplace-torch's ``KronLaplace(backend=CurvlinopsHessian)`` is
  created and fails in ``fit``. The Hessian may be indefinite (docs/migrating.md).

The curvature is computed by this project's native engine whichever library a class is named
after (the numbers equal laplace-torch's CurvlinopsGGN / ASDL ones, see tests/compare); the
optional ASDL implementation is chosen with the string ``backend="asdl"``. An instance
(laplace-torch's ``CurvlinopsGGN(model, likelihood).diag(X, y)``) computes laplace-torch's
backend results (``diag``, ``full``, ``gradients``, ``jacobians``, ``last_layer_jacobians``)
on one batch with this project's engine (laplace/backend_objects.py); ``kron`` gives a
``Kron`` (the ``*Hessian`` classes: ``NotImplementedError``, as laplace-torch's).

The classes sit in this package, above the engine they call; the engine itself only sees their
`BackendSelector` base (laplace/backend_choice.py). ``laplace_cli.curvature`` (laplace-torch's
path, a layer above) re-exports them.
"""

from __future__ import annotations

from typing import Any

from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace import backend_objects as engine
from laplace_cli.laplace.backend_choice import BackendSelector, resolve_backend

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


class CurvatureInterface(BackendSelector):
    """Base of laplace-torch's backend names.

    Passed as a class (`Laplace(..., backend=CurvlinopsGGN)`), it selects the curvature. An
    instance (`CurvlinopsGGN(model, "classification").diag(X, y)`) computes laplace-torch's
    backend results on one batch with this project's engine: the methods delegate to
    `laplace_cli.laplace.backend_objects`. `curvature` (from `BackendSelector`) is this
    project's curvature for the class (None: the interfaces that name no curvature; such
    instances refuse the curvature methods).
    """

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
        # Refused rather than ignored: laplace-torch's ASDL / BackPack K-FAC fail on an
        # invalid one (IndexError) while its other paths ignore it.
        self.logit_class_dim = int(logit_class_dim)
        self._check_class_dim()
        self.factor = 0.5 if self.likelihood == "regression" else 1.0
        self.kwargs = kwargs

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
        return engine.jacobians(self, x, enable_backprop)

    def last_layer_jacobians(self, x: Any, enable_backprop: bool = False) -> tuple[Any, Any]:
        """(Js (B, C, P_last), f (B, C)) over the last layer of a `FeatureExtractor` model."""
        return engine.last_layer_jacobians(self, x, enable_backprop)

    def gradients(self, x: Any, y: Any) -> tuple[Any, Any]:
        """(Gs (B, P), loss): per-sample gradients of the loss and the summed loss."""
        return engine.gradients(self, x, y)

    def _check_class_dim(self) -> None:
        """Outputs here are (batch, classes): a classification backend takes the class dimension
        -1 (or 1, the same one); any other value is refused when the backend is made
        (laplace-torch ignores it on some paths and fails with IndexError on others).
        Regression does not use it."""
        dim = self.logit_class_dim
        if self.likelihood == "regression" or dim in (-1, 1):
            return
        raise NotImplementedError(
            f"logit_class_dim={dim}: laplace_cli's curvature takes outputs (batch, classes) "
            "with the classes last; leave logit_class_dim=-1"
        )

    def full(self, x: Any, y: Any, N: int | None = None, **kwargs: Any) -> tuple[Any, Any]:
        """(loss, H (P, P)): the curvature of one batch, dense."""
        return engine.curvature(self, "full", x, y)

    def diag(self, x: Any, y: Any, N: int | None = None, **kwargs: Any) -> tuple[Any, Any]:
        """(loss, h (P,)): the diagonal of the curvature of one batch."""
        return engine.curvature(self, "diag", x, y)

    def kron(self, x: Any, y: Any, N: int | None = None, **kwargs: Any) -> tuple[Any, Any]:
        """(loss, H as a `Kron`): the K-FAC curvature of one batch (laplace_cli.utils.Kron).

        `N` is accepted and not used: the input factors are averaged over this batch."""
        if type(self).exact_hessian:
            # laplace-torch's *Hessian backends have no kron either (NotImplementedError)
            raise NotImplementedError(
                f"{type(self).__name__}: the exact Hessian has no Kronecker form; use "
                "full() / diag(), or a GGN / EF backend (CurvlinopsGGN, CurvlinopsEF) for kron"
            )
        return engine.curvature(self, "kron", x, y)


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
    """The exact Hessian of the loss (curvature "hessian"): full and diag structures."""

    curvature = "hessian"
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
    """The exact Hessian of the loss (curvature "hessian"): full and diag structures."""

    curvature = "hessian"
    exact_hessian = True


class AsdfghjklInterface(CurvatureInterface):
    """Named after the old ``asdfghjkl`` backend of laplace-torch; computed by this engine."""


class AsdfghjklGGN(AsdfghjklInterface, GGNInterface):
    """GGN (laplace-torch: the old asdfghjkl's)."""


class AsdfghjklEF(AsdfghjklInterface, EFInterface):
    """Empirical Fisher (laplace-torch: the old asdfghjkl's)."""


class AsdfghjklHessian(AsdfghjklInterface):
    """The exact Hessian of the loss (curvature "hessian"): full and diag structures."""

    curvature = "hessian"
    exact_hessian = True
