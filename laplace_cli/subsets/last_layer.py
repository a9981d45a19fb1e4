"""The last-layer subset: the weights of the final `nn.Linear`, Jacobians in closed form.

Kept apart from `subsets.py` (the shared factor types and `AllWeights`) because it carries its
own machinery: a forward hook on the features, feature reduction for (B, T, d) inputs, and the
memo that lets one forward pass per batch serve the MAP outputs and the predictive
(`reuse_forward`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from laplace_cli.core.batches import Inputs, as_2d_output, call_model, detach, grad_mode
from laplace_cli.core.errors import BadInputError, MissingKeyError
from laplace_cli.subsets.base import (
    Factor,
    LayerFactor,
    ParameterSubset,
    ParamGroup,
    dense_from_factors,
    eval_mode,
)
from laplace_cli.subsets.scripted import is_script_module, linear_modules, script_parameters


def run_capturing_head_input(
    model: nn.Module, head: nn.Module, x: Inputs
) -> tuple[Tensor, list[Tensor]]:
    """The model's outputs at x (eval mode) and every input the head received during the pass
    (detached unless inside `keep_graph()`)."""
    captured: list[Tensor] = []
    handle = head.register_forward_hook(lambda m, a, o: captured.append(detach(a[0])))
    try:
        with grad_mode(), eval_mode(model):
            out = call_model(model, x)
    finally:
        handle.remove()
    return out, captured


def single_head_input(captured: list[Tensor], last_layer_name: str | None) -> Tensor:
    """φ: the head's one input of the pass; a head that ran more or less than once has no
    last-layer closed form."""
    if len(captured) != 1:
        raise BadInputError(
            f"last layer {last_layer_name!r} ran {len(captured)} times in one forward pass"
        )
    return captured[0]


def _memo_rows(memo: list[Tensor], versions: list[int], leaves: list[Tensor]) -> slice | None:
    """The rows of the memoised batch `memo` that `leaves` are, or None.

    A leaf matches when it is the memoised tensor, or a slice of rows of it (a view on the same
    storage with the same strides and trailing shape, as `iter_rows` makes for chunks and
    probes), unmodified since (views share the version counter), the same rows for every leaf.
    """
    rows: slice | None = None
    for m, v, q in zip(memo, versions, leaves, strict=True):
        if q._version != v:
            return None
        if m.ndim == 0:
            return None
        if q is m:
            r = slice(0, m.shape[0])
        else:
            if (
                q.ndim == 0
                or q.ndim != m.ndim
                or q.dtype != m.dtype
                or q.device != m.device
                or q.shape[1:] != m.shape[1:]
                or q.stride() != m.stride()
                or m.stride(0) <= 0
                or q.untyped_storage().data_ptr() != m.untyped_storage().data_ptr()
            ):
                return None
            offset = q.storage_offset() - m.storage_offset()
            if offset % m.stride(0):
                return None
            start = offset // m.stride(0)
            if start < 0 or start + q.shape[0] > m.shape[0]:
                return None
            r = slice(start, start + q.shape[0])
        if rows is not None and r != rows:
            return None
        rows = r
    return rows


class LastLayer(ParameterSubset):
    """The last `nn.Linear` layer (or the one named `last_layer_name`).

    Its features φ (the layer's inputs) are read with a forward hook; Jacobians are closed form:
    ∂f_c/∂W = e_c ⊗ φ and ∂f_c/∂b = e_c, so no C·d-wide Jacobian is ever built.

    `feature_reduction` ("pick_first", "pick_last", "average") reduces features of shape
    (B, T, d) to (B, d); the outputs are then the head applied to the reduced features.
    """

    def __init__(
        self,
        model: nn.Module,
        last_layer_name: str | None = None,
        feature_reduction: str | None = None,
    ) -> None:
        self.model = model
        # TorchScript: the layers are compiled modules (no hooks); see `_script_features`.
        self._script = is_script_module(model)
        modules = dict(model.named_modules())
        if last_layer_name is None:
            linears = (
                linear_modules(model)
                if self._script
                else [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            )
            if not linears:
                raise BadInputError(
                    "last-layer Laplace needs an nn.Linear layer; the model has none "
                    f"(module types: {sorted({type(m).__name__ for m in modules.values()})})"
                )
            last_layer_name = linears[-1]
        elif last_layer_name not in modules:
            raise MissingKeyError(
                f"no module named {last_layer_name!r} in the model; pass one of the names of "
                "model.named_modules(), or leave last_layer_name out to take the last nn.Linear"
            )
        head = modules[last_layer_name]
        kind = getattr(head, "original_name", None) if self._script else type(head).__name__
        if not (isinstance(head, nn.Linear) or (self._script and kind == "Linear")):
            raise BadInputError(f"last layer {last_layer_name!r} is a {kind}, expected nn.Linear")
        if feature_reduction not in (None, "pick_first", "pick_last", "average"):
            raise BadInputError(
                f"feature_reduction: expected pick_first, pick_last or average, got {feature_reduction!r}"
            )
        self.head = head
        self.last_layer_name = last_layer_name
        self.feature_reduction = feature_reduction
        # A compiled module's parameters are plain tensors, not nn.Parameter objects.
        own = dict(head.named_parameters(recurse=False)) if self._script else {}
        self.params = [
            (f"{last_layer_name}.{r}", getattr(head, r))
            for r in ("weight", "bias")
            if isinstance(getattr(head, r, None), nn.Parameter) or r in own
        ]
        self.n_out = int(self.params[0][1].shape[0])
        self.groups = [
            ParamGroup(
                n, tuple(p.shape), "weight" if n.endswith("weight") else "bias", last_layer_name
            )
            for n, p in self.params
        ]
        self._checked = False
        self._memo: tuple[tuple | None, list[Tensor], list[int], tuple[Tensor, Tensor]] | None = (
            None
        )
        self._memo_depth = 0

    def mean(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for _, p in self.params])

    @contextlib.contextmanager
    def reuse_forward(self) -> Iterator[None]:
        """Memoise the features of the latest input batch within the block (see the base class).

        A batch is recognised by the identity and version counters of its tensors (the memo
        holds references to them, so their memory cannot be reused by another batch); the
        model must not change inside the block. Only one batch is kept.
        """
        self._memo_depth += 1
        try:
            yield
        finally:
            self._memo_depth -= 1
            if self._memo_depth == 0:
                self._memo = None

    def features(self, x: Inputs) -> tuple[Tensor, Tensor]:
        """Features φ (B, d) entering the head, and the outputs (B, C) at the MAP."""
        if self._memo_depth == 0:
            return self._features(x)
        keys = tuple(x) if isinstance(x, Mapping) else None
        leaves = list(x.values()) if isinstance(x, Mapping) else [x]
        memo = self._memo
        if memo is not None and memo[0] == keys and len(memo[1]) == len(leaves):
            rows = _memo_rows(memo[1], memo[2], leaves)
            if rows is not None:
                phi, out = memo[3]
                return phi[rows], out[rows]
        result = self._features(x)
        self._memo = (keys, leaves, [t._version for t in leaves], result)
        return result

    def _features(self, x: Inputs) -> tuple[Tensor, Tensor]:
        if self._script:
            out, captured = self._script_features(x)
        else:
            # Inside `keep_graph()` (enable_backprop) φ and the outputs keep their graph.
            out, captured = run_capturing_head_input(self.model, self.head, x)
        phi = single_head_input(captured, self.last_layer_name)
        # On 2-D features a reduction has nothing to reduce: a no-op, as in laplace-torch.
        if self.feature_reduction is not None and phi.ndim != 2:
            if phi.ndim != 3:
                raise BadInputError(
                    f"feature_reduction needs (B, T, d) features, got {tuple(phi.shape)}"
                )
            phi = {"pick_first": phi[:, 0], "pick_last": phi[:, -1], "average": phi.mean(1)}[
                self.feature_reduction
            ]
            return phi, self._head(phi, self.mean())
        if phi.ndim != 2:
            raise BadInputError(
                f"features entering {self.last_layer_name!r} have shape {tuple(phi.shape)}; "
                "pass feature_reduction (pick_first, pick_last or average)"
            )
        out = as_2d_output(out)
        if not self._checked:
            # The closed forms assume the model's output *is* the head's output. In bfloat16 /
            # float16 the layer and `_head` round differently (~eps·|out| per output).
            tol = max(1e-4, 16 * torch.finfo(out.dtype).eps) if out.is_floating_point() else 1e-4
            atol = 1e-5 if tol == 1e-4 else tol * max(1.0, float(out.detach().abs().max()))
            if out.shape != (phi.shape[0], self.n_out) or not torch.allclose(
                out, self._head(phi, self.mean()), rtol=tol, atol=atol
            ):
                raise BadInputError(
                    f"the model's output is not the output of its last layer {self.last_layer_name!r}; "
                    "last-layer Laplace needs the model to end in that nn.Linear"
                )
            self._checked = True
        return phi, out

    def _script_features(self, x: Inputs) -> tuple[Tensor, list[Tensor]]:
        """Outputs and the features entering the head of a TorchScript model.

        A compiled module takes no forward hook. With the head's weight replaced by the
        identity and its bias by zeros the head passes its input through, so a second forward
        pass returns the features φ when the model ends in the head; `_features` checks on the
        first batch that the head applied to φ gives the model's output, as for hooks.
        """
        weight = self.params[0][1]
        d_in = weight.shape[1]
        swap = {self.params[0][0]: torch.eye(d_in, dtype=weight.dtype, device=weight.device)}
        if isinstance(getattr(self.head, "bias", None), Tensor):
            swap[f"{self.last_layer_name}.bias"] = weight.new_zeros(d_in)
        with torch.no_grad(), eval_mode(self.model):
            out = call_model(self.model, x)
            with script_parameters(self.model, swap):
                phi = call_model(self.model, x)
        return out, [phi.detach()]

    def _head(self, phi: Tensor, theta: Tensor) -> Tensor:
        p = self.unflatten(theta)
        w = p[self.groups[0].name]
        out = phi @ w.T
        if len(self.groups) > 1:
            out = out + p[self.groups[1].name]
        return out

    def output(self, x: Inputs) -> Tensor:
        return self.features(x)[1]

    def forward_with(self, x: Inputs, theta: Tensor) -> Tensor:
        return self._head(self.features(x)[0], theta)

    def output_fn(self, x: Inputs) -> Callable[[Tensor], Tensor]:
        """θ (P,) ↦ head outputs (B, C) on fixed features, differentiable in θ."""
        phi = self.features(x)[0]
        return lambda theta: self._head(phi, theta)

    def factors_from_features(self, phi: Tensor) -> list[Factor]:
        n_out = self.n_out
        eye = torch.eye(n_out, dtype=phi.dtype, device=phi.device)
        g = eye.reshape(1, n_out, 1, n_out).expand(phi.shape[0], n_out, 1, n_out)
        facs: list[Factor] = [LayerFactor(phi.unsqueeze(1), g)]
        if len(self.groups) > 1:
            facs.append(LayerFactor(None, g))
        return facs

    def factors(self, x: Inputs) -> tuple[Tensor, list[Factor]]:
        phi, f = self.features(x)
        return f, self.factors_from_features(phi)

    def jacobians(self, x: Inputs) -> tuple[Tensor, Tensor]:
        phi, f = self.features(x)
        return f, dense_from_factors(self.factors_from_features(phi))
