"""Serialization of the K-FAC posterior: `KronStateMixin` gives `KronPosterior` its raw
curvature state (B, Σaaᵀ, diagonal blocks, N) and its eigendecomposed state, with loaders that
check every tensor's shape.

The mixin expects the attributes `KronPosterior` sets up: `groups`, `dtype`, `device`, `B`,
`A_sum`, `diag`, `n_data`, `eigs`, an optional `_folded` prior, and `eigendecomposition()`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError


def block_kind(kind: str) -> str:
    return {"weight": "kron", "bias": "kron_bias", "other": "diag"}[kind]


class KronStateMixin:
    """Save and load methods of `KronPosterior`; listed before `Posterior` in its bases so these
    override `Posterior`'s abstract `state`/`load_state` and default `raw_state`/`load_raw_state`."""

    def raw_state(self):
        """B, Σaaᵀ (`A_sum`, not yet divided by N), diagonal blocks and N, without a folded prior."""
        f = getattr(self, "_folded", None)
        out: dict[str, Tensor] = {}
        for name, store in (("B", self.B), ("A_sum", self.A_sum), ("diag", self.diag)):
            for i, t in enumerate(store):
                if t is not None:
                    out[f"{name}.{i}"] = t if f is None else t - f[name][i]
        n = self.n_data - (f["n_data"] if f is not None else 0)
        out["n_data"] = torch.tensor(n, dtype=torch.int64, device=self.device)
        return out

    def load_raw_state(self, tensors):
        f = getattr(self, "_folded", None)
        for name, store in (("B", self.B), ("A_sum", self.A_sum), ("diag", self.diag)):
            for i, t in enumerate(store):
                if t is None:
                    continue
                new = tensors[f"{name}.{i}"].to(dtype=self.dtype, device=self.device).clone()
                if tuple(new.shape) != tuple(t.shape):
                    raise BadInputError(
                        f"{name}.{i}: expected shape {tuple(t.shape)}, got {tuple(new.shape)}"
                    )
                store[i] = new if f is None else new + f[name][i]
        self.n_data = int(tensors["n_data"]) + (f["n_data"] if f is not None else 0)
        self.eigs = None

    def state(self):
        out: dict[str, Tensor] = {}
        for i, g in enumerate(self.groups):
            kind = block_kind(g.kind)
            if kind == "diag":
                out[f"kron.{g.name}.diag"] = self.diag[i]
            else:
                for key, val in self.eigendecomposition()[i].items():
                    out[f"kron.{g.name}.{key}"] = val
        return out

    def load_state(self, tensors, n_data: int | None = None):
        if n_data is not None:
            self.n_data = n_data
        eigs = []
        for i, g in enumerate(self.groups):
            kind = block_kind(g.kind)
            entry = {}
            if kind == "diag":
                self.diag[i] = self._get(tensors, f"kron.{g.name}.diag", (g.numel,))
            else:
                d_out = self.B[i].shape[0]
                entry["B.eigvals"] = self._get(tensors, f"kron.{g.name}.B.eigvals", (d_out,))
                entry["B.eigvecs"] = self._get(tensors, f"kron.{g.name}.B.eigvecs", (d_out, d_out))
                self.B[i] = (entry["B.eigvecs"] * entry["B.eigvals"]) @ entry["B.eigvecs"].T
                if kind == "kron":
                    d_in = self.A_sum[i].shape[0]
                    entry["A.eigvals"] = self._get(tensors, f"kron.{g.name}.A.eigvals", (d_in,))
                    entry["A.eigvecs"] = self._get(
                        tensors, f"kron.{g.name}.A.eigvecs", (d_in, d_in)
                    )
                    A = (entry["A.eigvecs"] * entry["A.eigvals"]) @ entry["A.eigvecs"].T
                    self.A_sum[i] = A * max(self.n_data, 1)
            eigs.append(entry)
        self.eigs = eigs

    def _get(self, tensors: dict[str, Tensor], key: str, shape: tuple[int, ...]) -> Tensor:
        if key not in tensors:
            raise BadInputError(f"posterior has no tensor {key!r}")
        t = tensors[key]
        if tuple(t.shape) != shape:
            raise BadInputError(f"{key}: expected shape {shape}, got {tuple(t.shape)}")
        return t.to(dtype=self.dtype, device=self.device)
