"""Subsets of models with dense outputs (B, C, *S): segmentation maps, per-position outputs.

The engine's outputs are (B, M). A dense model's output is flattened row-major to
M = C·|S| (entry c·|S| + s is class c at position s), so every per-sample Jacobian, layer factor
and dense Jacobian keeps its meaning with M outputs: the output Jacobians G of a layer hold the
back-propagated gradient of *every position* (what K-FAC needs for a conv net with dense
outputs), and the per-position GGN Σ_p J_pᵀ Λ_p J_p is Jᵀ W Wᵀ J with W block-diagonal over
positions (`laplace.dense_outputs`). docs/dense-outputs.md has the maths and the costs.

* `DenseOutputs` wraps `AllWeights` / `Subnetwork`: their methods run inside
  `core.batches.flat_outputs()`.
* `DenseLastLayer` is the last-layer subset of a model that ends in a 1×1 convolution (a
  per-position linear head): its Jacobians are closed form, ∂f_{c,s}/∂W = e_c ⊗ φ_s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from laplace_cli.core.batches import Inputs, detach, flat_outputs
from laplace_cli.core.errors import BadInputError
from laplace_cli.subsets.base import (
    Factor,
    LayerFactor,
    ParameterSubset,
    ParamGroup,
    dense_from_factors,
    iter_rows,
)
from laplace_cli.subsets.last_layer import run_capturing_head_input, single_head_input


def check_dense_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(C, *S) of a dense output; refuses (C,) (a model without positions)."""
    if len(shape) < 2:
        raise BadInputError(
            f"output_positions needs model outputs (batch, classes, *positions), but the model "
            f"gives (batch, {shape[0] if shape else 1}); leave output_positions unset"
        )
    return shape


class DenseOutputs(ParameterSubset):
    """`inner` (all weights or a subnetwork) with the model's (B, C, *S) outputs flattened."""

    def __init__(self, inner: ParameterSubset) -> None:
        self.inner = inner
        self.model = inner.model
        self.groups = inner.groups
        #: (C, *S) of the latest call's outputs.
        self.output_shape: tuple[int, ...] | None = None

    def __getattr__(self, name: str) -> Any:
        # Attributes of the wrapped subset (`params`, `kron_approx`, ...) stay readable.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _flat(self, fn: Callable[..., Any], x: Inputs, *args: Any) -> Any:
        with flat_outputs() as shapes:
            out = fn(x, *args)
        if shapes:
            self.output_shape = check_dense_shape(shapes[-1])
        elif self.output_shape is None:
            # The vmap path flattens per sample without `as_2d_output`: one probe row.
            with flat_outputs() as shapes:
                self.inner.output(next(iter_rows(x, 1)))
            self.output_shape = check_dense_shape(shapes[-1] if shapes else ())
        return out

    def mean(self) -> Tensor:
        return self.inner.mean()

    def output(self, x: Inputs) -> Tensor:
        return self._flat(self.inner.output, x)

    def factors(self, x: Inputs) -> tuple[Tensor, list[Factor]]:
        return self._flat(self.inner.factors, x)

    def jacobians(self, x: Inputs) -> tuple[Tensor, Tensor]:
        return self._flat(self.inner.jacobians, x)

    def forward_with(self, x: Inputs, theta: Tensor) -> Tensor:
        return self._flat(self.inner.forward_with, x, theta)

    def output_fn(self, x: Inputs) -> Callable[[Tensor], Tensor]:
        fn = self.inner.output_fn(x)

        def flat_fn(theta: Tensor) -> Tensor:
            with flat_outputs():
                return fn(theta)

        return flat_fn

    @contextlib.contextmanager
    def reuse_forward(self) -> Iterator[None]:
        with self.inner.reuse_forward():
            yield


