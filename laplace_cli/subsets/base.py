"""Parameter subsets: which weights the Laplace approximation covers, and their Jacobians.

A subset hides how outputs depend on its parameters. The posterior structures only ever see
* per-layer *factors*: for an `nn.Linear` / `nn.Conv2d` weight the layer inputs `a` (B, T, d_in)
  and the output Jacobians `G = ∂f_c/∂z` (B, C, T, d_out), so that the per-sample Jacobian of
  the weight is Σ_t G[:, c, t] ⊗ a[:, t] and never has to be built; for any other parameter a
  dense per-sample Jacobian piece (B, C, numel) from `torch.func`;
* or dense per-sample Jacobians (B, C, P) for the structures that need them (full, low-rank).

`AllWeights` hooks the Linear/Conv2d layers of the model; `last_layer.LastLayer` reads the
features entering the last `nn.Linear` and has every Jacobian in closed form (G = I). Both restore the model as they
found it: hooks are removed, train/eval mode is put back, nothing is stored on the model.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from laplace_cli.core.batches import (
    Inputs,
    as_2d_output,
    call_model,
    grad_mode,
)
from laplace_cli.core.enums import KronApprox
from laplace_cli.core.errors import BadInputError
from laplace_cli.subsets.captured_jacobians import (
    agrees_with_gradient,
    capturable_params,
    captured_jacobian,
)
from laplace_cli.subsets.per_sample import (
    VmapUnavailableError,
    dense_jacobians,
    eval_mode,
    functional_forward,
    output_jacobians,
)

GroupKind = Literal["weight", "bias", "other"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParamGroup:
    """One parameter tensor of the subset.

    `kind` is "weight"/"bias" for parameters of a supported layer (`nn.Linear`, `nn.Conv2d` with
    groups=1), whose Jacobians come as layer factors, and "other" for everything else.
    """

    name: str
    shape: tuple[int, ...]
    kind: GroupKind
    module_name: str | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def kron_shape(self) -> tuple[int, int]:
        """(d_out, d_in) of a weight; conv weights flatten (C_in, kh, kw) into d_in."""
        return self.shape[0], self.numel // self.shape[0]


class NoLayerFactorsError(BadInputError):
    """A layer's Jacobian has no per-layer factors (the layer ran more than once per pass)."""


@dataclass
class LayerFactor:
    """Jacobian of one weight or bias in factored form.

    a: (B, T, d_in) layer inputs (None for a bias); G: (B, C, T, d_out) output Jacobians.
    T is the weight-sharing dimension (1 for plain Linear inputs, H·W for Conv2d).
    """

    a: Tensor | None
    G: Tensor


@dataclass
class DenseFactor:
    """Per-sample Jacobian of one parameter tensor, (B, C, numel)."""

    J: Tensor


Factor = LayerFactor | DenseFactor


def supported_layer(module: nn.Module) -> bool:
    """Layers with factored Jacobians: Linear, and Conv2d without groups."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1


def factored_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Supported layers that run as modules, so that forward hooks see their inputs and outputs.

    `nn.MultiheadAttention` uses its `out_proj` Linear's weights functionally (the module is
    never called); such layers are left out here and their parameters become "other" groups
    with dense Jacobians, rather than being dropped or failing for lack of a hook call.
    """
    skip: set[int] = set()
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            skip.update(id(c) for c in m.modules() if c is not m)
    return {n: m for n, m in model.named_modules() if supported_layer(m) and id(m) not in skip}


def conv_patches(module: nn.Conv2d, x: Tensor) -> Tensor:
    """Unfold Conv2d inputs (B, C_in, H, W) into patches (B, T, C_in·kh·kw), T = output positions.

    The same layout as `F.unfold(...).transpose(1, 2)` (patch entries ordered c, i, j), built as
    a strided view and one copy: CPU `im2col` behind `F.unfold` took up to seconds per call on
    a busy 2-core machine (its parallel loop stalls), the copy stays at memory speed.
    """
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    elif padding[0] or padding[1]:
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    view = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    view = view[..., ::dh, ::dw]  # (B, C_in, H_out, W_out, kh, kw)
    b, c, h_out, w_out = view.shape[:4]
    return view.permute(0, 2, 3, 1, 4, 5).reshape(b, h_out * w_out, c * kh * kw)


def layer_input(module: nn.Module, x: Tensor) -> Tensor:
    """Inputs of a supported layer as (B, T, d_in)."""
    if isinstance(module, nn.Conv2d):
        return conv_patches(module, x)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def layer_output_grad(module: nn.Module, g: Tensor) -> Tensor:
    """Output gradients (K, B, *out) of a supported layer as (B, K, T, d_out)."""
    if isinstance(module, nn.Conv2d):
        k, b, c = g.shape[:3]
        return g.reshape(k, b, c, -1).permute(1, 0, 3, 2)
    k, b = g.shape[:2]
    return g.reshape(k, b, -1, g.shape[-1]).transpose(0, 1)


