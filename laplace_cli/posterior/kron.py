"""K-FAC posterior: one Kronecker-factored block per Linear/Conv2d weight, bias blocks apart.

For a weight W (d_out, d_in) flattened row-major, the per-sample Jacobian is g ⊗ a, so

    H_W ≈ B ⊗ A,   B = Σ_n Σ_k g gᵀ (summed),   A = (1/N) Σ_n a aᵀ (averaged)

(Martens & Grosse 2015; conventions of laplace-torch 0.3 / curvlinops). With a weight-sharing
dimension T (sequences, Conv2d patches) "expand" treats the T positions as extra data
(A = Σ_{n,t} a aᵀ / (N·T), B = Σ_{n,t} g gᵀ) and "reduce" averages inputs and sums output
gradients over T first (Eschenhagen et al. 2023). A bias gets the block B. Parameters of other
modules (norms, embeddings, bare tensors) get their exact diagonal.

Each factor is eigendecomposed once, B = Q_B Λ_B Q_Bᵀ, A = Q_A Λ_A Q_Aᵀ, and the posterior
precision of a block is (Q_B ⊗ Q_A) diag(s·λ_B λ_Aᵀ + δ) (Q_B ⊗ Q_A)ᵀ: the prior is added
exactly to the eigenvalue products, so log-det, solves and samples are closed form.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.core.enums import KronApprox, Structure
from laplace_cli.core.errors import BadInputError
from laplace_cli.posterior.base import Posterior, per_group_prior
from laplace_cli.posterior.diag import factor_diag, factor_functional_variance
from laplace_cli.posterior.feature_variance import FeatureVarianceForm, OutputDraws, head_shape
from laplace_cli.posterior.kron_matrix import Kron, KronDecomposed
from laplace_cli.posterior.kron_products import (
    add_input_factor_,
    kron_functional_variance,
    kron_functional_variance_diag,
    output_gram,
)
from laplace_cli.posterior.kron_state import KronStateMixin, block_kind
from laplace_cli.subsets.base import DenseFactor, LayerFactor


def symmetric_eig(M: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs of a symmetric PSD factor; eigenvalues clamped at 0 (rounding can make them < 0)."""
    vals, vecs = torch.linalg.eigh(0.5 * (M + M.T))
    return vals.clamp_min(0), vecs


