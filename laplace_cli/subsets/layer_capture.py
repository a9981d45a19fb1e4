"""One forward pass with hooks on the factored layers, for `AllWeights`' Jacobian factors.

`capture_forward` runs the model once with forward hooks on its Linear / Conv2d layers and on
the modules whose parameter Jacobians are captured (Embedding / LayerNorm / BatchNorm,
`captured_jacobians`), checks that every factored layer ran once with one output row per
example, and keeps the outputs' graph. The factors then come from back-propagating cotangents
to the captured layer outputs: the C unit vectors (or a curvature root's K columns) at once
(`AllWeights.factors`), or one root column at a time (`AllWeights.factor_directions`), which a
diag / kron fit sums as they come.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from laplace_cli.core.batches import Inputs, as_2d_output, call_model
from laplace_cli.core.errors import BadInputError
from laplace_cli.subsets.per_sample import eval_mode


class NoLayerFactorsError(BadInputError):
    """A layer's Jacobian has no per-layer factors (the layer ran more than once per pass)."""


@dataclass
class LayerCapture:
    """What one hooked forward pass saw.

    f: model outputs (B, C) with their graph; inputs / outputs: each hooked module's first
    positional input (detached) and its output (with graph); layers: the factored layers;
    captured: the captured modules that ran once with one row per example.
    """

    f: Tensor
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    layers: list[str]
    captured: list[str]
    #: captured modules' normalised inputs (`captured_jacobians.normalised_input`), filled once
    normalised: dict[str, Tensor | None] = field(default_factory=dict)
    #: the factored layers' inputs with their graph (cotangents may start there: `root_pieces`)
    input_nodes: dict[str, Tensor] = field(default_factory=dict)

    @property
    def outs(self) -> list[Tensor]:
        """The outputs to back-propagate to: factored layers first, then captured modules."""
        return [self.outputs[m] for m in (*self.layers, *self.captured)]


def capture_forward(
    model: nn.Module,
    x: Inputs,
    layers: Mapping[str, nn.Module],
    captured_modules: Mapping[str, nn.Module],
) -> LayerCapture:
    """Run `model(x)` in eval mode with hooks on `layers` and `captured_modules`."""
    hooked = {**layers, **captured_modules}
    inputs: dict[str, list[Tensor]] = {m: [] for m in hooked}
    nodes: dict[str, Tensor] = {}
    outputs: dict[str, list[Tensor]] = {m: [] for m in hooked}

    def make_hook(mname: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
            inputs[mname].append(args[0].detach())
            if mname in layers:
                nodes[mname] = args[0]
            affine = _eval_batch_norm_affine(module, args[0], out)
            outputs[mname].append(out if affine is None else affine)
            return affine  # None keeps the module's own output

        return hook

    handles = [module.register_forward_hook(make_hook(m)) for m, module in hooked.items()]
    try:
        with torch.enable_grad(), eval_mode(model):
            f = as_2d_output(call_model(model, x))
    finally:
        for h in handles:
            h.remove()
    for mname in layers:
        _check_once_per_example(mname, outputs[mname], f)
    # Captured modules count only if they ran once with one output row per example.
    captured = [
        m
        for m in captured_modules
        if len(outputs[m]) == 1 and outputs[m][0].shape[:1] == f.shape[:1]
    ]
    seen = [*layers, *captured]
    return LayerCapture(
        f=f,
        inputs={m: inputs[m][0] for m in seen},
        outputs={m: outputs[m][0] for m in seen},
        layers=list(layers),
        captured=captured,
        input_nodes=nodes,
    )


def _eval_batch_norm_affine(module: nn.Module, x: Tensor, out: Tensor) -> Tensor | None:
    """An eval-mode BatchNorm's output recomputed as x·s + t (s = γ/√(σ²+ε), t = β − μ·s), or None
    for any other module.

    The same numbers as the module's output up to rounding, but its backward to x is one
    multiply where autograd's `native_batch_norm_backward` ran on every back-propagated output
    direction (16 % of a BN CNN's K-FAC fit in a profile; the fit 8 % faster with the multiply).
    Only modules that normalise by running statistics (`captured_jacobians`' condition).
    """
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.training:
        return None
    if module.running_var is None or module.running_mean is None or not module.affine:
        return None
    if not isinstance(out, Tensor) or x.shape != out.shape or x.dim() < 2:
        return None
    scale = module.weight * torch.rsqrt(module.running_var + module.eps)
    shift = module.bias - module.running_mean * scale
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.reshape(shape), x, scale.reshape(shape)).to(out.dtype)


def _check_once_per_example(mname: str, outputs: list[Tensor], f: Tensor) -> None:
    if len(outputs) != 1:
        why = (
            "its weights are used without calling the module"
            if not outputs
            else "shared layers have no per-layer factors"
        )
        raise NoLayerFactorsError(
            f"layer {mname!r} ran {len(outputs)} times in one forward "
            f"pass ({why}); use structure 'diag' or 'full' (dense Jacobians)"
        )
    if outputs[0].shape[:1] != f.shape[:1]:
        # e.g. a reward model that flattens (B, 2, d) pairs to (2B, d) rows: which rows belong
        # to which example is unknown here, so the per-example factors cannot be formed (dense
        # Jacobians can).
        raise NoLayerFactorsError(
            f"layer {mname!r} saw {outputs[0].shape[0]} rows for a "
            f"batch of {f.shape[0]} examples (not one row per example); use "
            "structure 'diag' or 'full' (dense Jacobians)"
        )


def conv_patches(module: nn.Conv2d, x: Tensor) -> Tensor:
    """Unfold Conv2d inputs (B, C_in, H, W) into patches (B, T, C_in·kh·kw), T = output positions.

    The values of `F.unfold(...).transpose(1, 2)` (patch entries ordered c, i, j), built as a
    strided view and one copy: CPU `im2col` behind `F.unfold` took up to seconds per call on a
    busy 2-core machine (its parallel loop stalls), the copy stays at memory speed. The result
    is a permuted view of (d_in, B, T) memory: that copy keeps the images' rows contiguous (8×
    faster than gathering (B, T, d_in) rows), and the K-FAC input factor Σ a aᵀ is then one
    matrix product of the (d_in, B·T) matrix with its transpose, with no further copy.
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
    rows = view.permute(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, b, h_out * w_out)
    return rows.permute(1, 2, 0)


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


def columns_per_pass(n_columns: int, outs: Sequence[Tensor], max_bytes: int | None) -> int:
    """Root columns per batched backward pass: all of them, or as many as keep the stacked
    output gradients under max_bytes / 4 (the pass holds intermediates of the same size)."""
    if max_bytes is None:
        return n_columns
    per_column = sum(o.numel() * o.element_size() for o in outs)
    return max(1, min(n_columns, (max_bytes // 4) // max(per_column, 1)))
