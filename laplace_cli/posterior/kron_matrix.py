"""laplace-torch's stand-alone Kronecker matrix objects, `Kron` and `KronDecomposed`.

A `Kron` is a block-diagonal matrix with one block per parameter tensor; a block is either one
factor F (a bias, or any tensor kept whole) or a pair (Q, H) standing for Q ⊗ H (a weight
W (d_out, d_in) flattened row-major: Q the output-side factor, H the input-side one, as in
posterior/kron.py's B ⊗ A). A factor is a symmetric matrix or, as a 1-D tensor, a diagonal.

`KronDecomposed` keeps each factor's eigenpairs and one additive `delta` per block (a prior
precision), so that powers, log-determinants and solves are closed form: block i is
(Q₁ ⊗ Q₂) diag(λ₁ λ₂ᵀ + δᵢ)^e (Q₁ ⊗ Q₂)ᵀ; a single-factor block whose eigenvector matrix is
None is diagonal (Q = I without storing it: a large non-layer parameter's exact diagonal). This is the algebra the K-FAC posterior uses
(posterior/kron.py); these classes expose it with laplace-torch's interface (`+`, `*`,
`decompose`, `bmm`, `logdet`, `diag`, `to_matrix`, `inv_square_form`) and are what
`KronLaplace.H` and `KronLaplace.posterior_precision` return. `damping=True` (laplace-torch's
damped K-FAC, δ split as √δ into each factor) is offered here as it is there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Kron", "KronDecomposed"]


def _is_scalar(x: object) -> bool:
    if isinstance(x, Tensor):
        return x.numel() == 1
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _symmetric_eig(M: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs of a symmetric PSD factor; eigenvalues clamped at 0 (rounding)."""
    vals, vecs = torch.linalg.eigh(0.5 * (M + M.T))
    return vals.clamp_min(0), vecs


def _as_matrix(F: Tensor) -> Tensor:
    return F if F.ndim > 1 else torch.diag(F)


def _batched(W: Tensor, fn) -> Tensor:
    """Apply fn on (B, K, P) after lifting W of 1, 2 or 3 dims; squeeze back as laplace-torch."""
    if W.ndim == 1:
        return fn(W.unsqueeze(0).unsqueeze(0)).squeeze()
    if W.ndim == 2:
        return fn(W.unsqueeze(1)).squeeze()
    if W.ndim == 3:
        return fn(W)
    raise ValueError(f"W must have 1, 2 or 3 dimensions (batch, classes, params), got {W.ndim}")


