"""Products with the per-sample Jacobian J (B, C, P) computed from its layer factors.

For a Linear layer fed one vector per example (T = 1), the Jacobian of its weight is an outer
product per example, J_b[c, (o, i)] = G_b[c, o] a_b[i]. The dense-structure products then never
need J itself:

* the GGN Σ_b J_bᵀ W_b W_bᵀ J_b, block (g, h): Σ_b (M_gᵀ M_h)_b ⊗ a_g a_hᵀ with M = Wᵀ G,
  one (O_g·O_h × B)·(B × I_g·I_h) matrix product, B·P_g·P_h flops instead of B·K·P_g·P_h;
* J V for a (P, K) matrix V: Σ_o G[b, c, o] Σ_i a[b, i] V[(o, i), k], B·P·K + B·C·O·K flops
  instead of B·C·P·K.

Both save about a factor C (the number of outputs) over the dense products. Factors with a
weight-sharing dimension T > 1 (convolutions, sequences) are made dense first: for them the
dense product is the cheaper one. The choice is made per call from operation counts
(`FACTORED_OVERHEAD`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from laplace_cli.subsets.base import DenseFactor, Factor, dense_from_factors


def _outer_parts(fac: Factor) -> tuple[Tensor, Tensor] | None:
    """(G (B, C, O), a (B, I)) of a factor whose Jacobian is one outer product per example.

    A bias is a Linear weight with the constant input 1; None for dense or weight-shared factors.
    """
    if isinstance(fac, DenseFactor) or fac.G.shape[2] != 1:
        return None
    G = fac.G[:, :, 0]
    if fac.a is None:
        return G, torch.ones(G.shape[0], 1, dtype=G.dtype, device=G.device)
    if fac.a.shape[1] != 1:
        return None
    return G, fac.a[:, 0]


def _all_outer(factors: Sequence[Factor]) -> list[tuple[Tensor, Tensor]] | None:
    parts = [_outer_parts(f) for f in factors]
    return None if any(p is None for p in parts) else parts  # type: ignore[return-value]


def gram(W: Tensor, factors: Sequence[Factor]) -> Tensor:
    """Σ_b J_bᵀ W_b W_bᵀ J_b (P, P) for W (B, C, K), J given by its factors."""
    parts = _all_outer(factors)
    batch = W.shape[0]
    if parts is None or not _factored_gram_cheaper(parts, W.shape[2]):
        m = torch.einsum("bck,bcp->bkp", W, dense_from_factors(factors).to(W.dtype))
        m = m.reshape(-1, m.shape[-1])
        return m.T @ m
    Ms = [torch.einsum("bck,bco->bko", W, G.to(W.dtype)) for G, _ in parts]
    As = [a.to(W.dtype) for _, a in parts]
    sizes = [M.shape[2] * a.shape[1] for M, a in zip(Ms, As)]
    out = W.new_zeros(sum(sizes), sum(sizes))
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    for g in range(len(parts)):
        for h in range(g, len(parts)):
            (Mg, ag), (Mh, ah) = (Ms[g], As[g]), (Ms[h], As[h])
            mm = torch.einsum("bko,bkp->bop", Mg, Mh).reshape(batch, -1)
            aa = torch.einsum("bi,bj->bij", ag, ah).reshape(batch, -1)
            block = (mm.T @ aa).reshape(Mg.shape[2], Mh.shape[2], ag.shape[1], ah.shape[1])
            block = block.permute(0, 2, 1, 3).reshape(sizes[g], sizes[h])
            rows = slice(starts[g], starts[g] + sizes[g])
            cols = slice(starts[h], starts[h] + sizes[h])
            out[rows, cols] = block
            if h != g:
                out[cols, rows] = block.T
    return out


#: Measured on CPU (1 thread, float32): per flop, the block-wise products run about 3× slower
#: than the one large dense matrix product (small matrix products and the block permutes), so
#: the factored path is taken only when it needs less than 1 / FACTORED_OVERHEAD of the flops.
#: Regression with one output (diabetes MLP, P = 1,441): dense 18 ms, factored 31 ms per batch
#: of 128; ten classes (digits last layer, P = 650): dense 39 ms, factored 7.5 ms.
FACTORED_OVERHEAD = 3


def _factored_gram_cheaper(parts: list[tuple[Tensor, Tensor]], k: int) -> bool:
    n_params = sum(G.shape[2] * a.shape[1] for G, a in parts)
    dense_flops = k * n_params**2
    flops = 0  # per example
    for g, (Gg, ag) in enumerate(parts):
        for Gh, ah in parts[g:]:
            og, oh, ig, ih = Gg.shape[2], Gh.shape[2], ag.shape[1], ah.shape[1]
            flops += k * og * oh + ig * ih + og * oh * ig * ih
    return FACTORED_OVERHEAD * flops < dense_flops


def matmul(factors: Sequence[Factor], V: Tensor, max_elements: int | None = None) -> Tensor:
    """J V (B, C, K) for V (P, K), J given by its factors.

    The per-layer intermediate Σ_i a[b, i] V[(o, i), k] has B·O·K entries; columns of V are
    taken in chunks so that it stays within `max_elements` (default: the size of J).
    """
    parts = _all_outer(factors)
    if parts is None:
        return dense_from_factors(factors).to(V.dtype) @ V
    batch, n_out = parts[0][0].shape[:2]
    n_params, k = V.shape
    cap = max_elements if max_elements is not None else batch * n_out * n_params
    factored = n_params + sum(n_out * G.shape[2] for G, _ in parts)  # flops per (b, k)
    if FACTORED_OVERHEAD * factored >= n_out * n_params:
        return dense_from_factors(factors).to(V.dtype) @ V
    widest = max(G.shape[2] for G, _ in parts)
    step = max(1, min(k, cap // max(batch * widest, 1)))
    layers = _same_output_jacobian(parts)
    chunks = []
    for lo in range(0, k, step):
        cols = V[:, lo : lo + step]
        acc = None
        for G, a, rows in layers:
            o = G.shape[2]
            # V rows of the layer's parameters as (Σ i, o·k): weight (o, i) and bias (o, 1) rows
            # side by side, so one matrix product with [a, 1] serves both.
            block = torch.cat([cols[r].reshape(o, -1, cols.shape[1]) for r in rows], dim=1)
            z = (a.to(V.dtype) @ block.transpose(0, 1).reshape(a.shape[1], -1)).reshape(
                batch, o, -1
            )
            term = _apply_output_jacobian(G.to(V.dtype), z)
            acc = term if acc is None else acc + term
        chunks.append(acc)
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)


def _same_output_jacobian(
    parts: list[tuple[Tensor, Tensor]],
) -> list[tuple[Tensor, Tensor, list[slice]]]:
    """Merge consecutive factors that share G (a layer's weight and bias): (G, [a...], rows)."""
    out: list[tuple[Tensor, Tensor, list[slice]]] = []
    start = 0
    for G, a in parts:
        rows = slice(start, start + G.shape[2] * a.shape[1])
        start = rows.stop
        if out and _same_tensor(out[-1][0], G):
            G0, a0, rows0 = out[-1]
            out[-1] = (G0, torch.cat([a0, a.to(a0.dtype)], dim=1), [*rows0, rows])
        else:
            out.append((G, a, [rows]))
    return out


def _same_tensor(x: Tensor, y: Tensor) -> bool:
    return (
        x.data_ptr() == y.data_ptr()
        and x.shape == y.shape
        and x.stride() == y.stride()
        and x.dtype == y.dtype
    )


def _apply_output_jacobian(G: Tensor, z: Tensor) -> Tensor:
    """Σ_o G[b, c, o] z[b, o, k] (B, C, K).

    A G shared by all examples (stride 0 over the batch, as a last layer's G = I) is one matrix
    product, and the identity none at all.
    """
    if G.stride(0) == 0 or G.shape[0] == 1:
        G0 = G[0]
        if G0.shape[0] == G0.shape[1] and torch.equal(
            G0, torch.eye(G0.shape[0], dtype=G0.dtype, device=G0.device)
        ):
            return z
        return torch.matmul(G0, z)
    return torch.einsum("bco,bok->bck", G, z)


def kernel(
    factors1: Sequence[Factor], factors2: Sequence[Factor], independent: bool = False
) -> Tensor:
    """The neural tangent kernel block J₁ J₂ᵀ: (B₁, C, B₂, C), or its output diagonal (B₁, B₂, C).

    For outer-product factors, J_b[c, (o, i)] = G_b[c, o] a_b[i], so
    (J₁ J₂ᵀ)[b, c, b', c'] = Σ_layers (G₁[b, c] · G₂[b', c']) (a₁[b] · a₂[b']): B₁·B₂·C²·O flops
    per layer and no (B, C, P) Jacobian. Other factors (convolutions, dense groups) are made
    dense per call; callers bound B₁ and B₂ by their memory budget.
    """
    parts1, parts2 = _all_outer(factors1), _all_outer(factors2)
    if parts1 is None or parts2 is None:
        J1, J2 = (
            dense_from_factors(factors1),
            dense_from_factors(factors2).to(factors_dtype(factors1)),
        )
        if independent:
            return torch.einsum("acp,bcp->abc", J1, J2)
        return torch.einsum("acp,bdp->acbd", J1, J2)
    out: Tensor | None = None
    for (G1, a1, _), (G2, a2, _) in zip(
        _same_output_jacobian(parts1), _same_output_jacobian(parts2), strict=True
    ):
        aa = a1 @ a2.to(a1.dtype).T
        G2 = G2.to(G1.dtype)
        if independent:
            term = torch.einsum("aco,bco->abc", G1, G2) * aa[:, :, None]
        else:
            term = torch.einsum("aco,bdo->acbd", G1, G2) * aa[:, None, :, None]
        out = term if out is None else out + term
    assert out is not None
    return out


def kernel_diagonal(factors: Sequence[Factor], independent: bool = False) -> Tensor:
    """J_b J_bᵀ per example: (B, C, C), or its diagonal (B, C) (the prior variance at each input)."""
    parts = _all_outer(factors)
    if parts is None:
        J = dense_from_factors(factors)
        if independent:
            return (J * J).sum(-1)
        return torch.einsum("bcp,bdp->bcd", J, J)
    out: Tensor | None = None
    for G, a, _ in _same_output_jacobian(parts):
        aa = (a * a).sum(-1)
        if independent:
            term = (G * G).sum(-1) * aa[:, None]
        else:
            term = torch.einsum("bco,bdo->bcd", G, G) * aa[:, None, None]
        out = term if out is None else out + term
    assert out is not None
    return out


def factors_dtype(factors: Sequence[Factor]) -> torch.dtype:
    fac = factors[0]
    return fac.J.dtype if isinstance(fac, DenseFactor) else fac.G.dtype
