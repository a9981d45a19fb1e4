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
        if fac.inputs_built:
            a = None if fac.a is None else to(fac.a)
        else:
            a = lambda f=fac: to(f.a)  # noqa: E731 — cast when (and if) they are built
        G, gram = to(fac.G), None if fac.gram is None else to(fac.gram)
        if fac.inputs_built and a is fac.a and G is fac.G and gram is fac.gram:
            out.append(fac)
            continue
        out.append(LayerFactor(a, G, gram, fac.input_gram))  # input_gram takes the dtype
    return out