class Kron:
    """Block-diagonal Kronecker-factored matrix; `kfacs[i]` is [F] or [Q, H] (block Q ⊗ H)."""

    def __init__(self, kfacs: list[list[Tensor] | tuple[Tensor, ...]]) -> None:
        self.kfacs = kfacs

    @classmethod
    def init_from_model(
        cls,
        model: nn.Module | Iterable[nn.Parameter],
        device: torch.device | str,
        dtype: torch.dtype | None = None,
    ) -> Kron:
        """Zero factors shaped for the model's parameters: a vector p gets one (p, p) factor, a
        weight (d_out, d_in, ...) the pair (d_out, d_out), (d_in·..., d_in·...)."""
        params = model.parameters() if isinstance(model, nn.Module) else model
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        kfacs: list[list[Tensor]] = []
        for p in params:
            if p.ndim == 1:
                kfacs.append([torch.zeros(p.numel(), p.numel(), device=device, dtype=dtype)])
            elif 2 <= p.ndim <= 4:
                d_out, d_in = p.shape[0], p[0].numel()
                kfacs.append(
                    [
                        torch.zeros(d_out, d_out, device=device, dtype=dtype),
                        torch.zeros(d_in, d_in, device=device, dtype=dtype),
                    ]
                )
            else:
                raise ValueError(
                    f"Kron covers parameters of 1 to 4 dimensions, got shape {tuple(p.shape)}"
                )
        return cls(kfacs)

    def __add__(self, other: Kron) -> Kron:
        """Factor-wise sum (laplace-torch's; not the sum of the Kronecker products)."""
        if not isinstance(other, Kron):
            raise ValueError("Can only add Kron to Kron.")
        return Kron([[a + b for a, b in zip(F, G)] for F, G in zip(self.kfacs, other.kfacs)])

    __radd__ = __add__

    def __mul__(self, scalar: float | Tensor) -> Kron:
        """Scale every block by `scalar` (each of a pair's factors by √scalar)."""
        if not _is_scalar(scalar):
            raise ValueError("Kron can only be multiplied by a python or torch scalar.")
        return Kron([[scalar ** (1 / len(F)) * f for f in F] for F in self.kfacs])

    __rmul__ = __mul__

    def __len__(self) -> int:
        return len(self.kfacs)

    def decompose(self, damping: bool = False) -> KronDecomposed:
        eigvecs, eigvals = [], []
        for F in self.kfacs:
            Qs, ls = [], []
            for f in F:
                if f.ndim > 1:
                    lam, Q = _symmetric_eig(f)
                else:  # a diagonal factor is its own eigendecomposition
                    lam, Q = f, torch.eye(len(f), dtype=f.dtype, device=f.device)
                Qs.append(Q)
                ls.append(lam)
            eigvecs.append(Qs)
            eigvals.append(ls)
        return KronDecomposed(eigvecs, eigvals, damping=damping)

    def _bmm(self, W: Tensor) -> Tensor:
        B, K, P = W.shape
        W = W.reshape(B * K, P)
        out, start = [], 0
        for F in self.kfacs:
            if len(F) == 1:
                f = F[0]
                p = len(f)
                part = W[:, start : start + p]
                out.append(part @ f.T if f.ndim > 1 else part * f)
            elif len(F) == 2:
                Q, H = F
                p_out, p_in = len(Q), len(H)
                p = p_out * p_in
                # (Q ⊗ H) vec(X) = vec(Q X Hᵀ) for X (p_out, p_in) row-major.
                X = W[:, start : start + p].reshape(-1, p_out, p_in)
                X = Q @ X if Q.ndim > 1 else Q.reshape(-1, 1) * X
                X = X @ H.T if H.ndim > 1 else X * H
                out.append(X.reshape(-1, p))
            else:
                raise ValueError(f"a Kron block has 1 or 2 factors, got {len(F)}")
            start += p
        if start != P:
            raise ValueError(f"W has {P} parameters, the Kron matrix {start}")
        return torch.cat(out, dim=1).reshape(B, K, P)

    def bmm(self, W: Tensor, exponent: float = 1) -> Tensor:
        """self @ w for each row w of W (params last; 1, 2 or 3 dimensions)."""
        if exponent != 1:
            raise ValueError("Kron.bmm takes exponent 1 only; decompose() it for other powers.")
        return _batched(W, self._bmm)

    def logdet(self) -> Tensor:
        """log det of the whole matrix: log det(Q ⊗ H) = p_in log det Q + p_out log det H."""
        total = 0
        for F in self.kfacs:
            lds = [f.logdet() if f.ndim > 1 else f.log().sum() for f in F]
            if len(F) == 1:
                total = total + lds[0]
            else:
                total = total + len(F[1]) * lds[0] + len(F[0]) * lds[1]
        return total

    def diag(self) -> Tensor:
        out = []
        for F in self.kfacs:
            ds = [f.diagonal() if f.ndim > 1 else f for f in F]
            out.append(ds[0] if len(ds) == 1 else torch.outer(ds[0], ds[1]).reshape(-1))
        return torch.cat(out)

    def to_matrix(self) -> Tensor:
        """Dense block-diagonal matrix (for tests and small models: P² memory)."""
        blocks = []
        for F in self.kfacs:
            Ms = [_as_matrix(f) for f in F]
            blocks.append(Ms[0] if len(Ms) == 1 else torch.kron(Ms[0], Ms[1]))
        return torch.block_diag(*blocks)


