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
import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from laplace_cli.core.batches import (
    Inputs,
    as_2d_output,
    call_model,
    grad_mode,
)
from laplace_cli.core.enums import KronApprox
from laplace_cli.core.errors import BadInputError
from laplace_cli.subsets.captured_jacobians import CapturedJacobians
from laplace_cli.subsets.conv_input_gram import input_gram_route

# The data types live in subsets/factors.py; importers of subsets.base keep working.
from laplace_cli.subsets.factors import (
    DenseFactor as DenseFactor,
)
from laplace_cli.subsets.factors import (
    Factor as Factor,
)
from laplace_cli.subsets.factors import (
    GroupKind as GroupKind,
)
from laplace_cli.subsets.factors import (
    LayerFactor as LayerFactor,
)
from laplace_cli.subsets.factors import (
    ParamGroup as ParamGroup,
)
from laplace_cli.subsets.factors import RootClosedForms
from laplace_cli.subsets.layer_capture import (
    LayerCapture,
    NoLayerFactorsError,
    capture_forward,
    layer_input,
    layer_output_grad,
)
from laplace_cli.subsets.per_sample import (
    VmapUnavailableError,
    dense_jacobians,
    eval_mode,
    functional_forward,
    output_jacobians,
)
from laplace_cli.subsets.root_pieces import output_layer, root_pieces

logger = logging.getLogger(__name__)