def iter_rows(x: Inputs, rows: int) -> Iterator[Inputs]:
    """Split a batch of inputs into chunks of at most `rows` samples."""
    n = x[next(iter(x))].shape[0] if isinstance(x, dict) else x.shape[0]
    if 0 < n <= rows:  # one chunk: the batch itself (`LastLayer.reuse_forward` recognises it)
        yield x
        return
    for start in range(0, n, rows):
        if isinstance(x, dict):
            yield {k: v[start : start + rows] for k, v in x.items()}
        else:
            yield x[start : start + rows]


class ParameterSubset:
    """Interface shared by the subsets (all weights, last layer, subnetwork)."""

    model: nn.Module
    groups: list[ParamGroup]

    @property
    def n_params(self) -> int:
        return sum(g.numel for g in self.groups)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def mean(self) -> Tensor:
        """The MAP values of the subset, flattened in parameter order, (P,)."""
        raise NotImplementedError

    def output(self, x: Inputs) -> Tensor:
        """Model outputs (B, C) at the MAP, without gradients."""
        raise NotImplementedError

    def factors(self, x: Inputs) -> tuple[Tensor, list[Factor]]:
        """Outputs (B, C) and one Jacobian factor per group."""
        raise NotImplementedError

    def jacobians(self, x: Inputs) -> tuple[Tensor, Tensor]:
        """Outputs (B, C) and dense per-sample Jacobians (B, C, P). Callers chunk the batch."""
        raise NotImplementedError

    def forward_with(self, x: Inputs, theta: Tensor) -> Tensor:
        """Outputs (B, C) with the subset's parameters set to `theta` (P,)."""
        raise NotImplementedError

    def output_fn(self, x: Inputs) -> Callable[[Tensor], Tensor]:
        """θ (P,) ↦ outputs (B, C) at inputs x, differentiable in θ (matrix-free products)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def reuse_forward(self) -> Iterator[None]:
        """Within the block, calls on the *same* input batch may share one forward pass.

        For callers that run several methods on each batch of a loop (MAP outputs, then the
        predictive) while the model stays unchanged. A no-op here; `LastLayer` memoises the
        features of the latest batch, so its outputs, factors and predictive cost one pass.
        """
        yield

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Split a flat vector (P,) into named tensors of the groups' shapes."""
        out, start = {}, 0
        for g in self.groups:
            out[g.name] = theta[start : start + g.numel].reshape(g.shape)
            start += g.numel
        return out


def dense_from_factors(factors: Sequence[Factor]) -> Tensor:
    """Assemble the dense per-sample Jacobian (B, C, P) from factors (tests and full structure)."""
    pieces = []
    for fac in factors:
        if isinstance(fac, DenseFactor):
            pieces.append(fac.J)
        elif fac.a is None:
            pieces.append(fac.G.sum(2))
        else:
            jw = torch.einsum("bcto,bti->bcoi", fac.G, fac.a)
            pieces.append(jw.reshape(jw.shape[0], jw.shape[1], -1))
    return torch.cat(pieces, dim=-1)


