"""Diagonal posterior: Λ = s·diag(h) + diag(δ), with h the exact diagonal of the GGN / EF."""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.core.enums import Structure
from laplace_cli.core.errors import BadInputError, NumericalError
from laplace_cli.posterior.base import Posterior, expand_prior, fv_dense_diag, scale_curvature
from laplace_cli.posterior.feature_variance import FeatureVarianceForm, head_shape
from laplace_cli.subsets.base import DenseFactor, Factor


def factor_diag(W: Tensor, fac: Factor) -> Tensor:
    """Diagonal of Σ_b Σ_k (J_bᵀ W_bk)² for one parameter tensor, flattened (numel,).

    For a weight with T = 1 the per-sample gradient g ⊗ a is never formed:
    Σ_{b,k} g_bk² ⊗ a_b² (einsum). With weight sharing (T > 1) the per-sample gradients
    Σ_t g_t ⊗ a_t are formed one layer at a time, (B, K, d_out, d_in).
    """
    if isinstance(fac, DenseFactor):
        m = fac.J if W is None else torch.einsum("bck,bcp->bkp", W, fac.J)
        return (m**2).sum((0, 1))
    g = fac.G if W is None else torch.einsum("bcto,bck->bkto", fac.G, W)  # (B, K, T, d_out)
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
    """Λ = s·diag(h) + c + diag(δ).

    h is kept per output, (C, P), when `split_by_output` was called (regression with one noise
    level per output: Λ = Σ_k s_k·diag(h_k) + ...); c (P,) is the fixed curvature part s'·h'
    of a posterior used as prior (zero otherwise).
    """

    structure = Structure.DIAG
    keeps_prior_copy = False
    accepts_dense_jacobian = True  # `_diag` and `functional_variance` take J

    def __init__(self, groups, dtype, device) -> None:
        super().__init__(groups, dtype, device)
        self.prior_curvature: Tensor | None = None
        self.reset()

    def reset(self) -> None:
        shape = (
            (self.n_params,) if self.split_outputs is None else (self.split_outputs, self.n_params)
        )
        self.h = torch.zeros(shape, dtype=self.dtype, device=self.device)

    def split_by_output(self, n_outputs: int) -> None:
        self.split_outputs = int(n_outputs)
        self.reset()

    def accumulate(self, W, factors, J) -> None:
        if self.split_outputs is not None:
            # Column k of W is the square root of output k's Hessian (W = I for regression).
            for k in range(W.shape[-1]):
                self.h[k] += self._diag(W[:, :, k : k + 1], factors, J)
            return
        self.h += self._diag(W, factors, J)

    def accumulate_directions(self, directions) -> None:
        if self.split_outputs is not None:
            raise NotImplementedError("per-output curvature takes `accumulate` with its root")
        for factors in directions:
            self.h += self._diag(None, factors, None)

    @staticmethod
    def _diag(W: Tensor, factors, J) -> Tensor:
        if J is not None:
            m = torch.einsum("bck,bcp->bkp", W, J)
            return (m**2).sum((0, 1))
        return torch.cat([factor_diag(W, fac) for fac in factors])

    def scaled_curvature(self, scale: Tensor) -> Tensor:
        """s·h (+ c), the data part of the precision without δ, (P,)."""
        out = scale_curvature(self.h, scale, self.split_outputs)
        if self.prior_curvature is not None:
            out = out + self.prior_curvature
        return out

    def _fold_prior(self, other, scale_other, scale_now) -> None:
        self.prior_curvature = other.scaled_curvature(scale_other).detach().clone()

    def prior_log_det(self, prior: Tensor) -> Tensor:
        # P₀ = c + diag(δ) is known from c alone (also after loading from a file).
        if self.prior_curvature is None:
            return super().prior_log_det(prior)
        return torch.log(self.prior_curvature + expand_prior(prior, self.groups)).sum()

    def prior_quad_form(self, v: Tensor, prior: Tensor) -> Tensor:
        if self.prior_curvature is None:
            return super().prior_quad_form(v, prior)
        return ((self.prior_curvature + expand_prior(prior, self.groups)) * v * v).sum()

    def add_curvature(self, h: Tensor) -> None:
        """Add a diagonal curvature (P,) computed elsewhere (the exact Hessian's diagonal)."""
        self.h += h.to(dtype=self.dtype, device=self.device)

    def _checked_precision(self, prior: Tensor, scale: Tensor) -> Tensor:
        """Λ's diagonal for log det, inverse and square root: an indefinite curvature (exact
        Hessian) can make entries ≤ 0, where those are undefined."""
        p = self.precision(prior, scale)
        if not self.psd_curvature:
            bad = int((p <= 0).sum())
            if bad:
                raise NumericalError(
                    f"the posterior precision s·h + δ has {bad} entries ≤ 0 (the exact Hessian "
                    "is indefinite there); raise the prior precision or use curvature 'ggn'"
                )
        return p

    def curvature_dense(self) -> Tensor:
        h = self.h if self.split_outputs is None else self.h.sum(0)
        return torch.diag(h)

    def precision(self, prior: Tensor, scale: Tensor) -> Tensor:
        return self.scaled_curvature(scale) + expand_prior(prior, self.groups)

    def log_det(self, prior, scale):
        return torch.log(self._checked_precision(prior, scale)).sum()

    def quad_form(self, v, prior, scale):
        return (self.precision(prior, scale) * v * v).sum()

    def dense_precision(self, prior, scale):
        return torch.diag(self.precision(prior, scale))

    def diag_precision(self, prior, scale):
        return self.precision(prior, scale)

    def dense_covariance(self, prior, scale):
        return torch.diag(1.0 / self._checked_precision(prior, scale))

    def functional_variance(self, prior, scale, factors=None, J=None):
        var = 1.0 / self._checked_precision(prior, scale)
        if J is not None:
            return fv_dense_diag(J, var)
        out, start = None, 0
        for g, fac in zip(self.groups, factors):
            part = factor_functional_variance(fac, var[start : start + g.numel])
            out = part if out is None else out + part
            start += g.numel
        return out

    def has_feature_variance(self) -> bool:
        return self.split_outputs is None and head_shape(self.groups) is not None

    def feature_form_state(self) -> list[Tensor]:
        return [self.h] if self.prior_curvature is None else [self.h, self.prior_curvature]

    def build_feature_form(self, prior: Tensor, scale: Tensor) -> FeatureVarianceForm:
        """M = the weight block's 1/Λ in its (C, d) shape, v = the bias block's 1/Λ."""
        n_out, d = self.groups[0].shape
        var = 1.0 / self._checked_precision(prior, scale)
        weights = var[: n_out * d].reshape(n_out, d)
        bias = var[n_out * d :] if len(self.groups) > 1 else None
        return FeatureVarianceForm(None, weights, bias)

    def sample(self, n, prior, scale, generator):
        eps = torch.randn(
            n, self.n_params, dtype=self.dtype, device=self.device, generator=generator
        )
        return eps / self._checked_precision(prior, scale).sqrt()

    def raw_state(self):
        return {"h": self.h}

    def load_raw_state(self, tensors):
        self.h = tensors["h"].to(dtype=self.dtype, device=self.device).clone()

    def state(self):
        key = "diag.curvature" if self.split_outputs is None else "diag.curvature_per_output"
        out = {key: self.h}
        if self.prior_curvature is not None:
            out["diag.prior_curvature"] = self.prior_curvature
        return out

    def load_state(self, tensors):
        if "diag.curvature_per_output" in tensors:
            h = tensors["diag.curvature_per_output"]
            if h.ndim != 2 or h.shape[1] != self.n_params:
                raise BadInputError(
                    f"diag.curvature_per_output: expected shape (C, {self.n_params}), "
                    f"got {tuple(h.shape)}"
                )
            self.split_outputs = int(h.shape[0])
        else:
            h = tensors["diag.curvature"]
            if h.shape != (self.n_params,):
                raise BadInputError(
                    f"diag.curvature: expected shape ({self.n_params},), got {tuple(h.shape)}"
                )
            self.split_outputs = None
        self.h = h.to(self.dtype).to(self.device)
        c = tensors.get("diag.prior_curvature")
        if c is not None:
            if c.shape != (self.n_params,):
                raise BadInputError(
                    f"diag.prior_curvature: expected shape ({self.n_params},), got {tuple(c.shape)}"
                )
            c = c.to(self.dtype).to(self.device)
        self.prior_curvature = c
