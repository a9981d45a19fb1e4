"""laplace-torch's `laplace.utils` names: subnetwork masks, `FeatureExtractor`, helpers.

Each is a thin layer over this project's engine (masks: subnetwork.py, the functions the CLI's
`--subnetwork` selectors call). `Kron` / `KronDecomposed` are the K-FAC posterior's algebra
(posterior/kron_matrix.py) with laplace-torch's interface.
`RunningNLLMetric` has torchmetrics' update/compute/reset without depending on it.
See docs/migrating.md.
"""

from laplace_cli.utils.feature_extractor import FeatureExtractor, FeatureReduction
from laplace_cli.utils.matrix import Kron, KronDecomposed
from laplace_cli.utils.metrics import RunningNLLMetric
from laplace_cli.utils.subnetmask import (
    LargestMagnitudeSubnetMask,
    LargestVarianceDiagLaplaceSubnetMask,
    LargestVarianceSWAGSubnetMask,
    LastLayerSubnetMask,
    ModuleNameSubnetMask,
    ParamNameSubnetMask,
    RandomSubnetMask,
    ScoreBasedSubnetMask,
    SubnetMask,
)
from laplace_cli.utils.swag import fit_diagonal_swag_var
from laplace_cli.utils.utils import (
    SoDSampler,
    block_diag,
    diagonal_add_scalar,
    expand_prior_precision,
    fix_prior_prec_structure,
    get_nll,
    invsqrt_precision,
    kron,
    normal_samples,
    parameters_per_layer,
    symeig,
    validate,
)

__all__ = [
    "FeatureExtractor",
    "FeatureReduction",
    "Kron",
    "KronDecomposed",
    "RunningNLLMetric",
    "invsqrt_precision",
    "kron",
    "diagonal_add_scalar",
    "symeig",
    "block_diag",
    "normal_samples",
    "SoDSampler",
    "SubnetMask",
    "ScoreBasedSubnetMask",
    "RandomSubnetMask",
    "LargestMagnitudeSubnetMask",
    "LargestVarianceDiagLaplaceSubnetMask",
    "LargestVarianceSWAGSubnetMask",
    "ParamNameSubnetMask",
    "ModuleNameSubnetMask",
    "LastLayerSubnetMask",
    "fit_diagonal_swag_var",
    "get_nll",
    "validate",
    "parameters_per_layer",
    "expand_prior_precision",
    "fix_prior_prec_structure",
]
