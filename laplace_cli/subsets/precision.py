"""Half-precision models: the subsets' Jacobian pieces cast to the posterior's dtype.

A bfloat16 / float16 model runs its forward and backward passes in its own dtype; every product
of Jacobian pieces (curvature sums, J Σ Jᵀ) is formed after the pieces are cast to the
posterior's dtype (float32 unless asked otherwise), so no sum of many terms is rounded to an
8- or 11-bit mantissa. See docs/half-precision.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from laplace_cli.subsets.base import DenseFactor, Factor, LayerFactor

#: dtypes a model may run in while the Laplace maths runs in float32 (or float64).
HALF_DTYPES: frozenset[torch.dtype] = frozenset({torch.bfloat16, torch.float16})


def is_half(dtype: torch.dtype) -> bool:
    """True for bfloat16 and float16."""
    return dtype in HALF_DTYPES


def cast_factors(factors: Sequence[Factor], dtype: torch.dtype) -> list[Factor]:
    """The factors with every tensor in `dtype` (the same objects where they already are)."""
    out: list[Factor] = []
    # A layer's weight and bias share one G (and gram) object: cast once, so they still share
    # it and the posterior still forms their output factor once.
    cast: dict[int, Tensor] = {}

    def to(t: Tensor) -> Tensor:
        if t.dtype == dtype:
            return t
        if id(t) not in cast:
            cast[id(t)] = t.to(dtype)
        return cast[id(t)]

    for fac in factors:
        if isinstance(fac, DenseFactor):
            out.append(fac if fac.J.dtype == dtype else DenseFactor(fac.J.to(dtype)))
            continue
        a, gram = fac.a, fac.gram
        if (a is None or a.dtype == dtype) and fac.G.dtype == dtype:
            if gram is None or gram.dtype == dtype:
                out.append(fac)
                continue
        out.append(
            LayerFactor(
                None if a is None else to(a),
                to(fac.G),
                None if gram is None else to(gram),
                fac.input_gram,  # takes the dtype when called
            )
        )
    return out
