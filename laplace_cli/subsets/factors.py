"""The data the parameter subsets hand to the posterior structures (subsets/base.py).

`ParamGroup`: one parameter tensor of a subset and how its Jacobian comes; `LayerFactor`: the
Jacobian of a Linear / Conv2d weight or bias in factored form; `DenseFactor`: a dense
per-sample Jacobian piece. `subsets.base` re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["DenseFactor", "Factor", "GroupKind", "LayerFactor", "ParamGroup", "RootClosedForms"]

GroupKind = Literal["weight", "bias", "other"]


@dataclass(frozen=True)
class ParamGroup:
    """One parameter tensor of the subset.

    `kind` is "weight"/"bias" for parameters of a supported layer (`nn.Linear`, `nn.Conv2d` with
    groups=1), whose Jacobians come as layer factors, and "other" for everything else.
    """

    name: str
    shape: tuple[int, ...]
    kind: GroupKind
    module_name: str | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def kron_shape(self) -> tuple[int, int]:
        """(d_out, d_in) of a weight; conv weights flatten (C_in, kh, kw) into d_in."""
        return self.shape[0], self.numel // self.shape[0]


class LayerFactor:
    """Jacobian of one weight or bias in factored form.

    a: (B, T, d_in) layer inputs (None for a bias), or a zero-argument builder of them, called
    on first use of `a` (a conv's patches, which a K-FAC fit with `input_gram` never needs);
    G: (B, C, T, d_out) output Jacobians. T is the weight-sharing dimension (1 for plain Linear
    inputs, H·W for Conv2d).
    gram: the output factor Σ g gᵀ (d_out, d_out) of G, where the subset knows it in closed form
    (the layer that produces the model's outputs, under the GGN root: Σ_b ∂²ℓ/∂f_b²); the K-FAC
    sum then skips the (d_out × B·K) product. In `AllWeights.factor_directions` only the pieces'
    grams sum to the batch's (the first piece carries it, later ones zeros).
    input_gram: dtype ↦ Σ_{b,t} a aᵀ (d_in, d_in) in that dtype, where the subset has a cheaper
    route than a's own Gram (a stride-1 Conv2d over a large image: `subsets.conv_input_gram`);
    the K-FAC "expand" input factor calls it once per batch.
    """

    __slots__ = ("G", "_a", "gram", "input_gram")

    def __init__(
        self,
        a: Tensor | Callable[[], Tensor] | None,
        G: Tensor,
        gram: Tensor | None = None,
        input_gram: Callable[[torch.dtype], Tensor] | None = None,
    ) -> None:
        self._a = a
        self.G = G
        self.gram = gram
        self.input_gram = input_gram

    @property
    def a(self) -> Tensor | None:
        if callable(self._a):
            self._a = self._a()
        return self._a

    @property
    def inputs_built(self) -> bool:
        """False while `a` is a builder not yet called (reading `a` calls it)."""
        return not callable(self._a)

    def __repr__(self) -> str:
        a = self._a if self.inputs_built else "<not built>"
        return f"LayerFactor(a={a!r}, G={self.G!r}, gram={self.gram!r})"


@dataclass
class DenseFactor:
    """Per-sample Jacobian of one parameter tensor, (B, C, numel)."""

    J: Tensor


Factor = LayerFactor | DenseFactor


@dataclass(frozen=True)
class RootClosedForms:
    """What a curvature's output root L (f ↦ (B, C, K), L_b L_bᵀ = ∂²ℓ/∂f_b²) gives without
    forming products over its K columns (`AllWeights.factor_directions`).

    gram: f ↦ Σ_b L_b L_bᵀ (C, C); through: (f, M (C, d)) ↦ L_bᵀ M stacked (K, B, d).
    """

    gram: Callable[[Tensor], Tensor]
    through: Callable[[Tensor, Tensor], Tensor]
