"""The back-propagated output gradients of a curvature root's K columns, in pieces
(`AllWeights.factor_directions`).

Each piece is (w, grads): some columns w (B, C, k) of the root W and the gradients of the
projected outputs w_kᵀ f with respect to every captured output (k, B, ...), in `cap.outs` order.
Where autograd batches the cotangents, a piece holds as many columns as `columns_per_pass`
allows; where it cannot (conv / BatchNorm / max-pool graphs) one column per backward pass.

Where the root has closed forms (`RootClosedForms`, the GGN) and the model's outputs are the
output of a factored `nn.Linear` itself, that layer needs no product over the B·K root columns:
its output factor is Σ_b L_b L_bᵀ (`LayerFactor.gram`), and the cotangents start at its input as
L_bᵀ M (M its weight) instead of going through its backward (B·C·K·d flops, quadratic in C).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import Tensor, nn

from laplace_cli.subsets.factors import RootClosedForms
from laplace_cli.subsets.layer_capture import LayerCapture, columns_per_pass
from laplace_cli.subsets.per_sample import (
    backward_batches,
    output_jacobian_direction,
    output_jacobians,
)

__all__ = ["output_layer", "root_pieces"]

Piece = tuple[Tensor, list[Tensor]]


def output_layer(cap: LayerCapture, layers: dict[str, nn.Module]) -> str | None:
    """The factored Linear layer whose output is the model's output f itself, if any."""
    return next(
        (m for m in cap.layers if cap.outputs[m] is cap.f and type(layers[m]) is nn.Linear), None
    )


def root_pieces(
    cap: LayerCapture,
    W: Tensor,
    max_bytes: int | None,
    closed: RootClosedForms | None = None,
    out_layer: str | None = None,
    weight: Tensor | None = None,
) -> Iterator[Piece]:
    """(w, grads) pieces of W's columns; `closed` with `out_layer` (its `weight`): start the
    cotangents at that layer's input (see the module docstring)."""
    if not cap.outs:
        yield W, []
        return
    start = cap.input_nodes.get(out_layer) if out_layer is not None else None
    if closed is None or start is None or weight is None or not start.requires_grad:
        yield from _pieces_from(cap.f, cap.outs, W, max_bytes, lambda w: w.permute(2, 0, 1))
        return
    # The output layer's gradients are W's columns themselves; the others come from its input.
    at = next(i for i, o in enumerate(cap.outs) if o is cap.f)
    rest = [o for i, o in enumerate(cap.outs) if i != at]
    V = closed.through(cap.f.detach().to(W.dtype), weight.detach()).to(cap.f.dtype)  # (K, B, d)
    offset = 0

    def cotangents(w: Tensor) -> Tensor:  # V's rows for the piece's columns, in order
        nonlocal offset
        v = V[offset : offset + w.shape[-1]]
        offset += w.shape[-1]
        return v

    for w, grads in _pieces_from(start, rest, W, max_bytes, cotangents):
        grads.insert(at, w.permute(2, 0, 1))
        yield w, grads


def _pieces_from(
    start: Tensor,
    outs: list[Tensor],
    W: Tensor,
    max_bytes: int | None,
    cotangents: Callable[[Tensor], Tensor],
) -> Iterator[Piece]:
    """Back-propagate cotangents(w) from `start` for the column pieces w of W."""
    if not outs:
        yield W, []
        return
    if backward_batches(start):
        k = columns_per_pass(W.shape[-1], outs, max_bytes)
        for w in W.split(k, dim=2):
            yield w, output_jacobians(start, outs, cotangents(w).contiguous())
        return
    for w in W.split(1, dim=2):
        yield w, output_jacobian_direction(start, outs, cotangents(w)[0])
