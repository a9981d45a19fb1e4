"""Subnetwork Laplace: a posterior over chosen entries of the flattened trainable parameters.

The index space is the concatenation of every trainable parameter (`requires_grad=True`, in
`model.parameters()` order, each tensor row-major) — the same order as the "all" subset, so
`subnetwork_indices=range(P)` reproduces it exactly. Frozen parameters (e.g. the base weights of
a LoRA model) are not part of the index space and are never differentiated.

Jacobians are formed for the selected entries only (Daxberger et al. 2021, "Bayesian deep
learning via subnetwork inference"):
* a selected entry W[o, i] of an `nn.Linear` / `nn.Conv2d` weight has the per-sample Jacobian
  Σ_t G[c, t, o] a[t, i] from the layer inputs a (B, T, d_in) and output Jacobians
  G (B, C, T, d_out), gathered at the selected (o, i) pairs: the (B, C, d_out·d_in) weight
  Jacobian is never built; a bias entry b[o] has Σ_t G[c, t, o];
* any other parameter tensor that has selected entries (norms, embeddings, bare tensors) is
  differentiated through a scatter of the selected values into a constant copy of the tensor;
  tensors with no selected entry are constants of the call.

Mask helpers return sorted int64 index tensors: `largest_magnitude_indices`, `random_indices`,
`indices_by_param_name`, `indices_by_module_name`, `largest_variance_indices` (score-based ones
through `top_score_indices`). The CLI's selectors (subnetwork_select.py) and the laplace-torch
mask classes (`laplace_cli.utils`) both call these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from laplace_cli.core.batches import (
    Inputs,
    as_2d_output,
    call_model,
    grad_mode,
    keeping_graph,
    model_call_args,
)
from laplace_cli.core.errors import BadInputError
from laplace_cli.subsets.base import (
    DenseFactor,
    Factor,
    ParameterSubset,
    ParamGroup,
    factored_layers,
)
from laplace_cli.subsets.layer_capture import layer_input, layer_output_grad
from laplace_cli.subsets.per_sample import (
    call_model_functional,
    eval_mode,
    output_jacobians,
    per_sample_jacobians,
)


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters that span the subnetwork index space, in `model.parameters()` order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def flat_trainable(model: nn.Module) -> Tensor:
    """The trainable parameters flattened into one detached vector (P_total,)."""
    params = trainable_parameters(model)
    if not params:
        raise BadInputError("the model has no trainable parameters (all requires_grad=False)")
    return torch.cat([p.detach().reshape(-1) for _, p in params])


def _param_ranges(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{name: (start, stop)} of each trainable parameter in the flat index space."""
    out, start = {}, 0
    for n, p in trainable_parameters(model):
        out[n] = (start, start + p.numel())
        start += p.numel()
    return out


def check_count(n: int, total: int) -> int:
    if int(n) != n or not 1 <= int(n) <= total:
        raise BadInputError(
            f"the number of subnetwork parameters must be an integer in [1, {total}], got {n}"
        )
    return int(n)


def sorted_indices(idx: Tensor) -> Tensor:
    return torch.sort(idx.to(torch.int64).cpu()).values


def top_score_indices(scores: Tensor, n: int) -> Tensor:
    """Indices of the n largest scores (sorted, (n,)): every score-based mask ends here.

    `argsort(descending=True)[:n]`, the call of laplace-torch's `ScoreBasedSubnetMask`, so tied
    scores (e.g. zero biases in `largest_magnitude`) resolve to the same indices in both.
    """
    n = check_count(n, scores.numel())
    return sorted_indices(torch.argsort(scores.detach().reshape(-1), descending=True)[:n])


def largest_magnitude_indices(model: nn.Module, n: int) -> Tensor:
    """Indices of the n trainable parameters with the largest |θ| (sorted, (n,))."""
    return top_score_indices(flat_trainable(model).abs(), n)


