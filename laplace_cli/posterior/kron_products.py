"""Products of K-FAC blocks with Jacobian factors (posterior/kron.py).

Fitting needs the output factor B = Σ g gᵀ of the back-propagated output gradients
(`output_gram`); prediction needs J Σ Jᵀ of one block from its eigenpairs and a factor, never the
per-sample weight Jacobian where the factor's structure lets it be avoided
(`kron_functional_variance`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.subsets.base import DenseFactor, Factor, LayerFactor

#: Below these sizes the full product is as fast as the triangle (measured on this project's
#: 2-core CPU: (1568 × 128) rows were 2.5× slower in bands, (144 × 25088) 22 % faster).
SYMMETRIC_MIN_DIM = 128
SYMMETRIC_MIN_ROWS_PER_DIM = 4


def add_gram_(out: Tensor, rows: Tensor, alpha: float = 1.0) -> Tensor:
    """out += alpha · rows rowsᵀ for rows (d, n), out symmetric (d, d), in place.

    A Gram is symmetric, so for long products (n ≥ 4d, d ≥ 128) only the bands on and above the
    diagonal are multiplied and the strictly lower triangle is mirrored: (k + 1) / 2k of the
    flops for k bands (one-third less time for the K-FAC input factors of ResNet-20's convs,
    (576 × 6272) rows: 44.6 → 30.2 ms; the output factor of a 1024-wide layer at C = 1000).
    `out` must be symmetric on entry (a running sum of Grams).
    """
    d, n = rows.shape
    if d < SYMMETRIC_MIN_DIM or n < SYMMETRIC_MIN_ROWS_PER_DIM * d:
        return out.addmm_(rows, rows.T, alpha=alpha)
    band = 128 if d >= 512 else 64
    for i in range(0, d, band):
        out[i : i + band, i:].addmm_(rows[i : i + band], rows[i:].T, alpha=alpha)
    out.triu_()
    return out.add_(out.triu(1).T)


def output_gram(G: Tensor, W: Tensor | None, reduce: bool) -> Tensor:
    """Σ_{b,k,t} g gᵀ (d_out, d_out) of the projected output Jacobians g = Wᵀ G.

    G (B, C, T, d_out); W (B, C, K), or None when G is already projected
    (`AllWeights.factor_directions`). `reduce`: sum over the weight-sharing dimension T first
    (K-FAC "reduce"), else T counts as extra data ("expand").
    """
    g = G if W is None else torch.einsum("bcto,bck->bkto", G, W)  # (B, K, T, d_out)
    if reduce:
        g = g.sum(2)
    elif W is None and g.shape[2] > 1:
        # Conv output gradients arrive as a permuted view of (K, B, d_out, T) memory: batched
        # products over that layout read it once, where a flat (B·K·T, d_out) matrix would
        # first copy all of it.
        native = g.permute(1, 0, 3, 2)
        if native.is_contiguous():
            flat = native.reshape(-1, g.shape[3], g.shape[2])
            return torch.matmul(flat, flat.mT).sum(0)
    elif W is None and g.shape[2] == 1 and g.transpose(0, 1).is_contiguous():
        # Dense-layer output gradients come as (K, B, d_out) memory: the Gram is a sum over
        # rows in any order, so read them in that order (flattening (B, K, ...) would copy
        # B·K·d_out entries first; 0.8 s per batch for a 1024-wide layer at C = 1000).
        g = g.transpose(0, 1)
    g = g.reshape(-1, g.shape[-1])
    return add_gram_(g.new_zeros(g.shape[-1], g.shape[-1]), g.T)


def add_input_factor_(A_sum: Tensor, fac: LayerFactor, reduce: bool) -> None:
    """A_sum += one batch's K-FAC input factor: Σ_b (1/T) Σ_t a aᵀ ("expand"), or Σ_b ā āᵀ of
    the inputs averaged over T ("reduce"). The product goes straight into the sum (no
    (d_in, d_in) temporaries); a stride-1 conv's comes from `LayerFactor.input_gram` without its
    patches (which are then never built)."""
    if reduce:
        add_gram_(A_sum, fac.a.mean(1).T)
        return
    if fac.input_gram is not None:
        A_sum.add_(fac.input_gram(A_sum.dtype), alpha=1.0 / fac.G.shape[2])
        return
    a = fac.a
    if a.permute(2, 0, 1).is_contiguous():
        rows = a.permute(2, 0, 1).reshape(a.shape[-1], -1)  # conv_patches' layout
        add_gram_(A_sum, rows, alpha=1.0 / a.shape[1])
    else:
        add_gram_(A_sum, a.reshape(-1, a.shape[-1]).T, alpha=1.0 / a.shape[1])


def kron_functional_variance(
    eigs: dict[str, Tensor], kind: str, fac: Factor, lam: Tensor
) -> Tensor:
    """J Σ Jᵀ (B, C, C) of one K-FAC block ("kron" weight or "kron_bias") with eigenpairs
    `eigs` and posterior-precision eigenvalues `lam` ((d_out, d_in) or (d_out,))."""
    QB = eigs["B.eigvecs"]
    # Output Jacobians shared by every row (a last layer's G = I, expanded): rotated once.
    shared_G = isinstance(fac, LayerFactor) and fac.G.shape[0] > 1 and fac.G.stride(0) == 0
    if kind == "kron_bias":
        if shared_G:
            u0 = fac.G[0].sum(1) @ QB  # (C, d_out)
            return ((u0 / lam) @ u0.T).expand(fac.G.shape[0], -1, -1)
        gb = fac.J if isinstance(fac, DenseFactor) else fac.G.sum(2)
        u = gb @ QB  # (B, C, d_out)
        return torch.einsum("bco,bdo->bcd", u / lam, u)
    QA = eigs["A.eigvecs"]
    if isinstance(fac, DenseFactor):
        jw = fac.J.reshape(*fac.J.shape[:2], *lam.shape)
        p = torch.einsum("bcoi,ox,iy->bcxy", jw, QB, QA)
        return torch.einsum("bcxy,bdxy->bcd", p / lam, p)
    if fac.a.shape[1] == 1:
        # Rank one per sample: P_c = (Q_Bᵀ g_c)(Q_Aᵀ a)ᵀ, so J Σ Jᵀ = Σ_x u_cx u_dx w_x with
        # w_x = Σ_y s_y² / λ_xy; cost B·C·d_out, never B·C·d_out·d_in.
        s = fac.a[:, 0] @ QA  # (B, d_in)
        w = (s**2) @ (1.0 / lam).T  # (B, d_out)
        if shared_G:
            u0 = fac.G[0, :, 0] @ QB  # (C, d_out)
            return (u0 * w.unsqueeze(1)) @ u0.T
        u = fac.G[:, :, 0] @ QB  # (B, C, d_out)
        return torch.einsum("bcx,bdx->bcd", u * w.unsqueeze(1), u)
    u = fac.G @ QB  # (B, C, T, d_out)
    s = fac.a @ QA  # (B, T, d_in)
    p = torch.einsum("bctx,bty->bcxy", u, s)
    return torch.einsum("bcxy,bdxy->bcd", p / lam, p)


def _rotated_outputs(G: Tensor, QB: Tensor) -> Tensor:
    """G Q_B for output Jacobians G (B, C, d_out): (1, C, d_out) where every row shares G (a
    stride-0 expansion, or one row), with no product at all where that G is the identity (the
    layer whose output is f: at C = 1000 its rotation was C³ flops per row)."""
    if G.shape[0] == 1 or G.stride(0) == 0:
        g0 = G[0]
        if g0.shape[0] == g0.shape[1] and torch.equal(
            g0, torch.eye(len(g0), dtype=g0.dtype, device=g0.device)
        ):
            return QB.unsqueeze(0)
        return (g0 @ QB).unsqueeze(0)
    return G @ QB


def kron_functional_variance_diag(
    eigs: dict[str, Tensor], kind: str, fac: Factor, lam: Tensor
) -> Tensor:
    """The diagonal (B, C) of `kron_functional_variance`, never forming the (C, C) products:
    B·C·d_out per layer where the full matrix costs B·C²·d_out (a probit prediction needs only
    the diagonal)."""
    QB = eigs["B.eigvecs"]
    if kind == "kron_bias":
        if isinstance(fac, DenseFactor):
            gb = fac.J
        elif fac.G.stride(0) == 0:  # shared by every row: summing row 0 keeps it shared
            gb = fac.G[:1].sum(2).expand(fac.G.shape[0], -1, -1)
        else:
            gb = fac.G.sum(2)
        u = _rotated_outputs(gb, QB)  # (B or 1, C, d_out)
        return ((u**2) @ (1.0 / lam)).expand(gb.shape[0], -1)
    QA = eigs["A.eigvecs"]
    if isinstance(fac, DenseFactor):
        jw = fac.J.reshape(*fac.J.shape[:2], *lam.shape)
        p = torch.einsum("bcoi,ox,iy->bcxy", jw, QB, QA)
        return (p**2 / lam).sum((-2, -1))
    if fac.a.shape[1] == 1:
        s = fac.a[:, 0] @ QA  # (B, d_in)
        w = (s**2) @ (1.0 / lam).T  # (B, d_out)
        u = _rotated_outputs(fac.G[:, :, 0], QB)
        if u.shape[0] == 1:
            return w @ (u[0] ** 2).T
        return torch.einsum("bcx,bx->bc", u**2, w)
    u = fac.G @ QB  # (B, C, T, d_out)
    s = fac.a @ QA  # (B, T, d_in)
    p = torch.einsum("bctx,bty->bcxy", u, s)
    return (p**2 / lam).sum((-2, -1))