def dense_head(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The model's last 1×1 convolution (or the module `name`), checked to be one."""
    modules = dict(model.named_modules())
    if name is None:
        convs = [n for n, m in modules.items() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
        if not convs:
            raise BadInputError(
                "last-layer Laplace with output_positions needs a 1×1 convolution as the head; "
                "the model has none (use subset_of_weights='all')"
            )
        name = convs[-1]
    elif name not in modules:
        raise BadInputError(f"no module named {name!r} in the model")
    head = modules[name]
    ok = (
        isinstance(head, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and all(k == 1 for k in head.kernel_size)
        and all(s == 1 for s in head.stride)
        and all(p == 0 for p in head.padding)
        and head.groups == 1
    )
    if not ok:
        raise BadInputError(
            f"last layer {name!r} is a {type(head).__name__} "
            f"{getattr(head, 'kernel_size', '')}; last-layer Laplace with output_positions "
            "needs a 1×1 convolution (stride 1, no padding, groups 1) as the head; use "
            "subset_of_weights='all' otherwise"
        )
    return name, head


class DenseLastLayer(ParameterSubset):
    """The weights of a final 1×1 convolution, f_{c,s} = Σ_d W_cd φ_{d,s} + b_c.

    The layer factors are closed form in the flattened layout: a = φ per position (B, |S|, D)
    (T = |S|) and G[b, c·|S| + s, t, o] = δ_co δ_st (B, C·|S|, |S|, C), so the K-FAC factors are
    B = Σ_{n,s} Λ_{n,s} and A = mean over inputs and positions of φ φᵀ. G holds C²·|S|² numbers
    per input: fine for small maps, a dense (B, C·|S|, P) Jacobian is no larger.
    """

    def __init__(self, model: nn.Module, last_layer_name: str | None = None) -> None:
        self.model = model
        self.last_layer_name, self.head = dense_head(model, last_layer_name)
        self.params = [
            (f"{self.last_layer_name}.{r}", getattr(self.head, r))
            for r in ("weight", "bias")
            if isinstance(getattr(self.head, r, None), nn.Parameter)
        ]
        self.n_out = int(self.head.weight.shape[0])
        self.groups = [
            ParamGroup(
                n,
                tuple(p.shape),
                "weight" if n.endswith("weight") else "bias",
                self.last_layer_name,
            )
            for n, p in self.params
        ]
        self.output_shape: tuple[int, ...] | None = None
        self._checked = False

    def mean(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for _, p in self.params])

    def features(self, x: Inputs) -> tuple[Tensor, Tensor]:
        """Features φ (B, D, *S) entering the head and the flattened outputs (B, C·|S|)."""
        out, captured = run_capturing_head_input(self.model, self.head, x)
        phi = single_head_input(captured, self.last_layer_name)
        self.output_shape = check_dense_shape(tuple(out.shape[1:]))
        if not self._checked:
            # The closed forms assume the model's output *is* the head's output.
            mine = self._head(phi, self.mean())
            if out.flatten(1).shape != mine.shape or not torch.allclose(
                out.flatten(1), mine, rtol=1e-4, atol=1e-5
            ):
                raise BadInputError(
                    f"the model's output is not the output of its last layer "
                    f"{self.last_layer_name!r}; last-layer Laplace needs the model to end in it"
                )
            self._checked = True
        return phi, detach(out).flatten(1)

    def _head(self, phi: Tensor, theta: Tensor) -> Tensor:
        p = self.unflatten(theta)
        w = p[self.groups[0].name].reshape(self.n_out, -1)  # (C, D)
        out = torch.einsum("cd,bds->bcs", w, phi.flatten(2))
        if len(self.groups) > 1:
            out = out + p[self.groups[1].name].reshape(1, -1, 1)
        return out.flatten(1)

    def output(self, x: Inputs) -> Tensor:
        return self.features(x)[1]

    def forward_with(self, x: Inputs, theta: Tensor) -> Tensor:
        return self._head(self.features(x)[0], theta)

    def output_fn(self, x: Inputs) -> Callable[[Tensor], Tensor]:
        phi = self.features(x)[0]
        return lambda theta: self._head(phi, theta)

    def factors_from_features(self, phi: Tensor) -> list[Factor]:
        b, d = phi.shape[:2]
        a = phi.flatten(2).transpose(1, 2)  # (B, |S|, D)
        n_pos, n_out = a.shape[1], self.n_out
        eye_c = torch.eye(n_out, dtype=phi.dtype, device=phi.device)
        eye_s = torch.eye(n_pos, dtype=phi.dtype, device=phi.device)
        g = torch.einsum("co,st->csto", eye_c, eye_s).reshape(1, n_out * n_pos, n_pos, n_out)
        g = g.expand(b, -1, -1, -1)
        facs: list[Factor] = [LayerFactor(a, g)]
        if len(self.groups) > 1:
            facs.append(LayerFactor(None, g))
        return facs

    def factors(self, x: Inputs) -> tuple[Tensor, list[Factor]]:
        phi, f = self.features(x)
        return f, self.factors_from_features(phi)

    def jacobians(self, x: Inputs) -> tuple[Tensor, Tensor]:
        phi, f = self.features(x)
        return f, dense_from_factors(self.factors_from_features(phi))