class KronDecomposed:
    """Eigendecomposed `Kron` plus one additive `delta` per block (see the module docstring)."""

    def __init__(
        self,
        eigenvectors: Sequence[Sequence[Tensor]],
        eigenvalues: Sequence[Sequence[Tensor]],
        deltas: Tensor | None = None,
        damping: bool = False,
    ) -> None:
        self.eigenvectors = eigenvectors
        self.eigenvalues = eigenvalues
        ref = eigenvalues[0][0]
        if deltas is None:
            deltas = torch.zeros(len(self), dtype=ref.dtype, device=ref.device)
        else:
            self._check_deltas(deltas)
        self.deltas = deltas
        self.damping = damping

    def detach(self) -> KronDecomposed:
        self.deltas = self.deltas.detach()
        return self

    def _check_deltas(self, deltas: Tensor) -> None:
        if not isinstance(deltas, Tensor):
            raise ValueError("Can only add a torch.Tensor to KronDecomposed.")
        if deltas.ndim == 0 or (deltas.ndim == 1 and len(deltas) in (1, len(self))):
            return
        raise ValueError(
            f"KronDecomposed takes a scalar or one delta per block ({len(self)}), got shape "
            f"{tuple(deltas.shape)}"
        )

    def __add__(self, deltas: Tensor) -> KronDecomposed:
        self._check_deltas(deltas)
        return KronDecomposed(
            self.eigenvectors, self.eigenvalues, self.deltas + deltas, damping=self.damping
        )

    __radd__ = __add__

    def __mul__(self, scalar: float | Tensor) -> KronDecomposed:
        """Scale the curvature part (each of a pair's eigenvalue vectors by √scalar)."""
        if not _is_scalar(scalar):
            raise ValueError("KronDecomposed can only be multiplied by a scalar.")
        eigenvalues = [[scalar ** (1 / len(ls)) * lam for lam in ls] for ls in self.eigenvalues]
        return KronDecomposed(self.eigenvectors, eigenvalues, self.deltas, damping=self.damping)

    __rmul__ = __mul__

    def __len__(self) -> int:
        return len(self.eigenvalues)

    def _block_eigvals(self, ls: Sequence[Tensor], delta: Tensor, exponent: float) -> Tensor:
        """Eigenvalues of a block to the power `exponent`: (p,) or (p_out, p_in)."""
        if len(ls) == 1:
            return (ls[0] + delta) ** exponent
        if len(ls) != 2:
            raise ValueError(f"a KronDecomposed block has 1 or 2 factors, got {len(ls)}")
        l1, l2 = ls
        if self.damping:
            root = torch.sqrt(delta)
            return torch.outer(l1 + root, l2 + root) ** exponent
        return (torch.outer(l1, l2) + delta) ** exponent

    def logdet(self) -> Tensor:
        total = 0
        for ls, delta in zip(self.eigenvalues, self.deltas.expand(len(self))):
            total = total + torch.log(self._block_eigvals(ls, delta, 1.0)).sum()
        return total

    def _bmm(self, W: Tensor, exponent: float = -1) -> Tensor:
        B, K, P = W.shape
        W = W.reshape(B * K, P)
        out, start = [], 0
        blocks = zip(self.eigenvalues, self.eigenvectors, self.deltas.expand(len(self)))
        for ls, Qs, delta in blocks:
            lam = self._block_eigvals(ls, delta, exponent)
            p = lam.numel()
            part = W[:, start : start + p]
            if len(ls) == 1:
                Q = Qs[0]
                out.append(part * lam if Q is None else ((part @ Q) * lam) @ Q.T)
            else:
                Q1, Q2 = Qs
                X = part.reshape(-1, *lam.shape)
                X = Q1 @ ((Q1.T @ X @ Q2) * lam) @ Q2.T
                out.append(X.reshape(-1, p))
            start += p
        if start != P:
            raise ValueError(f"W has {P} parameters, the KronDecomposed matrix {start}")
        return torch.cat(out, dim=1).reshape(B, K, P)

    def bmm(self, W: Tensor, exponent: float = -1) -> Tensor:
        """self^exponent @ w for each row w of W (params last; 1, 2 or 3 dimensions)."""
        return _batched(W, lambda X: self._bmm(X, exponent))

    def inv_square_form(self, W: Tensor) -> Tensor:
        """W self⁻¹ Wᵀ for W (B, K, P): (B, K, K)."""
        return torch.bmm(W, self._bmm(W, exponent=-1).transpose(1, 2))

    def diag(self, exponent: float = 1) -> Tensor:
        out = []
        for Qs, ls, delta in zip(
            self.eigenvectors, self.eigenvalues, self.deltas.expand(len(self))
        ):
            lam = self._block_eigvals(ls, delta, exponent)
            if len(ls) == 1:
                out.append(lam if Qs[0] is None else Qs[0] ** 2 @ lam)
            else:
                Q1, Q2 = Qs
                out.append((Q1**2 @ lam @ (Q2**2).T).reshape(-1))
        return torch.cat(out)

    def to_matrix(self, exponent: float = 1) -> Tensor:
        """Dense block-diagonal self^exponent (for tests and small models: P² memory)."""
        blocks = []
        for Qs, ls, delta in zip(
            self.eigenvectors, self.eigenvalues, self.deltas.expand(len(self))
        ):
            lam = self._block_eigvals(ls, delta, exponent).reshape(-1)
            if len(ls) == 1 and Qs[0] is None:
                blocks.append(torch.diag(lam))
                continue
            Q = Qs[0] if len(ls) == 1 else torch.kron(Qs[0], Qs[1])
            blocks.append((Q * lam) @ Q.T)
        return torch.block_diag(*blocks)
