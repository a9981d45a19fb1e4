"""Two GLM functional variances of a batch that `Laplace` computes on their own paths.

`joint_covariance` is J Σ Jᵀ across every output of a batch, (B·C, B·C), by each structure's own
`functional_variance` on the batch rewritten as one input with B·C outputs
(`posterior.variance_memory.factors_as_one_sample`), or by dense Jacobians, refused beyond half
of the memory budget. `feature_variance_diag` is the diagonal of J Σ Jᵀ of a last-layer diag /
kron posterior from the head's features, O(C + d) memory per row
(`posterior.feature_variance`). `Laplace.joint_functional_covariance` and
`Laplace.functional_variance_diag` check the fit and the inputs and delegate here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import Inputs, batch_size
from laplace_cli.core.errors import MemoryBudgetError
from laplace_cli.posterior.base import Posterior
from laplace_cli.posterior.feature_variance import FeatureVarianceForm
from laplace_cli.posterior.memory import format_bytes
from laplace_cli.posterior.variance_memory import factors_as_one_sample, joint_factor_bytes
from laplace_cli.subsets.base import ParameterSubset, iter_rows
from laplace_cli.subsets.precision import cast_factors

__all__ = ["check_joint_budget", "feature_variance_diag", "joint_covariance"]


def check_joint_budget(need: int, n: int, max_memory: int) -> None:
    """MemoryBudgetError when the joint covariance of `n` inputs needs over half the budget."""
    if need > max_memory // 2:
        raise MemoryBudgetError(
            f"the joint covariance of {n} inputs needs about {format_bytes(need)} "
            f"(budget {format_bytes(max_memory)}); use a smaller batch or joint=False"
        )


def joint_covariance(
    x: Inputs,
    subset: ParameterSubset,
    posterior: Posterior,
    prior: Tensor,
    scale: Tensor,
    dtype: torch.dtype,
    *,
    dense: bool,
    chunk_rows: Callable[[], int],
    n_outputs: int,
    n_params: int,
    max_memory: int,
) -> tuple[Tensor, Tensor]:
    """f_μ flattened (B·C,) and J Σ Jᵀ over all outputs of a non-empty batch, (B·C, B·C).

    `dense`: through dense Jacobians in chunks of `chunk_rows()` rows (structures that need
    them, or `enable_backprop`); otherwise through the layer factors.
    """
    n = batch_size(x)
    if dense:
        itemsize = torch.empty((), dtype=dtype).element_size()
        need = 4 * n * n_outputs * n_params * itemsize
        check_joint_budget(need, n, max_memory)
        pieces = [subset.jacobians(xc) for xc in iter_rows(x, chunk_rows())]
        f = torch.cat([p[0] for p in pieces]).to(dtype)
        J = torch.cat([p[1] for p in pieces]).to(dtype)  # (B, C, P)
        cov = posterior.functional_variance(prior, scale, J=J.reshape(1, -1, J.shape[-1]))
    else:
        f, factors = subset.factors(x)
        f, factors = f.to(dtype), cast_factors(factors, dtype)
        check_joint_budget(joint_factor_bytes(factors), n, max_memory)
        cov = posterior.functional_variance(prior, scale, factors=factors_as_one_sample(factors))
    return f.reshape(-1), cov[0]


def feature_variance_diag(
    x: Inputs,
    subset: Any,  # a last-layer subset: `features(x)` gives (φ, f)
    form: FeatureVarianceForm,
    dtype: torch.dtype,
    *,
    max_memory: int,
) -> tuple[Tensor, Tensor]:
    """GLM mean (B, C) and diag J Σ Jᵀ (B, C) of a last-layer posterior, from the features."""
    itemsize = dtype.itemsize
    n_outputs, d = form.weights.shape
    # φ and its rotation (d each), f, the variances and a temporary (C each) per row, within a
    # quarter of the budget.
    rows = max(1, int(max_memory // 4 // ((2 * d + 3 * n_outputs) * itemsize)))
    mus, vars_ = [], []
    for xc in iter_rows(x, rows):
        phi, f = subset.features(xc)
        mus.append(f if f.dtype == dtype else f.to(dtype))
        vars_.append(form.variance_diag(phi if phi.dtype == dtype else phi.to(dtype)))
    if len(mus) == 1:
        return mus[0], vars_[0]
    return torch.cat(mus), torch.cat(vars_)
