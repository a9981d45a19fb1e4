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

`CapturedJacobians` holds which parameters of a model are captured and computes their
Jacobians for a captured forward pass (`subsets.layer_capture`). Only exact `nn.Embedding` /
`nn.LayerNorm` / `nn.BatchNorm1d/2d/3d` modules whose parameter no other module holds are taken
(BatchNorm only with running statistics: without them it normalises by batch statistics even in
eval mode), only when the module ran once with a per-example output (batch dimension B), and
the first batch of each shape is checked: Σ_b u_b·J_b must equal the gradient of Σ_b u_b·f_b
for a random u. A parameter
that fails (e.g. also used outside its module) gets the generic dense Jacobian instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from laplace_cli.subsets.layer_capture import LayerCapture

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


class CapturedJacobians:
    """The parameters among `names` of `model` whose per-sample Jacobians come from hook
    captures, and those Jacobians for one captured forward pass (`jacobians`).

    `params`: {parameter name: (module name, "weight"/"bias")}; `modules`: {module name: module},
    the modules `capture_forward` hooks for them.
    """

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.params = capturable_params(model, names)
        named = dict(model.named_modules())
        self.modules = {m: named[m] for m, _ in self.params.values()}
        # The parameters that passed the gradient check, per batch signature.
        self._passed: dict[tuple, set[str]] = {}

    def jacobians(
        self,
        cap: LayerCapture,
        grads: list[Tensor],
        params: Mapping[str, Tensor],
        W: Tensor | None = None,
        only: set[str] | None = None,
    ) -> dict[str, Tensor]:
        """{name: (B, C, numel)} (or (B, K, numel) of the outputs projected by W) for the
        captured parameters that pass the gradient check (`agrees_with_gradient`), from the
        output gradients `grads` of `cap.captured` (in that order) and the model's `params`;
        `only`: these names, already checked on another column of the same batch.

        The check costs one more backward pass per batch (6 % of a BatchNorm CNN's K-FAC fit)
        and what it catches (a parameter also used outside its module, outputs that mix
        examples) is a property of the model's code, not of the numbers: it runs once per
        signature of a batch (output and captured shapes, dtype) — a fit's full batches and its
        last one — and its verdict holds for the batches of the same signature.
        """
        if not cap.captured:
            return {}
        key = (
            cap.f.dtype,
            tuple(cap.f.shape),
            *(tuple(cap.outputs[m].shape) for m in cap.captured),
        )
        checked = only is not None or key in self._passed
        if only is None:
            only = self._passed.get(key)
        grad_of = dict(zip(cap.captured, grads))
        names = [n for n, (m, _) in self.params.items() if m in grad_of]
        if only is not None:
            names = [n for n in names if n in only]
        jacs = []
        for n in names:
            mname, role = self.params[n]
            module = self.modules[mname]
            inp = cap.inputs[mname]
            if mname not in cap.normalised:  # once per batch, shared by all directions
                cap.normalised[mname] = normalised_input(module, inp, grad_of[mname].dtype)
            jacs.append(captured_jacobian(module, role, inp, grad_of[mname], cap.normalised[mname]))
        if checked:
            return {n: J.detach() for n, J in zip(names, jacs)}
        ok = agrees_with_gradient(cap.f, [params[n] for n in names], jacs, W)
        self._passed[key] = {n for n, good in zip(names, ok) if good}
        return {n: J.detach() for n, J, good in zip(names, jacs, ok) if good}
