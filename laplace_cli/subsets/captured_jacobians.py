"""Per-sample Jacobians of `nn.Embedding`, `nn.LayerNorm` and `nn.BatchNorm*d` parameters from
forward-hook captures.

Like the Linear/Conv2d factors of `subsets.AllWeights`, one batched forward pass and C backward
passes to the module outputs give every example's Jacobian: for an embedding with indices
idx (B, T) and output Jacobians G = ∂f_c/∂z (B, C, T, D), J_b[c, v, :] = Σ_{t: idx[b,t]=v}
G[b, c, t]; for a LayerNorm with normalised inputs x̂ (B, T, n), J_b[c] = Σ_t G[b, c, t] ⊙ x̂[b, t]
(weight) and Σ_t G[b, c, t] (bias); for a BatchNorm in eval mode (running statistics, so examples
stay independent) with x̂ = (x − μ_run)/√(σ²_run + ε) (B, ch, S), J_b[c] = Σ_s G[b, c, :, s] ⊙
x̂[b, :, s] (weight) and Σ_s G[b, c, :, s] (bias). No `torch.func.vmap` is involved, so this also
serves models that vmap cannot run (transformers' attention-mask code branches on the data), and
it costs no pass beyond the C backward passes the Linear/Conv2d factors need anyway.

Only exact `nn.Embedding` / `nn.LayerNorm` / `nn.BatchNorm1d/2d/3d` modules whose parameter no
other module holds are taken (BatchNorm only with running statistics: without them it normalises
by batch statistics even in eval mode), only when the module ran once with a per-example output
(batch dimension B), and every
batch is checked: Σ_b u_b·J_b must equal the gradient of Σ_b u_b·f_b for a random u. A parameter
that fails (e.g. also used outside its module) gets the generic dense Jacobian instead.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _capturable(module: nn.Module) -> bool:
    if type(module) is nn.Embedding:  # subclasses may compute something else
        return module.max_norm is None and not module.scale_grad_by_freq and not module.sparse
    if type(module) in _BATCH_NORMS:
        return module.affine and module.running_mean is not None and module.running_var is not None
    return type(module) is nn.LayerNorm and module.elementwise_affine


def capturable_params(model: nn.Module, names: list[str]) -> dict[str, tuple[str, str]]:
    """{parameter name: (module name, "weight"/"bias")} for those of `names` that have captured
    Jacobians: held by exactly one module (tied weights are left out), an Embedding, LayerNorm or
    BatchNorm with running statistics."""
    holders: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for role, p in module.named_parameters(recurse=False):
            holders.setdefault(id(p), []).append((mname, module, role))
    params = dict(model.named_parameters())
    out: dict[str, tuple[str, str]] = {}
    for name in names:
        held = holders.get(id(params[name]), [])
        if len(held) == 1 and _capturable(held[0][1]):
            out[name] = (held[0][0], held[0][2])
    return out


def normalised_input(module: nn.Module, inp: Tensor, dtype: torch.dtype) -> Tensor | None:
    """x̂ of a BatchNorm (B, ch, S) or LayerNorm (B, T, n) input, the factor its weight's Jacobian
    multiplies the output gradients with; None for an Embedding. The same for every output
    direction of a batch, so callers that back-propagate several directions compute it once."""
    batch = inp.shape[0]
    if isinstance(module, _BATCH_NORMS):
        # Eval mode: the module normalised by its running statistics (`eval_mode` in the caller).
        scale = torch.rsqrt(module.running_var.to(dtype) + module.eps)
        mean = module.running_mean.to(dtype)
        ch = module.num_features
        return (inp.detach().reshape(batch, ch, -1).to(dtype) - mean[:, None]) * scale[:, None]
    if isinstance(module, nn.LayerNorm):
        n = math.prod(module.normalized_shape)
        xhat = F.layer_norm(inp.detach(), module.normalized_shape, eps=module.eps)
        return xhat.reshape(batch, -1, n).to(dtype)
    return None


def captured_jacobian(
    module: nn.Module, role: str, inp: Tensor, grad: Tensor, xhat: Tensor | None = None
) -> Tensor:
    """Per-sample Jacobian (B, C, numel) of `module.<role>` from its input and output gradients
    `grad` (C, B, *output shape[1:]); `xhat`: `normalised_input(module, inp, grad.dtype)` if the
    caller already has it."""
    n_out, batch = grad.shape[:2]
    if isinstance(module, nn.Embedding):
        dim = module.embedding_dim
        G = grad.reshape(n_out, batch, -1, dim).transpose(0, 1)  # (B, C, T, D)
        idx = inp.reshape(batch, 1, -1, 1).expand(-1, n_out, -1, dim)
        J = grad.new_zeros(batch, n_out, module.num_embeddings, dim)
        J.scatter_add_(2, idx, G)
        if module.padding_idx is not None:
            J[:, :, module.padding_idx] = 0  # autograd gives the padding row no gradient
        return J.reshape(batch, n_out, -1)
    if isinstance(module, _BATCH_NORMS):
        ch = module.num_features
        G = grad.reshape(n_out, batch, ch, -1)  # (C, B, ch, S)
        if role == "bias":
            return G.sum(3).transpose(0, 1)
        if xhat is None:
            xhat = normalised_input(module, inp, G.dtype)
        # A multiply and a sum over the contiguous last dimension: the einsum's batched
        # (1 × S)·(S × 1) products ran ~3× slower (2.35 → 0.70 ms with the bias sum, one column
        # of 128 examples × 16 channels × 784 positions, one thread).
        return (G * xhat).sum(3).transpose(0, 1)
    assert isinstance(module, nn.LayerNorm)
    n = math.prod(module.normalized_shape)
    G = grad.reshape(n_out, batch, -1, n).transpose(0, 1)  # (B, C, T, n)
    if role == "bias":
        return G.sum(2)
    if xhat is None:
        xhat = normalised_input(module, inp, G.dtype)
    return torch.einsum("bctn,btn->bcn", G, xhat)


def agrees_with_gradient(
    f: Tensor, params: list[Tensor], jacobians: list[Tensor], W: Tensor | None = None
) -> list[bool]:
    """Per parameter: Σ_b u_b·J_b equals ∂(Σ_b u_b·f_b)/∂θ for a fixed random u (B, C)?

    Catches what the hooks cannot see (the parameter also used outside its module, an output
    that mixes examples). `f` must still have its graph. With `W` (B, C, K) the Jacobians are
    those of the projected outputs Wᵀf, (B, K, numel), and u is (B, K).
    """
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = f.shape if W is None else W.shape[::2]
    u = torch.randn(shape, generator=g, dtype=torch.float64).to(device=f.device, dtype=f.dtype)
    cotangent = u if W is None else torch.einsum("bck,bk->bc", W.to(f.dtype), u)
    grads = torch.autograd.grad(
        f, params, grad_outputs=cotangent, retain_graph=True, allow_unused=True
    )
    out = []
    tol = 1e-10 if f.dtype == torch.float64 else 1e-4
    for p, grad, J in zip(params, grads, jacobians):
        expected = torch.zeros_like(p) if grad is None else grad
        got = torch.einsum("bc,bcp->p", u.to(J.dtype), J).to(expected.dtype)
        scale = float(expected.abs().max().clamp_min(got.abs().max()))
        err = float((got - expected.reshape(-1)).abs().max()) if got.numel() else 0.0
        out.append(err <= tol * scale + 1e-30)
    return out