class KronPosterior(KronStateMixin, Posterior):
    structure = Structure.KRON

    def __init__(self, groups, dtype, device, kron_approx: KronApprox = KronApprox.EXPAND) -> None:
        super().__init__(groups, dtype, device)
        self.kron_approx = KronApprox(kron_approx)
        self.reset()

    def reset(self) -> None:
        z = lambda *s: torch.zeros(*s, dtype=self.dtype, device=self.device)  # noqa: E731
        self.n_data = 0
        self.B: list[Tensor | None] = []
        self.A_sum: list[Tensor | None] = []
        self.diag: list[Tensor | None] = []
        for g in self.groups:
            kind = block_kind(g.kind)
            d_out, d_in = g.kron_shape if kind == "kron" else (g.shape[0] if g.shape else 1, 1)
            self.B.append(z(d_out, d_out) if kind != "diag" else None)
            self.A_sum.append(z(d_in, d_in) if kind == "kron" else None)
            self.diag.append(z(g.numel) if kind == "diag" else None)
        self.eigs: list[dict[str, Tensor]] | None = None
        if getattr(self, "_folded", None) is not None:
            self._add_folded()

    # --- a posterior as prior ---------------------------------------------------------------
    def _fold_prior(self, other, scale_other, scale_now) -> None:
        """Merge the prior posterior's K-FAC factors into this one's (an approximation).

        s·(B⊗A) + s'·(B'⊗A') is not a Kronecker product. As laplace-torch does for continual
        learning, the factors are summed instead: B ← B + (s'/s)·B', Σaaᵀ ← Σaaᵀ + Σa'a'ᵀ and
        N ← N + N' (diagonal blocks: d ← d + (s'/s)·d'). With s' = s this is exactly one K-FAC
        fit over the union of both data sets (model weights unchanged); s'/s is fixed at the
        time the prior is set. The marginal likelihood's P₀ is the prior posterior itself.
        """
        if scale_other.numel() != 1 or scale_now.numel() != 1:
            raise BadInputError("kron does not support a per-output sigma_noise")
        ratio = (scale_other / scale_now).reshape(())
        self._folded = {
            "B": [None if B is None else ratio * B for B in other.B],
            "A_sum": [None if A is None else A.clone() for A in other.A_sum],
            "diag": [None if d is None else ratio * d for d in other.diag],
            "n_data": int(other.n_data),
        }
        self._add_folded()

    def _add_folded(self) -> None:
        f = self._folded
        for i in range(len(self.groups)):
            for name, store in (("B", self.B), ("A_sum", self.A_sum), ("diag", self.diag)):
                if f[name][i] is not None:
                    store[i] = store[i] + f[name][i]
        self.n_data += f["n_data"]
        self.eigs = None

    # --- fitting --------------------------------------------------------------------------
    def accumulate(self, W, factors, J) -> None:
        """`Posterior.accumulate`; W = None: the factors are already projected (identity root)."""
        if W is None:
            first = factors[0]
            self.n_data += (first.J if isinstance(first, DenseFactor) else first.G).shape[0]
        else:
            self.n_data += W.shape[0]
        self._add(W, factors, inputs=True)

    def accumulate_directions(self, directions) -> None:
        """`Posterior.accumulate_directions`: the input factors Σaaᵀ and N once (the first
        piece), the output factors of every piece."""
        for index, factors in enumerate(directions):
            if index == 0:
                self.accumulate(None, factors, None)
            else:
                self._add(None, factors, inputs=False)

    def _add(self, W, factors, *, inputs: bool) -> None:
        # A layer's weight and bias share G and so their output factor: computed once.
        shared: tuple[Tensor, Tensor] | None = None
        for i, (g, fac) in enumerate(zip(self.groups, factors)):
            kind = block_kind(g.kind)
            if kind == "diag":
                self.diag[i] += factor_diag(W, fac)
                continue
            assert isinstance(fac, LayerFactor)
            if shared is None or shared[0] is not fac.G:
                if fac.gram is not None and W is None:
                    shared = (fac.G, fac.gram)  # known in closed form (`LayerFactor.gram`)
                else:
                    reduce = self.kron_approx == KronApprox.REDUCE
                    shared = (fac.G, output_gram(fac.G, W, reduce))
            self.B[i] += shared[1]
            if kind == "kron" and inputs:
                add_input_factor_(self.A_sum[i], fac, self.kron_approx == KronApprox.REDUCE)
        self.eigs = None

    def finalize(self) -> None:
        """Nothing to do at the end of a fit: the factors are eigendecomposed on first use.

        Prediction, the marginal likelihood and sampling need the eigenpairs; a fit that only
        feeds another fit (shards, online updates, resumable fits) never pays for them. The
        largest factor (a wide layer's Σaaᵀ, d_in up to thousands) costs O(d³), a third of a
        small conv net's whole fit. (laplace-torch decomposes at the end of `fit`; compare
        fit + first use, as benchmarks/profile_kron_fit.py's "fit+lml" row does.)
        """
        self.eigs = None

    def _decompose(self) -> list[dict[str, Tensor]]:
        eigs = []
        n = max(self.n_data, 1)
        for i, g in enumerate(self.groups):
            kind = block_kind(g.kind)
            entry: dict[str, Tensor] = {}
            previous = eigs[-1] if eigs else {}
            if (
                kind == "kron_bias"
                and "B.eigvecs" in previous
                and torch.equal(self.B[i], self.B[i - 1])
            ):
                # A layer's bias shares its weight's output factor B (same sums): one
                # eigendecomposition, which is O(d_out³) (a vocabulary-sized head: minutes).
                entry["B.eigvals"], entry["B.eigvecs"] = (
                    previous["B.eigvals"],
                    previous["B.eigvecs"],
                )
            elif kind != "diag":
                entry["B.eigvals"], entry["B.eigvecs"] = symmetric_eig(self.B[i])
            if kind == "kron":
                entry["A.eigvals"], entry["A.eigvecs"] = symmetric_eig(self.A_sum[i] / n)
            eigs.append(entry)
        return eigs

    def eigendecomposition(self) -> list[dict[str, Tensor]]:
        if self.eigs is None:
            self.eigs = self._decompose()
        return self.eigs

    # --- with a prior ---------------------------------------------------------------------
    def block_eigvals(self, i: int, delta: Tensor, scale: Tensor) -> Tensor:
        """Eigenvalues of block i's posterior precision: (d_out, d_in), (d_out,) or (numel,)."""
        kind = block_kind(self.groups[i].kind)
        if kind == "diag":
            return scale * self.diag[i] + delta
        e = self.eigendecomposition()[i]
        if kind == "kron":
            return scale * torch.outer(e["B.eigvals"], e["A.eigvals"]) + delta
        return scale * e["B.eigvals"] + delta

    def log_det(self, prior, scale):
        deltas = per_group_prior(prior, self.groups, "kron")
        return sum(
            torch.log(self.block_eigvals(i, deltas[i], scale)).sum()
            for i in range(len(self.groups))
        )

    def _block_dense(self, i: int, delta: Tensor, scale: Tensor, power: float) -> Tensor:
        lam = self.block_eigvals(i, delta, scale) ** power
        kind = block_kind(self.groups[i].kind)
        if kind == "diag":
            return torch.diag(lam)
        e = self.eigendecomposition()[i]
        Q = (
            e["B.eigvecs"]
            if kind == "kron_bias"
            else torch.kron(e["B.eigvecs"].contiguous(), e["A.eigvecs"].contiguous())
        )
        return (Q * lam.reshape(-1)) @ Q.T

    def quad_form(self, v, prior, scale):
        """vᵀ Λ v block by block in the eigenbases: Σ λ ⊙ ((Q_B ⊗ Q_A)ᵀ v)²."""
        deltas = per_group_prior(prior, self.groups, "kron")
        total, start = None, 0
        for i, g in enumerate(self.groups):
            lam = self.block_eigvals(i, deltas[i], scale)
            part = v[start : start + g.numel]
            start += g.numel
            kind = block_kind(g.kind)
            if kind == "kron":
                e = self.eigendecomposition()[i]
                part = e["B.eigvecs"].T @ part.reshape(lam.shape) @ e["A.eigvecs"]
            elif kind == "kron_bias":
                part = self.eigendecomposition()[i]["B.eigvecs"].T @ part
            term = (lam * part**2).sum()
            total = term if total is None else total + term
        return total

    def dense_precision(self, prior, scale):
        deltas = per_group_prior(prior, self.groups, "kron")
        return torch.block_diag(
            *[self._block_dense(i, deltas[i], scale, 1.0) for i in range(len(self.groups))]
        )

    def dense_covariance(self, prior, scale):
        deltas = per_group_prior(prior, self.groups, "kron")
        return torch.block_diag(
            *[self._block_dense(i, deltas[i], scale, -1.0) for i in range(len(self.groups))]
        )

    def diag_precision(self, prior, scale):
        deltas = per_group_prior(prior, self.groups, "kron")
        out = []
        for i, g in enumerate(self.groups):
            lam = self.block_eigvals(i, deltas[i], scale)
            kind = block_kind(g.kind)
            if kind == "diag":
                out.append(lam)
                continue
            e = self.eigendecomposition()[i]
            if kind == "kron":
                out.append((e["B.eigvecs"] ** 2 @ lam @ (e["A.eigvecs"] ** 2).T).reshape(-1))
            else:
                out.append(e["B.eigvecs"] ** 2 @ lam)
        return torch.cat(out)

    cheap_variance_diag = True

    def has_feature_variance(self) -> bool:
        return head_shape(self.groups) is not None

    def feature_form_state(self) -> list[Tensor]:
        return [t for e in self.eigendecomposition() for t in e.values()]

    def build_feature_form(self, prior: Tensor, scale: Tensor) -> FeatureVarianceForm:
        """R = Q_Aᵀ (applied as φ Q_A), M = (Q_B ⊙ Q_B)(1/λ) and the bias block's
        v = (Q_B ⊙ Q_B)(1/λ_b)."""
        deltas = per_group_prior(prior, self.groups, "kron")
        eigs = self.eigendecomposition()
        lam = self.block_eigvals(0, deltas[0], scale)  # (C, d)
        inv = 1.0 / lam
        weights = (eigs[0]["B.eigvecs"] ** 2) @ inv  # (C, d)
        bias = bias_basis = bias_scale = None
        if len(self.groups) > 1:
            inv_b = 1.0 / self.block_eigvals(1, deltas[1], scale)
            bias_basis = eigs[1]["B.eigvecs"]
            bias, bias_scale = (bias_basis**2) @ inv_b, inv_b.sqrt()
        draws = OutputDraws(inv, eigs[0]["B.eigvecs"], bias_basis, bias_scale)
        return FeatureVarianceForm(eigs[0]["A.eigvecs"], weights, bias, draws)

    def functional_variance(self, prior, scale, factors=None, J=None):
        return self._block_variances(prior, scale, factors, J, diagonal=False)

    def functional_variance_diag(self, prior, scale, factors=None, J=None):
        return self._block_variances(prior, scale, factors, J, diagonal=True)

    def _block_variances(self, prior, scale, factors, J, *, diagonal: bool) -> Tensor:
        """Σ over blocks of J Σ Jᵀ (B, C, C), or of its diagonal (B, C)."""
        deltas = per_group_prior(prior, self.groups, "kron")
        out, start = None, 0
        for i, g in enumerate(self.groups):
            lam = self.block_eigvals(i, deltas[i], scale)
            kind = block_kind(g.kind)
            if J is not None:
                fac = DenseFactor(J[:, :, start : start + g.numel])
            else:
                fac = factors[i]
            start += g.numel
            if kind == "diag":
                part = factor_functional_variance(fac, 1.0 / lam)
                part = torch.diagonal(part, dim1=-2, dim2=-1) if diagonal else part
            elif diagonal:
                part = kron_functional_variance_diag(self.eigendecomposition()[i], kind, fac, lam)
            else:
                part = kron_functional_variance(self.eigendecomposition()[i], kind, fac, lam)
            out = part if out is None else out + part
        return out

    def sample(self, n, prior, scale, generator):
        deltas = per_group_prior(prior, self.groups, "kron")
        out = []
        for i, g in enumerate(self.groups):
            lam = self.block_eigvals(i, deltas[i], scale)
            eps = torch.randn(
                n, *lam.shape, dtype=self.dtype, device=self.device, generator=generator
            )
            z = eps / lam.sqrt()
            kind = block_kind(g.kind)
            if kind == "kron":
                e = self.eigendecomposition()[i]
                z = e["B.eigvecs"] @ z @ e["A.eigvecs"].T
            elif kind == "kron_bias":
                z = z @ self.eigendecomposition()[i]["B.eigvecs"].T
            out.append(z.reshape(n, -1))
        return torch.cat(out, dim=1)

    # --- laplace-torch's matrix objects ---------------------------------------------------
    def as_kron(self) -> Kron:
        """The summed curvature as laplace-torch's `Kron`: [B, Σaaᵀ/N] per weight (B ⊗ A),
        [B] per bias, the exact diagonal (a 1-D factor) for other parameters. Copies."""
        n = max(self.n_data, 1)
        kfacs: list[list[Tensor]] = []
        for i, g in enumerate(self.groups):
            kind = block_kind(g.kind)
            if kind == "kron":
                kfacs.append([self.B[i].clone(), self.A_sum[i] / n])
            elif kind == "kron_bias":
                kfacs.append([self.B[i].clone()])
            else:
                kfacs.append([self.diag[i].clone()])
        return Kron(kfacs)

    def as_kron_decomposed(
        self, prior: Tensor | None = None, scale: Tensor | None = None
    ) -> KronDecomposed:
        """This posterior's eigendecomposition as laplace-torch's `KronDecomposed`: the curvature
        alone, or times `scale` plus the per-tensor `prior` (the posterior precision)."""
        eigs = self.eigendecomposition()
        vecs: list[list[Tensor | None]] = []
        vals: list[list[Tensor]] = []
        for i, g in enumerate(self.groups):
            kind, e = block_kind(g.kind), eigs[i]
            if kind == "kron":
                vecs.append([e["B.eigvecs"], e["A.eigvecs"]])
                vals.append([e["B.eigvals"], e["A.eigvals"]])
            elif kind == "kron_bias":
                vecs.append([e["B.eigvecs"]])
                vals.append([e["B.eigvals"]])
            else:
                vecs.append([None])
                vals.append([self.diag[i]])
        out = KronDecomposed(vecs, vals)
        if scale is not None:
            if scale.numel() != 1:
                raise BadInputError("kron does not support a per-output sigma_noise")
            out = out * scale.reshape(())
        if prior is not None:
            out = out + per_group_prior(prior, self.groups, "kron")
        return out

    # --- state ------------------------------------------------------------------------------
    def block_metadata(self) -> list[dict]:
        return [
            {"name": g.name, "kind": block_kind(g.kind), "shape": list(g.shape)}
            for g in self.groups
        ]