#: A layer's inputs (B, T, d_in), or a builder of them called on first use (`LayerFactor.a`).
InputsOrBuilder = Tensor | Callable[[], Tensor]
#: Per layer, `LayerFactor.input_gram`.
InputGrams = dict[str, Callable[[torch.dtype], Tensor]]


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
        self.captured = CapturedJacobians(model, [g.name for g in self.groups if g.kind == "other"])

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
        hooked = bool(self._layers or self.captured.modules)
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
        cap = capture_forward(self.model, x, self._layers, self.captured.modules)
        # No hookable layer (a TorchScript model): every group is dense.
        grads = output_jacobians(cap.f, cap.outs) if cap.outs else []
        n_layers = len(cap.layers)
        dense = self.captured.jacobians(cap, grads[n_layers:], dict(self.params))
        layer_in, input_grams = self._layer_inputs(cap)
        layer_g = dict(zip(cap.layers, grads[:n_layers]))
        dense.update(self._other_jacobians(x, set(dense), None))
        return cap.f.detach(), self._assemble(layer_in, layer_g, dense, input_grams)

    def factor_directions(
        self,
        x: Inputs,
        root: Callable[[Tensor], Tensor],
        max_bytes: int | None = None,
        closed: RootClosedForms | None = None,
    ) -> tuple[Tensor, Iterator[list[Factor]]]:
        """The factors of the K projected outputs Wᵀf, W = root(f) (B, C, K), in pieces that sum
        to the curvature Σ Jᵀ W Wᵀ J: outputs (B, C) and an iterator over lists of factors, each
        for some of W's K columns (G (B, k, T, d_out), dense pieces (B, k, numel)). K backward
        passes with W's columns as cotangents replace the C unit vectors of `factors`.

        Where autograd can batch the K cotangents in one pass the iterator yields everything at
        once; where it cannot (conv / BatchNorm / max-pool graphs, one backward per cotangent
        anyway) it yields one column per backward pass, so no (K, B, ...) buffer of all output
        gradients is ever stacked: a diag / kron fit adds each as it comes
        (`Posterior.accumulate_directions`). The layer inputs are shared by all pieces.
        `max_bytes`: a batched pass takes at most as many columns as keep its stacked output
        gradients (k, B, ...) under a quarter of this (K = 999 columns of a 1000-class model
        would stack 2 GB per 4096-wide layer and batch of 128).
        `closed`: the root's closed forms; where f is a Linear layer's output, that layer's
        output factor is `closed.gram(f)` (`LayerFactor.gram`; C² flops per example where the
        Gram over the C − 1 root columns is C³) and the cotangents start at its input
        (`root_pieces`).
        """
        cap = capture_forward(self.model, x, self._layers, self.captured.modules)
        W = root(cap.f.detach()).to(cap.f.dtype)
        out_layer = output_layer(cap, self._layers) if closed is not None else None
        grams = {}
        if closed is not None and out_layer is not None:
            grams = {out_layer: closed.gram(cap.f.detach())}
        weight = getattr(self._layers[out_layer], "weight", None) if out_layer else None
        pieces = root_pieces(cap, W, max_bytes, closed, out_layer, weight)
        layer_in, input_grams = self._layer_inputs(cap)
        return cap.f.detach(), self._directions(x, cap, layer_in, input_grams, W, pieces, grams)

    def _layer_inputs(self, cap: LayerCapture) -> tuple[dict[str, InputsOrBuilder], InputGrams]:
        """The layers' inputs `a` (`layer_input`) and their `LayerFactor.input_gram` routes
        where one is cheaper than the patches' Gram; those layers' patches are built on first
        use only (once per batch, shared by the pieces), which a K-FAC fit never makes."""
        layer_in: dict[str, InputsOrBuilder] = {}
        input_grams: InputGrams = {}
        for m in cap.layers:
            module, x = self._layers[m], cap.inputs[m]
            route = input_gram_route(module, x)
            if route is None:
                layer_in[m] = layer_input(module, x)
            else:
                input_grams[m] = route
                layer_in[m] = functools.cache(functools.partial(layer_input, module, x))
        return layer_in, input_grams

    def _directions(
        self,
        x: Inputs,
        cap: LayerCapture,
        layer_in: dict[str, InputsOrBuilder],
        input_grams: InputGrams,
        W: Tensor,
        pieces: Iterator[tuple[Tensor, list[Tensor]]],
        grams: dict[str, Tensor],
    ) -> Iterator[list[Factor]]:
        n_layers = len(cap.layers)
        params = dict(self.params)
        good: set[str] | None = None  # captured Jacobians that passed the check (first piece)
        other: dict[str, Tensor] = {}
        start = 0
        for w, grads in pieces:
            dense = self.captured.jacobians(cap, grads[n_layers:], params, w, only=good)
            if good is None:
                good = set(dense)
                # The remaining groups' dense Jacobians: once, projected on all K columns.
                other = self._other_jacobians(x, good, W)
            k = w.shape[-1]
            dense.update({n: J[:, start : start + k] for n, J in other.items()})
            layer_g = dict(zip(cap.layers, grads[:n_layers]))
            # The closed-form grams hold all K columns: the first piece carries them.
            piece_grams = (
                grams if start == 0 else {m: t.new_zeros(t.shape) for m, t in grams.items()}
            )
            start += k
            yield self._assemble(layer_in, layer_g, dense, input_grams, piece_grams)

    def _other_jacobians(self, x: Inputs, done: set[str], W: Tensor | None) -> dict[str, Tensor]:
        """Dense per-sample Jacobians (B, C, numel) — projected to (B, K, numel) by W — of the
        "other" groups without captured Jacobians (vmap over the examples)."""
        other = [g.name for g in self.groups if g.kind == "other" and g.name not in done]
        if not other:
            return {}
        jac = dense_jacobians(self.model, dict(self.params), other, x)[1]
        if W is None:
            return jac
        return {n: torch.einsum("bck,bcp->bkp", W.to(J.dtype), J) for n, J in jac.items()}

    def _assemble(
        self,
        layer_in: dict[str, InputsOrBuilder],
        layer_g: dict[str, Tensor],
        dense: dict[str, Tensor],
        input_grams: InputGrams,
        grams: Mapping[str, Tensor] | None = None,
    ) -> list[Factor]:
        """One factor per group from the layer inputs, output gradients (K, B, ...), dense
        Jacobians, input-factor routes (`LayerFactor.input_gram`) and closed-form output factors
        (`LayerFactor.gram`)."""
        factors: list[Factor] = []
        # A layer's weight and bias factors hold the same G object: the posterior computes their
        # shared output factor Σ g gᵀ once per layer, keyed on identity (a (d_out, d_out) product
        # over B·K·T rows, the largest cost of a wide MLP's K-FAC fit).
        grads: dict[str, Tensor] = {}
        for g in self.groups:
            if g.kind == "other":
                factors.append(DenseFactor(dense[g.name]))
                continue
            if g.module_name not in grads:
                module = self._layers[g.module_name]
                grads[g.module_name] = layer_output_grad(module, layer_g[g.module_name])
            G, gram = grads[g.module_name], (grams or {}).get(g.module_name)
            if g.kind == "weight":
                a, route = layer_in[g.module_name], input_grams.get(g.module_name)
                factors.append(LayerFactor(a, G, gram, route))
            else:
                factors.append(LayerFactor(None, G, gram))
        return factors