def random_indices(model: nn.Module, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n trainable parameter indices drawn uniformly without replacement (sorted, (n,)).

    The n largest of uniform scores drawn like the parameters (dtype, device): with
    `generator=None` the global stream, as laplace-torch's `RandomSubnetMask`
    (`torch.rand_like` of the parameter vector), so a seeded call picks the same indices.
    """
    theta = flat_trainable(model)
    if generator is not None and generator.device != theta.device:
        theta = theta.to(generator.device)
    scores = torch.rand(theta.shape, dtype=theta.dtype, device=theta.device, generator=generator)
    return top_score_indices(scores, n)


def indices_by_param_name(model: nn.Module, names: Sequence[str] | str) -> Tensor:
    """All entries of the named trainable parameters, e.g. ["2.weight"] (sorted)."""
    names = [names] if isinstance(names, str) else list(names)
    ranges = _param_ranges(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    pieces = []
    for name in names:
        if name not in ranges:
            why = "is frozen (requires_grad=False)" if name in frozen else "does not exist"
            raise BadInputError(
                f"parameter {name!r} {why}; trainable parameters: {', '.join(ranges)}"
            )
        start, stop = ranges[name]
        pieces.append(torch.arange(start, stop))
    if not pieces:
        raise BadInputError("indices_by_param_name needs at least one parameter name")
    return sorted_indices(torch.unique(torch.cat(pieces)))


def indices_by_module_name(model: nn.Module, names: Sequence[str] | str) -> Tensor:
    """All trainable parameter entries of the named modules and their submodules (sorted)."""
    names = [names] if isinstance(names, str) else list(names)
    modules = dict(model.named_modules())
    picked: list[str] = []
    for name in names:
        if name not in modules:
            raise BadInputError(
                f"no module named {name!r}; modules: {', '.join(m for m in modules if m)}"
            )
        own = [
            f"{name}.{n}" if name else n
            for n, p in modules[name].named_parameters()
            if p.requires_grad
        ]
        if not own:
            raise BadInputError(f"module {name!r} has no trainable parameters")
        picked.extend(own)
    return indices_by_param_name(model, list(dict.fromkeys(picked)))


@dataclass
class _Selection:
    """The selected entries of one trainable parameter tensor."""

    name: str
    param: nn.Parameter
    local: Tensor  # (n_sel,) int64 indices into the flattened tensor, sorted
    module_name: str | None  # owning Linear/Conv2d, when there is one
    role: str | None  # "weight" or "bias" of that layer


class Subnetwork(ParameterSubset):
    """The entries `indices` of the flattened trainable parameters; see the module docstring.

    One group per parameter tensor with selected entries, in parameter order: name = the
    tensor's name, shape = (number of selected entries,), kind "other" (structures see dense
    per-sample Jacobians of the selected entries).
    """

    def __init__(self, model: nn.Module, indices: Tensor | Sequence[int]) -> None:
        self.model = model
        params = trainable_parameters(model)
        if not params:
            raise BadInputError("the model has no trainable parameters (all requires_grad=False)")
        total = sum(p.numel() for _, p in params)
        idx = torch.as_tensor(indices)
        if idx.numel() == 0:
            raise BadInputError("subnetwork_indices is empty")
        if idx.is_floating_point() or idx.dtype == torch.bool or idx.ndim != 1:
            raise BadInputError(
                "subnetwork_indices must be a 1-D sequence of integer indices into the flattened "
                f"trainable parameters, got dtype {idx.dtype} and shape {tuple(idx.shape)}"
            )
        idx = idx.to(torch.int64).cpu()
        if int(idx.min()) < 0 or int(idx.max()) >= total:
            raise BadInputError(
                f"subnetwork_indices must lie in [0, {total}) (the trainable parameters), got "
                f"values in [{int(idx.min())}, {int(idx.max())}]"
            )
        idx = torch.sort(idx).values
        if torch.unique(idx).numel() != idx.numel():
            raise BadInputError("subnetwork_indices repeats indices")
        self.indices = idx

        owner: dict[int, tuple[str, str]] = {}
        self._modules: dict[str, nn.Module] = {}
        for mname, module in factored_layers(model).items():
            for role in ("weight", "bias"):
                p = getattr(module, role, None)
                if isinstance(p, nn.Parameter):
                    owner.setdefault(id(p), (mname, role))
                    self._modules.setdefault(mname, module)

        self.selections: list[_Selection] = []
        self.groups = []
        start = 0
        for name, p in params:
            stop = start + p.numel()
            lo, hi = torch.searchsorted(idx, torch.tensor([start, stop]))
            local = idx[int(lo) : int(hi)] - start
            if local.numel():
                mname, role = owner.get(id(p), (None, None))
                self.selections.append(
                    _Selection(name, p, local.to(p.device), mname, role)  # type: ignore[arg-type]
                )
                self.groups.append(ParamGroup(name, (local.numel(),), "other", mname))
            start = stop

    # --- values -----------------------------------------------------------------------------
    def mean(self) -> Tensor:
        return torch.cat([s.param.detach().reshape(-1)[s.local] for s in self.selections])

    def full_vector(self, theta: Tensor) -> Tensor:
        """Subnetwork values (..., n_sel) as vectors over all trainable parameters (..., P_all),
        the entries outside the subnetwork at the model's current values (its MAP)."""
        base = torch.cat([p.detach().reshape(-1) for _, p in trainable_parameters(self.model)])
        base = base.to(device=theta.device, dtype=theta.dtype)
        out = base.expand(*theta.shape[:-1], base.numel()).clone()
        out[..., self.indices.to(theta.device)] = theta  # indices are sorted, as theta's order
        return out

    def output(self, x: Inputs) -> Tensor:
        with torch.no_grad(), eval_mode(self.model):
            return as_2d_output(call_model(self.model, x))

    def _scattered(self, theta: Tensor) -> dict[str, Tensor]:
        """{name: full tensor} with the selected entries replaced by `theta` (differentiable)."""
        out, start = {}, 0
        for s in self.selections:
            part = theta[start : start + s.local.numel()]
            base = s.param.detach().reshape(-1).to(part.dtype)
            out[s.name] = base.scatter(0, s.local, part).reshape(s.param.shape)
            start += s.local.numel()
        return out

    def forward_with(self, x: Inputs, theta: Tensor) -> Tensor:
        with grad_mode(), eval_mode(self.model):
            out = _call(self.model, self._scattered(theta), x)
        return as_2d_output(out)

    def output_fn(self, x: Inputs) -> Callable[[Tensor], Tensor]:
        """θ (P,) ↦ outputs (B, C), differentiable in θ (for Jacobian-vector products)."""

        def fn(theta: Tensor) -> Tensor:
            with eval_mode(self.model):
                return as_2d_output(_call(self.model, self._scattered(theta), x))

        return fn

    # --- Jacobians of the selected entries --------------------------------------------------
    def jacobians(self, x: Inputs) -> tuple[Tensor, Tensor]:
        if keeping_graph():
            # enable_backprop: dense Jacobians of every selected entry, differentiable in x.
            with torch.enable_grad(), eval_mode(self.model):
                f = as_2d_output(_call(self.model, self._scattered(self.mean()), x))
            dense = self._dense_selected(x, [s.name for s in self.selections])
            return f, torch.cat([dense[s.name] for s in self.selections], dim=-1)
        f, pieces = self._selected_jacobians(x)
        return f, torch.cat(pieces, dim=-1)

    def factors(self, x: Inputs) -> tuple[Tensor, list[Factor]]:
        f, pieces = self._selected_jacobians(x)
        return f, [DenseFactor(J) for J in pieces]

    def _selected_jacobians(self, x: Inputs) -> tuple[Tensor, list[Tensor]]:
        """Outputs (B, C) and one (B, C, n_sel) Jacobian per group."""
        layer_names = list(
            dict.fromkeys(s.module_name for s in self.selections if s.module_name is not None)
        )
        f, layer_in, layer_g = self._layer_factors(x, layer_names)
        dense_names = [
            s.name for s in self.selections if s.module_name is None or s.module_name not in layer_g
        ]
        dense = self._dense_selected(x, dense_names) if dense_names else {}
        pieces = []
        for s in self.selections:
            if s.name in dense:
                pieces.append(dense[s.name])
                continue
            G = layer_g[s.module_name]  # (B, C, T, d_out)
            if s.role == "bias":
                pieces.append(G.sum(2)[..., s.local])
                continue
            a = layer_in[s.module_name]  # (B, T, d_in)
            d_in = a.shape[-1]
            rows, cols = s.local // d_in, s.local % d_in
            # ∂f_c/∂W[o, i] = Σ_t G[c, t, o] a[t, i], only at the selected (o, i): (B, C, n_sel).
            pieces.append(torch.einsum("bctj,btj->bcj", G[..., rows], a[..., cols]))
        return f, pieces

    def _layer_factors(
        self, x: Inputs, layer_names: list[str]
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Outputs and, for the touched layers that ran once, inputs a and output Jacobians G."""
        inputs: dict[str, list[Tensor]] = {m: [] for m in layer_names}
        outputs: dict[str, list[Tensor]] = {m: [] for m in layer_names}
        handles = []

        def make_hook(mname: str):
            def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
                inputs[mname].append(args[0].detach())
                outputs[mname].append(out)

            return hook

        for m in layer_names:
            handles.append(self._modules[m].register_forward_hook(make_hook(m)))
        try:
            with torch.enable_grad(), eval_mode(self.model):
                f = as_2d_output(call_model(self.model, x))
                # A layer that ran more than once (shared weights) gets the dense path instead.
                usable = [m for m in layer_names if len(outputs[m]) == 1]
                grads = output_jacobians(f, [outputs[m][0] for m in usable]) if usable else []
        finally:
            for h in handles:
                h.remove()
        layer_in = {m: layer_input(self._modules[m], inputs[m][0]) for m in usable}
        layer_g = {m: layer_output_grad(self._modules[m], g) for m, g in zip(usable, grads)}
        return f.detach(), layer_in, layer_g

    def _dense_selected(self, x: Inputs, names: list[str]) -> dict[str, Tensor]:
        """Per-sample Jacobians w.r.t. the selected entries of the named tensors, (B, C, n_sel)."""
        sels = [s for s in self.selections if s.name in names]
        wrt = {s.name: s.param.detach().reshape(-1)[s.local] for s in sels}

        def single(values: dict[str, Tensor], xi: Inputs) -> tuple[Tensor, Tensor]:
            params = {}
            for s in sels:
                base = s.param.detach().reshape(-1)
                params[s.name] = base.scatter(0, s.local, values[s.name]).reshape(s.param.shape)
            one = (
                {k: v.unsqueeze(0) for k, v in xi.items()}
                if isinstance(xi, dict)
                else xi.unsqueeze(0)
            )
            out = call_model_functional(self.model, params, *model_call_args(self.model, one))
            out = out.reshape(-1)
            return out, out

        _, jac = per_sample_jacobians(self.model, single, wrt, x)
        return jac


def _call(model: nn.Module, params: dict[str, Tensor], x: Inputs) -> Tensor:
    return call_model_functional(model, params, *model_call_args(model, x))
