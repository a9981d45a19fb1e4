"""Low-rank posterior: the top-k eigenpairs of the curvature plus the diagonal prior.

    Λ = s·U diag(λ) Uᵀ + diag(δ),   U (P, k) orthonormal, λ (k,) ≥ 0, δ scalar, (G,) or (P,)

The eigenpairs are found matrix-free: the curvature is only ever applied to blocks of vectors,
H V = Σ_n J_nᵀ W_n W_nᵀ J_n V, with per-batch Jacobian-vector products (`torch.func.jvp`) and
vector-Jacobian products (`torch.func.vjp`) over the data loader (`ggn_matmat`); neither the
(P, P) matrix nor a dense Jacobian is formed. The eigensolver is a randomized block Krylov
method — block Lanczos with full reorthogonalisation and a final Rayleigh-Ritz step
(Musco & Musco 2015; Halko, Martinsson & Tropp 2011) — that needs `n_iter + 1` passes over the
data for a block of k + `oversample` vectors. With k = P the first block spans everything and
the result equals the full GGN.

With V = U diag(√λ), D = diag(δ) and the k×k capacitance M = I + s·Vᵀ D⁻¹ V:
* log det Λ = Σ log δ + log det M (matrix determinant lemma);
* Λ⁻¹ = D⁻¹ − s·D⁻¹ V M⁻¹ Vᵀ D⁻¹ (Woodbury), so J Λ⁻¹ Jᵀ costs O(B·C·P·k);
* samples z = D^{-1/2} (I + W̃ W̃ᵀ)^{-1/2} ε with W̃ = √s·D^{-1/2} V = Q S Rᵀ (thin SVD) and
  (I + Q S² Qᵀ)^{-1/2} = I + Q ((1 + S²)^{-1/2} − 1) Qᵀ.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from laplace_cli.core.enums import Structure
from laplace_cli.core.errors import BadInputError
from laplace_cli.posterior.base import Posterior, expand_prior

DEFAULT_RANK = 100
DEFAULT_OVERSAMPLE = 10
DEFAULT_N_ITER = 4

MatMat = Callable[[Tensor], Tensor]


def krylov_basis_size(n_params: int, rank: int, oversample: int, n_iter: int) -> int:
    """Columns of the block Krylov basis: (k + oversample)·(n_iter + 1), at most P."""
    return min(n_params, (rank + oversample) * (n_iter + 1))


def _orthonormal_block(Z: Tensor, tol: float, max_cols: int) -> Tensor:
    """An orthonormal basis of the columns of Z whose singular values exceed `tol`."""
    if Z.shape[1] == 0 or max_cols <= 0:
        return Z[:, :0]
    Q, S, _ = torch.linalg.svd(Z, full_matrices=False)
    keep = int((S > tol).sum())
    return Q[:, : min(keep, max_cols)]


def top_eigenpairs(
    matmat: MatMat,
    n: int,
    k: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None = None,
    oversample: int = DEFAULT_OVERSAMPLE,
    n_iter: int = DEFAULT_N_ITER,
) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs (λ descending, U (n, k)) of a symmetric PSD operator given by `matmat`.

    Randomized block Lanczos: Q₀ = orth(Ω), Ω (n, k + oversample) Gaussian; Q_{j+1} = orth of
    H Q_j against all earlier blocks (Gram-Schmidt twice: full reorthogonalisation); stop after
    `n_iter` new blocks, when the basis spans n dimensions, or when the Krylov space is
    exhausted (H has low rank). Every block is multiplied by H once (`n_iter + 1` calls), and
    the Ritz pairs of T = Qᵀ (H Q) give the result. Fewer than k pairs come back when the basis
    has fewer than k dimensions (then H has rank < k and the rest of its spectrum is 0).
    """
    m = min(n, k + oversample)
    omega = torch.randn(n, m, dtype=dtype, device=device, generator=generator)
    block = torch.linalg.qr(omega).Q
    basis: list[Tensor] = []
    images: list[Tensor] = []
    scale = None
    while True:
        basis.append(block)
        images.append(matmat(block))
        dim = sum(b.shape[1] for b in basis)
        if scale is None:
            scale = float(torch.linalg.matrix_norm(images[0], ord=2))
        if len(basis) > n_iter or dim >= n:
            break
        Q_all = torch.cat(basis, dim=1)
        Z = images[-1]
        for _ in range(2):  # twice is enough (Giraud et al. 2005, "twice is enough")
            Z = Z - Q_all @ (Q_all.T @ Z)
        tol = max(n, 1) * torch.finfo(dtype).eps * max(scale, torch.finfo(dtype).tiny)
        block = _orthonormal_block(Z, tol, n - dim)
        if block.shape[1] == 0:
            break
    Q_all = torch.cat(basis, dim=1)  # (n, d)
    HQ = torch.cat(images, dim=1)  # (n, d)
    T = Q_all.T @ HQ
    vals, vecs = torch.linalg.eigh(0.5 * (T + T.T))
    top = torch.argsort(vals, descending=True)[: min(k, vals.numel())]
    return vals[top].clamp_min(0), Q_all @ vecs[:, top]