class AllWeights(ParameterSubset):
    """Every trainable parameter (`requires_grad=True`), in `model.parameters()` order.

    Frozen parameters (e.g. the base weights of a LoRA model) are excluded and never
    differentiated.
    """

    def __init__(self, model: nn.Module, kron_approx: KronApprox = KronApprox.EXPAND) -> None:
        self.model = model
        self.kron_approx = kron_approx
        owner: dict[int, tuple[str, nn.Module, str]] = {}
        for mname, module in factored_layers(model).items():
            for role in ("weight", "bias"):
                p = getattr(module, role, None)
                if isinstance(p, nn.Parameter):
                    owner.setdefault(id(p), (mname, module, role))
        self.params: list[tuple[str, nn.Parameter]] = [
            (n, p) for n, p in model.named_parameters() if p.requires_grad
        ]
        if not self.params:
            raise BadInputError("the model has no trainable parameters (all requires_grad=False)")
        self.groups = []
        self._layers: dict[str, nn.Module] = {}
        for name, p in self.params:
            if id(p) in owner:
                mname, module, role = owner[id(p)]
                self.groups.append(ParamGroup(name, tuple(p.shape), role, mname))  # type: ignore[arg-type]
                self._layers[mname] = module
            else:
                self.groups.append(ParamGroup(name, tuple(p.shape), "other", None))
        # Embedding / LayerNorm parameters stay "other" (dense Jacobians for the structures),
        # but their Jacobians come from hook captures too, not from a per-example vmap.
        other = [g.name for g in self.groups if g.kind == "other"]
        self._captured = capturable_params(model, other)
        modules = dict(model.named_modules())
        self._captured_modules = {m: modules[m] for m, _ in self._captured.values()}

    def mean(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for _, p in self.params])

    def output(self, x: Inputs) -> Tensor:
        with torch.no_grad(), eval_mode(self.model):
            return as_2d_output(call_model(self.model, x))

    def forward_with(self, x: Inputs, theta: Tensor) -> Tensor:
        with grad_mode(), eval_mode(self.model):
            out = functional_forward(self.model, self.unflatten(theta), x)
        return as_2d_output(out)

    def output_fn(self, x: Inputs) -> Callable[[Tensor], Tensor]:
        """θ (P,) ↦ outputs (B, C), differentiable in θ (for Jacobian-vector products)."""

        def fn(theta: Tensor) -> Tensor:
            with eval_mode(self.model):
                return as_2d_output(functional_forward(self.model, self.unflatten(theta), x))

        return fn

    def jacobians(self, x: Inputs) -> tuple[Tensor, Tensor]:
        names = [g.name for g in self.groups]
        params = {n: p for n, p in self.params}
        hooked = bool(self._layers or self._captured_modules)
        try:
            f, jac = dense_jacobians(self.model, params, names, x, loop=not hooked)
            return f, torch.cat([jac[n] for n in names], dim=-1)
        except VmapUnavailableError:
            pass
        # Without vmap, the hooked layers' Jacobians cost one batched forward and C backwards
        # instead of the per-example loop; only the remaining groups loop.
        try:
            f, factors = self.factors(x)
            return f, dense_from_factors(factors)
        except NoLayerFactorsError:
            f, jac = dense_jacobians(self.model, params, names, x)
            return f, torch.cat([jac[n] for n in names], dim=-1)

    def factors(self, x: Inputs) -> tuple[Tensor, list[Factor]]:
        hooked = {**self._layers, **self._captured_modules}
        inputs: dict[str, list[Tensor]] = {m: [] for m in hooked}
        outputs: dict[str, list[Tensor]] = {m: [] for m in hooked}
        handles = []

        def make_hook(mname: str):
            def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
                inputs[mname].append(args[0].detach())
                outputs[mname].append(out)

            return hook

        for mname, module in hooked.items():
            handles.append(module.register_forward_hook(make_hook(mname)))
        dense: dict[str, Tensor] = {}
        try:
            with torch.enable_grad(), eval_mode(self.model):
                f = as_2d_output(call_model(self.model, x))
                for mname in self._layers:
                    if len(outputs[mname]) != 1:
                        why = (
                            "its weights are used without calling the module"
                            if not outputs[mname]
                            else "shared layers have no per-layer factors"
                        )
                        raise NoLayerFactorsError(
                            f"layer {mname!r} ran {len(outputs[mname])} times in one forward "
                            f"pass ({why}); use structure 'diag' or 'full' (dense Jacobians)"
                        )
                    if outputs[mname][0].shape[:1] != f.shape[:1]:
                        # e.g. a reward model that flattens (B, 2, d) pairs to (2B, d) rows:
                        # which rows belong to which example is unknown here, so the
                        # per-example factors cannot be formed (dense Jacobians can).
                        raise NoLayerFactorsError(
                            f"layer {mname!r} saw {outputs[mname][0].shape[0]} rows for a "
                            f"batch of {f.shape[0]} examples (not one row per example); use "
                            "structure 'diag' or 'full' (dense Jacobians)"
                        )
                # Captured modules count only if they ran once with one output row per example.
                captured = [
                    m
                    for m in self._captured_modules
                    if len(outputs[m]) == 1 and outputs[m][0].shape[:1] == f.shape[:1]
                ]
                outs = [outputs[m][0] for m in (*self._layers, *captured)]
                # No hookable layer (a TorchScript model): every group is dense.
                grads = output_jacobians(f, outs) if outs else []
                if captured:
                    dense = self._captured_jacobians(
                        f, captured, inputs, grads[len(self._layers) :]
                    )
        finally:
            for h in handles:
                h.remove()
        layer_in = {m: layer_input(mod, inputs[m][0]) for m, mod in self._layers.items()}
        layer_g = {m: layer_output_grad(mod, g) for (m, mod), g in zip(self._layers.items(), grads)}
        other = [g.name for g in self.groups if g.kind == "other" and g.name not in dense]
        if other:
            params = {n: p for n, p in self.params}
            dense.update(dense_jacobians(self.model, params, other, x)[1])
        factors: list[Factor] = []
        for g in self.groups:
            if g.kind == "other":
                factors.append(DenseFactor(dense[g.name]))
            elif g.kind == "weight":
                factors.append(LayerFactor(layer_in[g.module_name], layer_g[g.module_name]))
            else:
                factors.append(LayerFactor(None, layer_g[g.module_name]))
        return f.detach(), factors

    def _captured_jacobians(
        self, f: Tensor, captured: list[str], inputs: dict[str, list[Tensor]], grads: list[Tensor]
    ) -> dict[str, Tensor]:
        """{name: (B, C, numel)} for the captured modules' parameters that pass the gradient
        check (`captured_jacobians.agrees_with_gradient`)."""
        grad_of = dict(zip(captured, grads))
        params = dict(self.params)
        names = [n for n, (m, _) in self._captured.items() if m in grad_of]
        jacs = []
        for n in names:
            mname, role = self._captured[n]
            module = self._captured_modules[mname]
            jacs.append(captured_jacobian(module, role, inputs[mname][0], grad_of[mname]))
        ok = agrees_with_gradient(f, [params[n] for n in names], jacs)
        return {n: J.detach() for n, J, good in zip(names, jacs, ok) if good}
