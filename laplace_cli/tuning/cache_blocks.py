"""The pieces of `PredictiveCache` (tuning/cache.py): validation inputs joined into few batches,
and the per-parameter-tensor blocks of projected Jacobians whose variance is evaluated at every
(δ, s) of a grid (see cache.py's docstring for the maths)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import batch_size
from laplace_cli.core.errors import BadInputError
from laplace_cli.posterior.predictive import input_signature

__all__ = [
    "Block",
    "DenseBlock",
    "Part",
    "RankOneBlock",
    "cat_inputs",
    "input_rows",
    "joined_inputs",
    "rotate",
    "shared_rows",
]


def shared_rows(t: Tensor) -> Tensor:
    """`t[:1]` when `t` is a view repeated along the batch (stride 0, last-layer G = I), else `t`."""
    if t.shape[0] > 1 and t.stride(0) == 0:
        return t[:1]
    return t


def rotate(t: Tensor, Q: Tensor) -> Tensor:
    """t @ Q over the last axis as one 2-D matmul (a batched matmul of 1-row matrices is slow)."""
    return (t.reshape(-1, t.shape[-1]) @ Q).reshape(*t.shape[:-1], Q.shape[1])


def joined_inputs(inputs: Iterable[Any]) -> Iterable[Any]:
    """Consecutive batches with the same input shapes joined into one (empty ones dropped).

    The rows are chunked again by memory (`PredictiveCache`'s pieces), so this only saves per-call overhead:
    one Jacobian pass over the validation set instead of one per loader batch.
    """
    group: list[Any] = []
    for x in inputs:
        if batch_size(x) == 0:
            continue
        if group and input_signature(x) != input_signature(group[0]):
            yield cat_inputs(group)
            group = []
        group.append(x)
    if group:
        yield cat_inputs(group)


def input_rows(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, Mapping):
        return {k: v[start:stop] for k, v in x.items()}
    return x[start:stop]


def cat_inputs(group: list[Any]) -> Any:
    if len(group) == 1:
        return group[0]
    if isinstance(group[0], Mapping):
        return {k: torch.cat([x[k] for x in group]) for k in group[0]}
    return torch.cat(group)


@dataclass(frozen=True)
class Part:
    """Where one parameter tensor's eigenvalues and prior live.

    `group` indexes the parameter tensor (layer-wise priors), `start` is its offset in the flat
    parameter vector (per-parameter priors), `shape` the shape of its eigenvalues: (d_out, d_in)
    for a weight with rank-one Jacobians, (numel,) otherwise.
    """

    group: int
    start: int
    shape: tuple[int, ...]
    per_param_prior: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def delta(self, prior: Tensor, n_groups: int) -> Tensor:
        """δ at G grid points: prior (G, k) → (G, *shape) broadcastable."""
        k = prior.shape[1]
        ones = (1,) * len(self.shape)
        if k == 1:
            return prior[:, 0].reshape(-1, *ones)
        if k == n_groups:
            return prior[:, self.group].reshape(-1, *ones)
        if not self.per_param_prior:
            raise BadInputError(
                "kron supports a scalar prior precision or one per parameter tensor, "
                f"got {k} values"
            )
        return prior[:, self.start : self.start + self.numel].reshape(-1, *self.shape)


@dataclass
class RankOneBlock:
    """A weight with one input per sample (T = 1), and possibly its bias.

    u (N or 1, C, d_out) and s2 (N, d_in) in the block's eigenbasis; `bias` is the bias's part
    when it shares the basis (its Jacobian is then u as well).
    """

    weight: Part
    bias: Part | None
    u: Tensor
    s2: Tensor

    def __post_init__(self) -> None:
        self.u2 = self.u**2  # (N or 1, C, d_out), reused at every grid point
        if self.bias is not None:
            # A column of ones: the bias's 1/λ_b[g, x] joins w inside the same matmul.
            ones = torch.ones_like(self.s2[:, :1])
            self.s2 = torch.cat([self.s2, ones], dim=1)  # (N, d_in + 1)

    @property
    def parts(self) -> list[Part]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def nbytes(self) -> int:
        return (2 * self.u.numel() + self.s2.numel()) * self.u.element_size()

    def _weights(self, inv: list[Tensor]) -> Tensor:
        """w[n, g, x] = Σ_y s2[n, y] inv_w[g, x, y] + inv_b[g, x]: one matmul, (N, G, d_out)."""
        iw = inv[0]  # (G, d_out, d_in)
        if self.bias is not None:
            iw = torch.cat([iw, inv[1].unsqueeze(-1)], dim=-1)  # (G, d_out, d_in + 1)
        g, d_out, d_in = iw.shape
        return (self.s2 @ iw.reshape(g * d_out, d_in).T).reshape(-1, g, d_out)

    def add_var(self, acc: Tensor, inv: list[Tensor]) -> None:
        """acc[n, c, g] += Σ_x u_ncx² w_ngx, with acc (N, C, G)."""
        w = self._weights(inv)  # (N, G, d_out)
        if self.u2.shape[0] == 1:
            n, g, d_out = w.shape
            acc.add_((w.reshape(n * g, d_out) @ self.u2[0].T).reshape(n, g, -1).transpose(1, 2))
        else:
            acc.baddbmm_(self.u2, w.transpose(1, 2))

    def covariance(self, inv: list[Tensor]) -> Tensor:
        """Σ_x u_cx u_dx w_x per sample at one grid point: (N, C, C)."""
        w = self._weights(inv)[:, 0]  # (N, d_out)
        return (self.u * w.unsqueeze(1)) @ self.u.transpose(1, 2)


@dataclass
class DenseBlock:
    """A parameter tensor whose projected Jacobian is kept per parameter: U (N or 1, C, K)."""

    part: Part
    U: Tensor

    def __post_init__(self) -> None:
        n, c = self.U.shape[:2]
        self.U2 = (self.U**2).reshape(n * c, -1)  # (N·C, K)

    @property
    def parts(self) -> list[Part]:
        return [self.part]

    def nbytes(self) -> int:
        return 2 * self.U.numel() * self.U.element_size()

    def add_var(self, acc: Tensor, inv: list[Tensor]) -> None:
        """acc[n, c, g] += Σ_k U_nck² / λ_gk, with acc (N, C, G)."""
        n, c = self.U.shape[:2]
        r = inv[0].reshape(inv[0].shape[0], -1)  # (G, K)
        if n == 1 and acc.shape[0] != 1:
            acc.add_((self.U2 @ r.T).unsqueeze(0))
        else:
            acc.view(n * c, -1).addmm_(self.U2, r.T)

    def covariance(self, inv: list[Tensor]) -> Tensor:
        """Σ_k U_ck U_dk / λ_k at one grid point: (N or 1, C, C)."""
        return (self.U * inv[0].reshape(-1)) @ self.U.transpose(1, 2)


Block = RankOneBlock | DenseBlock