def ggn_matmat(
    output_fn: Callable[[object], Callable[[Tensor], Tensor]],
    theta: Tensor,
    batches: Callable[[], Iterable[tuple[object, Tensor]]],
    output_sqrt: Callable[[Tensor, Tensor], Tensor],
    V: Tensor,
) -> Tensor:
    """H V = Σ_batches Jᵀ W Wᵀ J V for a block V (P, m), matrix-free.

    Args:
        output_fn: x ↦ (θ ↦ f(x; θ) (B, C)), differentiable in θ (the subset's `output_fn`).
        theta: the expansion point θ* (P,).
        batches: called once per product; yields prepared (x, y) batches.
        output_sqrt: (f, y) ↦ W (B, C, K), the square root of the loss curvature in output
            space (GGN), the loss gradient (EF) or sampled gradients (MC Fisher).
        V: (P, m) block of vectors.

    Per batch: J V by m forward-mode products (vmapped jvp), then Jᵀ(W Wᵀ J V) by m
    reverse-mode products (vmapped vjp): memory O(m·B·C) beyond the model's activations.
    """
    out = torch.zeros_like(V)
    for x, y in batches():
        fn = output_fn(x)
        f, vjp_fn = vjp(fn, theta)

        def jv(v: Tensor, fn=fn) -> Tensor:
            return jvp(fn, (theta,), (v,))[1]

        with warnings.catch_warnings():
            # torch's first forward-mode call scripts its jvp decompositions (a torch-internal
            # DeprecationWarning about torch.jit.script, not actionable here).
            warnings.filterwarnings("ignore", ".*torch.jit.script.*", DeprecationWarning)
            JV = vmap(jv, in_dims=1)(V)  # (m, B, C)
        W = output_sqrt(f.detach(), y)  # (B, C, K)
        WtJV = torch.einsum("bck,mbc->mbk", W, JV)
        cot = torch.einsum("bck,mbk->mbc", W, WtJV)  # W Wᵀ J v, (m, B, C)
        (HV,) = vmap(vjp_fn)(cot)  # (m, P)
        out = out + HV.T.detach()
    return out


def ggn_matmat_dense(
    jacobian_chunks: Callable[[object, Tensor], Iterable[tuple[Tensor, Tensor, Tensor]]],
    batches: Callable[[], Iterable[tuple[object, Tensor]]],
    output_sqrt: Callable[[Tensor, Tensor], Tensor],
    V: Tensor,
) -> Tensor:
    """`ggn_matmat` from per-sample Jacobian chunks (f (B, C), J (B, C, P), y), reverse mode only.

    For models that forward-mode AD or vmap cannot run (e.g. attention kernels without a
    forward-mode derivative): Σ Jᵀ W Wᵀ J V, with J in chunks of rows bounded by the caller.
    """
    out = torch.zeros_like(V)
    for x, y in batches():
        for f, J, yc in jacobian_chunks(x, y):
            J = J.to(V.dtype)
            W = output_sqrt(f.detach(), yc)  # (B, C, K)
            JV = J @ V  # (B, C, m)
            cot = torch.einsum("bck,bdk,bdm->bcm", W, W, JV)  # W Wᵀ J V
            out = out + torch.einsum("bcp,bcm->pm", J, cot)
    return out


