"""Diagonal posterior: Λ = s·diag(h) + diag(δ), with h the exact diagonal of the GGN / EF."""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.enums import Structure
from laplace_cli.errors import BadInputError
from laplace_cli.posterior.base import Posterior, expand_prior, fv_dense_diag
from laplace_cli.subsets import DenseFactor, Factor


def factor_diag(W: Tensor, fac: Factor) -> Tensor:
    """Diagonal of Σ_b Σ_k (J_bᵀ W_bk)² for one parameter tensor, flattened (numel,).

    For a weight with T = 1 the per-sample gradient g ⊗ a is never formed:
    Σ_{b,k} g_bk² ⊗ a_b² (einsum). With weight sharing (T > 1) the per-sample gradients
    Σ_t g_t ⊗ a_t are formed one layer at a time, (B, K, d_out, d_in).
    """
    if isinstance(fac, DenseFactor):
        m = torch.einsum("bck,bcp->bkp", W, fac.J)
        return (m**2).sum((0, 1))
    g = torch.einsum("bcto,bck->bkto", fac.G, W)  # (B, K, T, d_out)
    if fac.a is None:
        return (g.sum(2) ** 2).sum((0, 1))
    if fac.a.shape[1] == 1:
        return torch.einsum("bko,bi->oi", g[:, :, 0] ** 2, fac.a[:, 0] ** 2).reshape(-1)
    per_sample = torch.einsum("bkto,bti->bkoi", g, fac.a)
    return (per_sample**2).sum((0, 1)).reshape(-1)


def factor_functional_variance(fac: Factor, variances: Tensor) -> Tensor:
    """J Σ Jᵀ (B, C, C) of one parameter tensor under a diagonal covariance `variances` (numel,)."""
    if isinstance(fac, DenseFactor):
        return fv_dense_diag(fac.J, variances)
    if fac.a is None:
        g = fac.G.sum(2)  # (B, C, d_out)
        return torch.einsum("bco,bdo->bcd", g * variances, g)
    d_out = fac.G.shape[-1]
    v = variances.reshape(d_out, -1)  # (d_out, d_in)
    if fac.a.shape[1] == 1:
        # Σ_{o,i} G_co G_do a_i² v_oi = Σ_o G_co G_do w_o with w = v a².
        w = torch.einsum("bi,oi->bo", fac.a[:, 0] ** 2, v)
        g = fac.G[:, :, 0]
        return torch.einsum("bco,bdo->bcd", g * w.unsqueeze(1), g)
    jw = torch.einsum("bcto,bti->bcoi", fac.G, fac.a)
    return torch.einsum("bcoi,bdoi->bcd", jw * v, jw)


class DiagPosterior(Posterior):
    structure = Structure.DIAG

    def __init__(self, groups, dtype, device) -> None:
        super().__init__(groups, dtype, device)
        self.reset()

    def reset(self) -> None:
        self.h = torch.zeros(self.n_params, dtype=self.dtype, device=self.device)

    def accumulate(self, W, factors, J) -> None:
        if J is not None:
            m = torch.einsum("bck,bcp->bkp", W, J)
            self.h += (m**2).sum((0, 1))
            return
        self.h += torch.cat([factor_diag(W, fac) for fac in factors])

    def precision(self, prior: Tensor, scale: Tensor) -> Tensor:
        return scale * self.h + expand_prior(prior, self.groups)

    def log_det(self, prior, scale):
        return torch.log(self.precision(prior, scale)).sum()

    def dense_precision(self, prior, scale):
        return torch.diag(self.precision(prior, scale))

    def diag_precision(self, prior, scale):
        return self.precision(prior, scale)

    def dense_covariance(self, prior, scale):
        return torch.diag(1.0 / self.precision(prior, scale))

    def functional_variance(self, prior, scale, factors=None, J=None):
        var = 1.0 / self.precision(prior, scale)
        if J is not None:
            return fv_dense_diag(J, var)
        out, start = None, 0
        for g, fac in zip(self.groups, factors):
            part = factor_functional_variance(fac, var[start : start + g.numel])
            out = part if out is None else out + part
            start += g.numel
        return out

    def sample(self, n, prior, scale, generator):
        eps = torch.randn(
            n, self.n_params, dtype=self.dtype, device=self.device, generator=generator
        )
        return eps / self.precision(prior, scale).sqrt()

    def state(self):
        return {"diag.curvature": self.h}

    def load_state(self, tensors):
        h = tensors["diag.curvature"]
        if h.shape != (self.n_params,):
            raise BadInputError(
                f"diag.curvature: expected shape ({self.n_params},), got {tuple(h.shape)}"
            )
        self.h = h.to(self.dtype).to(self.device)
