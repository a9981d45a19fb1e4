"""laplace-cli: post-hoc Laplace approximations for PyTorch models, as a library and a CLI.

from laplace_cli import Laplace
la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron")
la.fit(train_loader)
la.optimize_prior_precision(method="marglik")
probs = la(x, pred_type="glm", link_approx="probit")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from laplace_cli.core.enums import (  # noqa: E402
    Curvature,
    Likelihood,
    LinkApprox,
    PredType,
    PriorStructure,
    Structure,
    Subset,
)
from laplace_cli.core.errors import (  # noqa: E402
    BadInputError,
    GateFailed,
    LaplaceCliError,
    NumericalError,
)
from laplace_cli.core.version import __version__  # noqa: E402

if TYPE_CHECKING:  # for type checkers and IDEs; at run time see __getattr__ below
    from laplace_cli.laplace.approximation import Laplace

# `Laplace` imports torch (seconds); it is loaded on first use so that `laplace --help` and
# `import laplace_cli.cli.app` stay torch-free and start in well under a second.


#: laplace-torch's class names (thin flavours of `Laplace`, see laplace/flavours.py), loaded lazily.
_FLAVOURS = {
    "laplace_cli.laplace.flavours": (
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
    ),
    "laplace_cli.laplace.flavours_last_layer": (
        "LLLaplace",
        "DiagLLLaplace",
        "KronLLLaplace",
        "FullLLLaplace",
        "FunctionalLLLaplace",
    ),
    "laplace_cli.laplace.flavours_subnet": (
        "SubnetLaplace",
        "DiagSubnetLaplace",
        "FullSubnetLaplace",
    ),
}


def __getattr__(name: str) -> type:
    if name == "Laplace":
        from laplace_cli.laplace.approximation import Laplace

        return Laplace
    if name == "marglik_training":  # laplace-torch's `laplace.marglik_training` (the function)
        from laplace_cli.marglik_training import marglik_training

        globals()[name] = marglik_training  # the function from now on, as in laplace-torch
        return marglik_training
    for module, names in _FLAVOURS.items():
        if name in names:
            import importlib

            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'laplace_cli' has no attribute {name!r}")


__all__ = [
    "Laplace",
    "marglik_training",
    *(name for names in _FLAVOURS.values() for name in names),
    "Likelihood",
    "Subset",
    "Structure",
    "Curvature",
    "PredType",
    "LinkApprox",
    "PriorStructure",
    "LaplaceCliError",
    "BadInputError",
    "NumericalError",
    "GateFailed",
    "__version__",
]