class LowRankPosterior(Posterior):
    """Λ = s·U diag(λ) Uᵀ + diag(δ); see the module docstring.

    Fitted by `fit_matrix_free` (the data are needed again for every block product, so
    `Laplace.fit` routes this structure through `needs_loader`). `accumulate` is not used.
    """

    structure = Structure.LOWRANK
    needs_dense_jacobian = True  # functional variance from dense Jacobian chunks
    needs_loader = True

    def __init__(
        self,
        groups,
        dtype,
        device,
        rank: int | None = None,
        oversample: int = DEFAULT_OVERSAMPLE,
        n_iter: int = DEFAULT_N_ITER,
    ) -> None:
        super().__init__(groups, dtype, device)
        if rank is not None and (int(rank) != rank or int(rank) < 1):
            raise BadInputError(f"rank must be a positive integer, got {rank}")
        self.rank = min(int(rank) if rank is not None else DEFAULT_RANK, self.n_params)
        if oversample < 0 or n_iter < 0:
            raise BadInputError("oversample and n_iter must be non-negative")
        self.oversample = int(oversample)
        self.n_iter = int(n_iter)
        self._folded: tuple[Tensor, Tensor] | None = None
        self.reset()

    # --- fitting --------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty curvature (k = 0), or the folded prior posterior's low-rank part."""
        if self._folded is not None:
            self.eigvals, self.U = (t.clone() for t in self._folded)
        else:
            self.U = torch.zeros(self.n_params, 0, dtype=self.dtype, device=self.device)
            self.eigvals = torch.zeros(0, dtype=self.dtype, device=self.device)

    def accumulate(self, W, factors, J) -> None:
        raise BadInputError(
            "the lowrank structure is fitted matrix-free from the data loader (Laplace.fit); "
            "it does not accumulate per-batch curvature"
        )

    def fit_matrix_free(self, data_matmat: MatMat, generator: torch.Generator | None) -> None:
        """Top-k eigenpairs of H_data + U λ Uᵀ (the current state: empty after `reset`, an
        earlier fit for online fitting, or a folded prior posterior)."""
        U, lam = self.U, self.eigvals

        def matmat(V: Tensor) -> Tensor:
            out = data_matmat(V)
            if lam.numel():
                out = out + U @ (lam.unsqueeze(1) * (U.T @ V))
            return out

        self.eigvals, self.U = top_eigenpairs(
            matmat,
            self.n_params,
            self.rank,
            dtype=self.dtype,
            device=self.device,
            generator=generator,
            oversample=self.oversample,
            n_iter=self.n_iter,
        )

    def _fold_prior(self, other, scale_other, scale_now) -> None:
        """Fold s'/s·U'λ'U'ᵀ into the curvature: the next fit finds the top-k of H + that.

        Exact when k covers the rank of both parts (e.g. k = P); otherwise the top-k of the
        sum is kept. s'/s is fixed when the prior is set.
        """
        if scale_other.numel() != 1 or scale_now.numel() != 1:
            raise BadInputError("lowrank does not support a per-output sigma_noise")
        ratio = (scale_other / scale_now).reshape(())
        self._folded = (ratio * other.eigvals, other.U.clone())
        self.reset()

    # --- with a prior ---------------------------------------------------------------------
    def _parts(self, prior: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """δ (P,), V = U√λ (P, k) and the Cholesky factor of M = I + s·Vᵀ D⁻¹ V (k, k)."""
        if scale.numel() != 1:
            raise BadInputError("lowrank does not support a per-output sigma_noise")
        s = scale.reshape(())
        d = expand_prior(prior, self.groups)
        V = self.U * self.eigvals.sqrt()
        M = s * (V.T @ (V / d.unsqueeze(1)))
        M = M + torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
        return d, V, torch.linalg.cholesky(M)

    def log_det(self, prior, scale):
        d, _, L = self._parts(prior, scale)
        return torch.log(d).sum() + 2 * torch.log(L.diagonal()).sum()

    def quad_form(self, v, prior, scale):
        d = expand_prior(prior, self.groups)
        proj = self.U.T @ v
        return (d * v * v).sum() + scale.reshape(()) * (self.eigvals * proj * proj).sum()

    def dense_precision(self, prior, scale):
        d = expand_prior(prior, self.groups)
        return scale.reshape(()) * (self.U * self.eigvals) @ self.U.T + torch.diag(d)

    def curvature_dense(self) -> Tensor:
        return (self.U * self.eigvals) @ self.U.T

    def diag_precision(self, prior, scale):
        d = expand_prior(prior, self.groups)
        return scale.reshape(()) * (self.U**2 @ self.eigvals) + d

    def dense_covariance(self, prior, scale):
        d, V, L = self._parts(prior, scale)
        X = torch.linalg.solve_triangular(L, (V / d.unsqueeze(1)).T, upper=False)  # (k, P)
        return torch.diag(1.0 / d) - scale.reshape(()) * X.T @ X

    def functional_variance(self, prior, scale, factors=None, J=None):
        if J is None:
            raise BadInputError("the lowrank structure needs dense Jacobians")
        d, V, L = self._parts(prior, scale)
        JD = J / d  # (B, C, P)
        base = torch.einsum("bcp,bdp->bcd", JD, J)
        # (J D⁻¹ V) L⁻ᵀ, so that the Woodbury correction is s·X Xᵀ: (B, C, k).
        JDV = JD @ V
        X = torch.linalg.solve_triangular(L, JDV.reshape(-1, V.shape[1]).T, upper=False).T
        X = X.reshape(*J.shape[:2], V.shape[1])
        return base - scale.reshape(()) * torch.einsum("bck,bdk->bcd", X, X)

    def sample(self, n, prior, scale, generator):
        if scale.numel() != 1:
            raise BadInputError("lowrank does not support a per-output sigma_noise")
        d = expand_prior(prior, self.groups)
        eps = torch.randn(
            n, self.n_params, dtype=self.dtype, device=self.device, generator=generator
        )
        Wt = scale.reshape(()).sqrt() * (self.U * self.eigvals.sqrt())
        Wt = Wt / d.sqrt().unsqueeze(1)  # √s D^{-1/2} V, (P, k)
        if Wt.shape[1]:
            Q, S, _ = torch.linalg.svd(Wt, full_matrices=False)
            shrink = (1 + S**2).rsqrt() - 1  # (k,)
            eps = eps + ((eps @ Q) * shrink) @ Q.T
        return eps / d.sqrt()

    # --- state ------------------------------------------------------------------------------
    def state(self):
        return {"lowrank.U": self.U, "lowrank.eigvals": self.eigvals}

    def load_state(self, tensors):
        U, lam = tensors.get("lowrank.U"), tensors.get("lowrank.eigvals")
        if U is None or lam is None:
            raise BadInputError("posterior has no tensors 'lowrank.U' and 'lowrank.eigvals'")
        if U.ndim != 2 or U.shape[0] != self.n_params or lam.shape != (U.shape[1],):
            raise BadInputError(
                f"lowrank.U / lowrank.eigvals: expected shapes ({self.n_params}, k) and (k,), "
                f"got {tuple(U.shape)} and {tuple(lam.shape)}"
            )
        self.U = U.to(self.dtype).to(self.device)
        self.eigvals = lam.to(self.dtype).to(self.device)
