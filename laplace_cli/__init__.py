"""laplace-cli: post-hoc Laplace approximations for PyTorch models, as a library and a CLI.

from laplace_cli import Laplace
la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron")
la.fit(train_loader)
la.optimize_prior_precision(method="marglik")
probs = la(x, pred_type="glm", link_approx="probit")
"""

from __future__ import annotations

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
from laplace_cli.laplace.approximation import Laplace  # noqa: E402

__all__ = [
    "Laplace",
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
