"""Memory bounds of the functional variance J Σ Jᵀ: bytes of Jacobian factors, row chunks.

`Laplace` (laplace/prediction.py) sizes its row chunks with these estimates so that the peak
memory of the structured (diag / kron) functional variance stays a small multiple of the batch's
own activations, and checks the joint covariance of a batch (`factors_as_one_sample`) against
its budget before forming it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from laplace_cli.subsets.base import DenseFactor, Factor, LayerFactor

__all__ = [
    "CHUNK_ACTIVATION_MULTIPLE",
    "CHUNK_FLOOR_BYTES",
    "factor_bytes",
    "factor_chunk_rows",
    "factors_as_one_sample",
    "joint_factor_bytes",
    "layer_input_bytes",
]


def _storage_bytes(tensors: Sequence[Tensor]) -> int:
    """Bytes held by `tensors`, each storage counted once.

    A tensor holds the smaller of its storage and its own elements: an expanded view (stride 0,
    e.g. the last-layer identity G) only holds its storage, a slice of a larger tensor (e.g. a
    row of the caller's input batch) only its elements.
    """
    held: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        own = min(storage.nbytes(), t.numel() * t.element_size())
        held[storage.data_ptr()] = max(held.get(storage.data_ptr(), 0), own)
    return sum(held.values())


def factor_bytes(factors: Sequence[Factor]) -> int:
    """Peak bytes of `posterior.functional_variance` on these factors (an upper estimate).

    The factors themselves are held for all layers at once: inputs a (B, T, d_in), output
    Jacobians G (B, C, T, d_out), dense pieces (B, C, numel). On top, one layer at a time, a
    layer with weight sharing (T > 1) forms its per-sample Jacobian (B, C, d_out, d_in) and two
    temporaries of that size (kron: projected and scaled; diag: weighted); T = 1 layers and biases
    only need (B, C, d_out)-sized temporaries, already covered by the held G.
    """
    held: list[Tensor] = []
    peak = 0
    for fac in factors:
        if isinstance(fac, DenseFactor):
            held.append(fac.J)
            peak = max(peak, 2 * fac.J.numel() * fac.J.element_size())
            continue
        held.append(fac.G)
        if fac.a is not None:
            held.append(fac.a)
            batch, n_out, n_pos, d_out = fac.G.shape
            if n_pos > 1:
                per_layer = batch * n_out * d_out * fac.a.shape[-1] * fac.G.element_size()
                peak = max(peak, 3 * per_layer)
    return _storage_bytes(held) + peak


def layer_input_bytes(factors: Sequence[Factor]) -> int:
    """Bytes of the layer inputs a among the factors: the batch's activations, as the layers see
    them (Conv2d inputs unfolded into patches)."""
    return _storage_bytes([f.a for f in factors if isinstance(f, LayerFactor) and f.a is not None])


#: Row chunks of the structured functional variance hold at most this multiple of the batch's
#: own activations (`layer_input_bytes`) in factors and intermediates ...
CHUNK_ACTIVATION_MULTIPLE = 2
#: ... or this many bytes, whichever is larger (tiny models are not cut into tiny chunks).
CHUNK_FLOOR_BYTES = 256 * 1024


def factor_chunk_rows(
    n_rows: int, bytes_per_row: int, input_bytes_per_row: int, budget: int, floor_scale: int = 1
) -> int:
    """Rows per chunk of the structured (diag / kron) functional variance, ≥ 1.

    The factors hold, per row, C output Jacobians for every layer output, so one batch of
    factors is about C × its activations. Chunking the rows keeps the working set within
    max(CHUNK_ACTIVATION_MULTIPLE × the activations of the whole batch, CHUNK_FLOOR_BYTES), and
    always within `budget` (`max_memory // 4`): peak memory then stays a small multiple of what
    running the model on the batch costs, whatever the number of classes.

    Args:
        n_rows: rows in the batch being predicted.
        bytes_per_row: `factor_bytes` of one row.
        input_bytes_per_row: `layer_input_bytes` of one row.
        budget: hard cap in bytes.
        floor_scale: multiplies the floor: the M = C·|S| outputs of dense outputs (B, C, *S),
            whose per-row factors grow with |S| while every chunk costs M backward passes
            whatever its rows; a larger floor amortises them over more rows (still within
            `budget`).
    """
    target = max(
        CHUNK_ACTIVATION_MULTIPLE * n_rows * input_bytes_per_row, CHUNK_FLOOR_BYTES * floor_scale
    )
    return max(1, min(target, budget) // max(bytes_per_row, 1))


def factors_as_one_sample(factors: Sequence[Factor]) -> list[Factor]:
    """Rewrite the factors of a batch of B inputs as those of one input with B·C outputs.

    The joint covariance over a batch, Cov[f(x_b)_c, f(x_b')_d] = J_bc Σ J_b'dᵀ, is the
    functional variance of a single "sample" whose outputs are all (b, c) pairs, so every
    structure computes it with its own `functional_variance`. For a layer, output (b, c) sees the
    positions (b', t) with G'[(b, c), (b', t)] = δ_bb' G[b, c, t] and inputs a'[(b', t)] = a[b', t]
    (shapes (1, B·C, B·T, d_out) and (1, B·T, d_in)); dense pieces are reshaped to (1, B·C, n).
    """
    out: list[Factor] = []
    stacked: dict[int, Tensor] = {}  # a weight and its bias share G: build G' once
    for fac in factors:
        if isinstance(fac, DenseFactor):
            batch, n_out, n = fac.J.shape
            out.append(DenseFactor(fac.J.reshape(1, batch * n_out, n)))
            continue
        batch, n_out, n_pos, d_out = fac.G.shape
        G = stacked.get(id(fac.G))
        if G is None:
            G = fac.G.new_zeros(batch, n_out, batch, n_pos, d_out)
            rows = torch.arange(batch, device=G.device)
            G[rows, :, rows] = fac.G  # block diagonal in (b, b')
            G = stacked[id(fac.G)] = G.reshape(1, batch * n_out, batch * n_pos, d_out)
        a = None if fac.a is None else fac.a.reshape(1, batch * n_pos, fac.a.shape[-1])
        out.append(LayerFactor(a, G))
    return out


def joint_factor_bytes(factors: Sequence[Factor]) -> int:
    """Peak bytes of the joint covariance through `factors_as_one_sample` (an upper estimate)."""
    total, peak = 0, 0
    seen: set[int] = set()
    for fac in factors:
        if isinstance(fac, DenseFactor):
            total += fac.J.numel() * fac.J.element_size()
            continue
        batch, n_out, n_pos, d_out = fac.G.shape
        item = fac.G.element_size()
        if id(fac.G) not in seen:
            seen.add(id(fac.G))
            total += batch * batch * n_out * n_pos * d_out * item  # the block-diagonal G'
        if fac.a is not None:
            peak = max(peak, 3 * batch * n_out * d_out * fac.a.shape[-1] * item)
    return total + peak
