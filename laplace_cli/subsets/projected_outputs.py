"""Jacobian factors of K projected outputs instead of C model outputs (many classes).

The Monte Carlo and empirical Fisher use the model's Jacobian only through Wₙᵀ Jₙ, with W
(B, C, K) their output-space roots (K sampled gradients, K ≪ C). Inside
`projected_outputs(model, W)` the model returns gₙ = Wₙᵀ fₙ (B, K) instead of fₙ (B, C), so a
subset's `factors` back-propagates K cotangents instead of C, and its layer factors G are
(B, K, T, d_out) = Wᵀ ∂f/∂z; the posterior then accumulates them with the identity as root:
Σ (WᵀJ)ᵀ(WᵀJ) = Σ Jᵀ W Wᵀ J, the same curvature. The per-row cost of the backward passes is
then independent of C (docs/half-precision.md, "Many classes").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class NotProjectable(RuntimeError):
    """The model's output is not a (B, C) tensor (nor an object holding one as `logits`)."""


def _project(out: Tensor, W: Tensor) -> Tensor:
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape != W.shape[:2]:
        raise NotProjectable(f"output of shape {getattr(out, 'shape', None)}")
    return torch.einsum("bc,bck->bk", out, W.to(out.dtype))


@contextlib.contextmanager
def projected_outputs(model: nn.Module, W: Tensor) -> Iterator[None]:
    """Within the block, `model(x)` returns Wₙᵀ f(xₙ) per row, (B, K); see the module doc."""

    def hook(module: nn.Module, args: tuple, out):
        if hasattr(out, "logits"):
            out.logits = _project(out.logits, W)
            return out
        if isinstance(out, tuple):
            return (_project(out[0], W), *out[1:])
        return _project(out, W)

    handle = model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
