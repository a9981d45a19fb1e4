"""Per-sample Jacobians of a model's outputs, for the parameter subsets (subsets/base.py,
subnetwork.py): through captured layer outputs in one batched backward pass over the C outputs
(`output_jacobians`), or with respect to named parameters by `torch.func` (`vmap(jacrev)`, with
a reverse-mode loop for models that cannot be vmapped: `per_sample_jacobians`). Every call runs
the model in eval mode and restores its modes (`eval_mode`).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from laplace_cli.core.batches import (
    Inputs,
    batch_size,
    current_model_kwargs,
    detach,
    model_call_args,
)

__all__ = [
    "VmapUnavailableError",
    "call_model_functional",
    "dense_jacobians",
    "eval_mode",
    "functional_forward",
    "backward_batches",
    "output_jacobian_direction",
    "output_jacobians",
    "per_sample_jacobians",
]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (dropout off, BatchNorm on running statistics), then restore each module."""
    modes = [(m, m.training) for m in model.modules()]
    if not any(training for _, training in modes):
        yield  # already in eval mode (the usual case when predicting): nothing to switch
        return
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


def output_jacobians(
    f: Tensor, outs: list[Tensor], cotangents: Tensor | None = None
) -> list[Tensor]:
    """∂f_c/∂z for every output c and each captured layer output z: list of (C, B, *z.shape[1:]).

    Samples are independent in eval mode, so the gradient of Σ_b f[b, c] w.r.t. z[b] is the
    per-sample Jacobian row. One batched backward pass over the C outputs, or C plain backward
    passes where the graph holds operations that `is_grads_batched` (autograd's legacy vmap)
    cannot batch: it would run those one cotangent at a time anyway and concatenate the pieces
    after each of them (measured ~25 % slower on a conv net with BatchNorm). Both give the same
    numbers; the loop is also the fallback when the batched pass fails.

    `cotangents` (K, B, C), rows w_k: back-propagate those instead of the C unit vectors, giving
    Σ_c w_k[b, c] ∂f_c/∂z[b] (K, B, ...): K passes instead of C when only the projections are
    needed (a curvature's output-space root, docs/design.md "Projected output roots").
    """
    if cotangents is None:
        n_out = f.shape[1]
        eye = torch.eye(n_out, dtype=f.dtype, device=f.device)
        cotangents = eye.unsqueeze(1).expand(n_out, f.shape[0], n_out)
    n_out = cotangents.shape[0]
    try:
        if _unbatched_backward(f):
            raise _LoopInstead
        grads = torch.autograd.grad(
            f,
            outs,
            grad_outputs=cotangents,
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
    except (RuntimeError, _LoopInstead):
        # Each pass is written into its slot as it comes (no list of C results and a stack
        # after: half the peak memory, one copy).
        grads = tuple(o.new_empty((n_out, *o.shape)) for o in outs)
        for c in range(n_out):
            per_c = torch.autograd.grad(
                f, outs, grad_outputs=cotangents[c], retain_graph=True, allow_unused=True
            )
            for out, g in zip(grads, per_c):
                out[c].zero_() if g is None else out[c].copy_(g)
    return [
        g if g is not None else torch.zeros((n_out, *o.shape), dtype=o.dtype, device=o.device)
        for g, o in zip(grads, outs)
    ]


class _LoopInstead(Exception):
    """`output_jacobians`: take the per-output loop."""


#: Backward nodes without a batching rule in autograd's legacy vmap (`is_grads_batched`), found
#: with `torch._C._debug_only_display_vmap_fallback_warnings(True)` (torch 2.13).
_NO_BATCH_RULE = frozenset(
    {"ConvolutionBackward0", "NativeBatchNormBackward0", "MaxPool2DWithIndicesBackward0"}
)


def backward_batches(f: Tensor) -> bool:
    """Can autograd back-propagate several cotangents through `f`'s graph in one batched pass
    (`is_grads_batched`)? False where the graph holds a node without a batching rule."""
    return not _unbatched_backward(f)


def output_jacobian_direction(f: Tensor, outs: list[Tensor], cotangent: Tensor) -> list[Tensor]:
    """One row of `output_jacobians(f, outs, cotangents)`: the gradients of Σ_b w[b]·f[b] with
    respect to each captured output for one cotangent w (B, C), each as (1, B, *z.shape[1:])
    (zeros where an output does not reach f). The graph is kept for the next direction."""
    grads = torch.autograd.grad(
        f, outs, grad_outputs=cotangent, retain_graph=True, allow_unused=True
    )
    return [(torch.zeros_like(o) if g is None else g).unsqueeze(0) for g, o in zip(grads, outs)]


def _unbatched_backward(f: Tensor) -> bool:
    """Does the graph behind `f` hold a node of `_NO_BATCH_RULE`? (A walk over its nodes.)"""
    seen: set[int] = set()
    stack = [f.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ in _NO_BATCH_RULE:
            return True
        stack.extend(nxt for nxt, _ in node.next_functions)
    return False


def functional_forward(model: nn.Module, params: dict[str, Tensor], x: Inputs) -> Tensor:
    args, kwargs = model_call_args(model, x)
    return call_model_functional(model, params, args, kwargs)


def call_model_functional(
    model: nn.Module, params: dict[str, Tensor], args: tuple, kwargs: dict
) -> Tensor:
    kwargs = {**kwargs, **current_model_kwargs()}  # la(x, **model_kwargs)
    if isinstance(model, torch.jit.ScriptModule):
        # functional_call refuses compiled modules; substitute their attributes instead.
        from laplace_cli.subsets.scripted import script_parameters

        with script_parameters(model, params):
            out = model(*args, **kwargs)
    else:
        out = functional_call(model, params, args, kwargs, strict=False)
    if hasattr(out, "logits"):
        out = out.logits
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def dense_jacobians(
    model: nn.Module,
    all_params: dict[str, Tensor],
    names: list[str],
    x: Inputs,
    loop: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-sample Jacobians of the outputs w.r.t. the named parameters: {name: (B, C, numel)}.

    Only the named parameters are differentiated (the others are constants of the call), so a
    subset never pays for a full Jacobian that is sliced afterwards.
    """
    wrt = {n: all_params[n].detach() for n in names}

    def single(p: dict[str, Tensor], xi: Inputs) -> tuple[Tensor, Tensor]:
        one = (
            {k: v.unsqueeze(0) for k, v in xi.items()} if isinstance(xi, dict) else xi.unsqueeze(0)
        )
        out = call_model_functional(model, p, *model_call_args(model, one))
        out = out.reshape(-1)
        return out, out

    f, jac = per_sample_jacobians(model, single, wrt, x, loop=loop)
    return f, {n: j.reshape(j.shape[0], j.shape[1], -1) for n, j in jac.items()}


#: Models whose forward cannot run under `torch.func.vmap`: data-dependent control flow (e.g.
#: transformers' attention-mask code branches on `padding_mask.all()`), `.item()`, operations
#: torch.func cannot batch. Their per-sample Jacobians come from `_looped_jacobians`; the set
#: makes the failed vmap attempt a once-per-model cost, not a per-batch one.
_NO_VMAP: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class VmapUnavailableError(RuntimeError):
    """`per_sample_jacobians(..., loop=False)`: the model cannot run under vmap."""


def per_sample_jacobians(
    model: nn.Module,
    single: Callable[[dict[str, Tensor], Inputs], tuple[Tensor, Tensor]],
    wrt: dict[str, Tensor],
    x: Inputs,
    loop: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Outputs (B, C) and per-sample Jacobians {name: (B, C, *shape)} w.r.t. `wrt`.

    `single(p, xi)` maps the parameters and one example without its batch dimension to
    `(out, out)`, out (C,). Fast path: `vmap(jacrev(single))`. Where the model cannot be
    vmapped, a plain reverse-mode loop (one forward per example, one backward per output),
    which works on anything autograd can differentiate; with `loop=False`, VmapUnavailableError
    instead (for callers that have a cheaper way).
    """
    if model not in _NO_VMAP:
        try:
            with eval_mode(model):
                jac, f = vmap(jacrev(single, has_aux=True), in_dims=(None, 0))(wrt, x)
            # Inside `keep_graph()` (enable_backprop) both stay differentiable in the inputs.
            return detach(f), {n: detach(j) for n, j in jac.items()}
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError) as err:
            # Not an error of the model itself: the loop below runs the same forward, so a
            # genuine failure is raised again there, without vmap in the way.
            _NO_VMAP.add(model)
            logger.info("per-sample Jacobians without vmap (%s: %s)", type(err).__name__, err)
    if not loop:
        raise VmapUnavailableError(f"{type(model).__name__} cannot run under torch.func.vmap")
    return _looped_jacobians(model, single, wrt, x)


def _looped_jacobians(
    model: nn.Module,
    single: Callable[[dict[str, Tensor], Inputs], tuple[Tensor, Tensor]],
    wrt: dict[str, Tensor],
    x: Inputs,
) -> tuple[Tensor, dict[str, Tensor]]:
    """`per_sample_jacobians` by reverse mode alone: B forwards of one example, B·C backwards.

    Parameters are shared by the examples of a batch, so per-example gradients cannot be
    separated from one batched backward pass; each example runs on its own (as under vmap).
    """
    names = list(wrt)
    fs: list[Tensor] = []
    rows: dict[str, list[Tensor]] = {n: [] for n in names}
    with torch.enable_grad(), eval_mode(model):
        for b in range(batch_size(x)):
            xi = {k: v[b] for k, v in x.items()} if isinstance(x, Mapping) else x[b]
            p = {n: t.detach().requires_grad_(True) for n, t in wrt.items()}
            out, _ = single(p, xi)
            n_out = out.shape[0]
            per_c: list[tuple[Tensor | None, ...]] = [
                torch.autograd.grad(
                    out[c], [p[n] for n in names], retain_graph=c < n_out - 1, allow_unused=True
                )
                for c in range(n_out)
            ]
            for i, n in enumerate(names):
                rows[n].append(
                    torch.stack(
                        [g[i] if g[i] is not None else torch.zeros_like(p[n]) for g in per_c]
                    )
                )
            fs.append(out.detach())
    return torch.stack(fs), {n: torch.stack(r) for n, r in rows.items()}
