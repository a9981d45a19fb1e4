"""A stride-1 Conv2d's K-FAC input factor Σ_{b,t} a aᵀ without its im2col patches.

The patches a (B, T, C·kh·kw) repeat every input pixel kh·kw times, and their Gram costs
(C·kh·kw)² / 2 products per output position. Entry [(c, i, j), (c', i', j')] of the Gram is a
correlation of channels c and c' at the offset ((i' − i)·dh, (j' − j)·dw): with stride 1 only
(2kh − 1)(2kw − 1) offsets exist (25 for 3 × 3, against 40.5 patch pairs), and a convolution's
weight gradient computes all of them at once (`torch.nn.grad.conv2d_weight` of the input with
itself), without the patches.

What the offsets leave out is the border: kernel row i sees input rows [i·dh − pad_top,
i·dh − pad_top + H_out) only, so a pair's sum runs over its own rectangle of positions. The
image is cut into blocks at every such rectangle's edges (3 × 3 blocks for a 3 × 3 'same'
convolution: the corners, the four edge strips, the interior); each block's correlations are
one weight-gradient call, and a kernel position (i, j) sums the blocks inside its rectangle.
Exact (the same sums in another order: ≤ 1e-15 relative in float64 against the patches).

Measured on this project's 2-core machine, one thread, float32, 128 images, 3 × 3 'same', the
Gram of the (already built) patches against this: 16 channels at 28 × 28 39.6 → 28.3 ms, at
32 × 32 52.7 → 34.2 ms, 8 channels at 28 × 28 15.0 → 10.9 ms; but 16 channels at 16 × 16
13.3 → 13.8 ms, one channel at 28 × 28 0.8 → 7.2 ms: each block is a call with a fixed cost and
all (2kh − 1)(2kw − 1) offsets, so the route is taken from `MIN_CHANNELS` input channels and
`MIN_POSITIONS` output positions up.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MIN_CHANNELS", "MIN_POSITIONS", "conv_input_gram", "input_gram_route"]

#: Output positions (H_out · W_out) and input channels from which the correlations beat the
#: patches' Gram (see the module docstring).
MIN_POSITIONS = 576
MIN_CHANNELS = 8


def input_gram_route(module: nn.Module, x: Tensor) -> Callable[[torch.dtype], Tensor] | None:
    """dtype ↦ Σ_{b,t} a aᵀ (d_in, d_in) of `module`'s input `x` (B, C, H, W) in that dtype, where
    the correlations apply and pay (a stride-1, ungrouped, zero-padded Conv2d with a kernel
    wider than 1 × 1, at least `MIN_CHANNELS` input channels and `MIN_POSITIONS` output
    positions); None elsewhere."""
    if type(module) is not nn.Conv2d or x.dim() != 4:
        return None
    if module.stride != (1, 1) or module.groups != 1 or module.padding_mode != "zeros":
        return None
    (kh, kw), (dh, dw) = module.kernel_size, module.dilation
    left, right, top, bottom = module._reversed_padding_repeated_twice
    h_out = x.shape[2] + top + bottom - dh * (kh - 1)
    w_out = x.shape[3] + left + right - dw * (kw - 1)
    if kh * kw == 1 or x.shape[1] < MIN_CHANNELS or h_out * w_out < MIN_POSITIONS:
        return None
    data = x.detach()
    return lambda dtype: conv_input_gram(module, data.to(dtype))


def conv_input_gram(module: nn.Conv2d, x: Tensor) -> Tensor:
    """Σ_{b,t} a aᵀ of the stride-1 Conv2d `module`'s patches a of `x` (B, C, H, W), entries
    ordered (c, i, j) as `F.unfold`'s; symmetric. See the module docstring."""
    (kh, kw), (dh, dw) = module.kernel_size, module.dilation
    left, right, top, bottom = module._reversed_padding_repeated_twice
    _, ch, h, w = x.shape
    rows, row_of = _blocks(kh, dh, top, h, h + top + bottom - dh * (kh - 1))
    cols, col_of = _blocks(kw, dw, left, w, w + left + right - dw * (kw - 1))
    reach_h, reach_w = (kh - 1) * dh, (kw - 1) * dw
    padded = F.pad(x, (reach_w, reach_w, reach_h, reach_h))
    window = (ch, ch, 2 * kh - 1, 2 * kw - 1)
    # corr[r, c][x, y, u, v]: Σ over block (r, c) of x[ch x at p] · x[ch y at p + offset (u, v)],
    # offsets (u − (kh − 1))·dh and (v − (kw − 1))·dw.
    corr = torch.stack(
        [
            torch.stack(
                [
                    torch.nn.grad.conv2d_weight(
                        padded[:, :, r0 : r1 + 2 * reach_h, c0 : c1 + 2 * reach_w],
                        window,
                        x[:, :, r0:r1, c0:c1],
                        dilation=(dh, dw),
                    )
                    for c0, c1 in cols
                ]
            )
            for r0, r1 in rows
        ]
    )
    # Kernel position (i, j) sums the blocks inside its rectangle of positions.
    per_position = torch.einsum("ir,jc,rcxyuv->ijxyuv", row_of.to(x), col_of.to(x), corr)
    i = torch.arange(kh, device=x.device).view(-1, 1, 1, 1)
    j = torch.arange(kw, device=x.device).view(1, -1, 1, 1)
    i2, j2 = i.view(1, 1, -1, 1), j.view(1, 1, 1, -1)
    # (kh, kw, kh, kw, C, C): the pair ((i, j), (i', j')) reads offset (i' − i, j' − j).
    pairs = per_position.permute(0, 1, 4, 5, 2, 3)[i, j, i2 - i + kh - 1, j2 - j + kw - 1]
    gram = pairs.permute(4, 0, 1, 5, 2, 3).reshape(ch * kh * kw, ch * kh * kw)
    return (gram + gram.T) / 2


def _blocks(k: int, dilation: int, pad_before: int, n_in: int, n_out: int):
    """The blocks [start, stop) one spatial axis is cut into, and which lie inside each kernel
    position's range of input positions [k·dilation − pad_before, … + n_out) ∩ [0, n_in)
    (k, n_blocks) as 0/1."""
    ranges = [
        (
            min(max(i * dilation - pad_before, 0), n_in),
            min(max(i * dilation - pad_before + n_out, 0), n_in),
        )
        for i in range(k)
    ]
    cuts = sorted({0, n_in, *(p for r in ranges for p in r)})
    blocks = list(zip(cuts[:-1], cuts[1:]))
    inside = torch.tensor(
        [[float(lo <= b0 and b1 <= hi) for b0, b1 in blocks] for lo, hi in ranges]
    )
    return blocks, inside
