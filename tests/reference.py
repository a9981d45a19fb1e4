"""Brute-force references: dense per-sample Jacobians and loss Hessians from torch.autograd.

Written independently of the library: per-sample loops, `torch.func.jacrev` on a flat parameter
vector, loss Hessians by `torch.autograd.functional.hessian` of the loss itself.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F


def subset_params(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


def flat(params: dict[str, Tensor]) -> Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflat(theta: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    out, i = {}, 0
    for n, p in like.items():
        out[n] = theta[i : i + p.numel()].reshape(p.shape)
        i += p.numel()
    return out


def jacobians(model: nn.Module, names: list[str], X: Tensor) -> tuple[Tensor, Tensor]:
    """f (N, C) and J (N, C, P) by a loop over samples."""
    like = subset_params(model, names)
    theta = flat(like)

    def f(th: Tensor, x: Tensor) -> Tensor:
        return functional_call(model, unflat(th, like), (x.unsqueeze(0),)).reshape(-1)

    fs, Js = [], []
    for x in X:
        fs.append(f(theta, x).detach())
        Js.append(jacrev(f)(theta, x).detach())
    return torch.stack(fs), torch.stack(Js)


def loss_fn(likelihood: str, f: Tensor, y: Tensor) -> Tensor:
    """Per-sample loss: cross-entropy, ½‖y − f‖² or BCE-with-logits, summed over outputs."""
    if likelihood == "classification":
        return F.cross_entropy(f.unsqueeze(0), y.reshape(1).long(), reduction="sum")
    if likelihood == "regression":
        return 0.5 * ((f - y) ** 2).sum()
    return F.binary_cross_entropy_with_logits(f, y, reduction="sum")


def loss_hessians(likelihood: str, f: Tensor, y: Tensor) -> Tensor:
    return torch.stack(
        [
            torch.autograd.functional.hessian(lambda ff, yi=yi: loss_fn(likelihood, ff, yi), fi)
            for fi, yi in zip(f, y)
        ]
    )


def ggn(model: nn.Module, names: list[str], X: Tensor, y: Tensor, likelihood: str) -> Tensor:
    f, J = jacobians(model, names, X)
    H = loss_hessians(likelihood, f, y)
    return torch.einsum("ncp,ncd,ndq->pq", J, H, J)


def empirical_fisher(
    model: nn.Module, names: list[str], X: Tensor, y: Tensor, likelihood: str
) -> Tensor:
    like = subset_params(model, names)
    theta = flat(like)
    total = torch.zeros(theta.numel(), theta.numel())
    for x, yi in zip(X, y):
        th = theta.clone().requires_grad_(True)
        out = functional_call(model, unflat(th, like), (x.unsqueeze(0),)).reshape(-1)
        (g,) = torch.autograd.grad(loss_fn(likelihood, out, yi), th)
        total += torch.outer(g, g)
    return total


def total_loss(model: nn.Module, X: Tensor, y: Tensor, likelihood: str) -> Tensor:
    with torch.no_grad():
        f = model(X)
    return sum(loss_fn(likelihood, fi, yi) for fi, yi in zip(f, y))


def dense_log_marglik(
    loss: Tensor,
    H: Tensor,
    mean: Tensor,
    prior_vec: Tensor,
    likelihood: str,
    n_data: int,
    n_out: int,
    sigma: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """log p(D|θ*) − ½ (log det(H s + P₀) − log det P₀ + θᵀ P₀ θ) with a dense matrix."""
    if likelihood == "regression":
        s = 1.0 / (sigma**2 * temperature)
        log_lik = -s * loss - n_data * n_out * torch.log(sigma * math.sqrt(2 * math.pi))
    else:
        s = 1.0 / temperature
        log_lik = -s * loss
    post = s * H + torch.diag(prior_vec)
    return log_lik - 0.5 * (
        torch.logdet(post) - torch.log(prior_vec).sum() + (mean * prior_vec * mean).sum()
    )


def dense_precision(la) -> Tensor:
    """`la.posterior_precision` as a dense (P, P) matrix (as laplace-torch, kron returns a
    `KronDecomposed` and diag the vector (P,))."""
    P = la.posterior_precision
    if hasattr(P, "to_matrix"):
        return P.to_matrix()
    return torch.diag(P) if P.ndim == 1 else P
