"""``torch.export`` programs (``*.pt2``): loading, and restoring real layer types.

``torch.export.unflatten`` keeps named submodules but turns ``nn.Linear`` / ``nn.Conv2d``
leaves into ``InterpreterModule`` graphs, which K-FAC and last-layer hooks cannot use;
:func:`restore_layer_types` swaps them back for real layers holding the same parameters.
:func:`module_tree` and :func:`require_hookable_layers` report which layers hooks can use, for
any loaded form.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.checkpoint_types import (
    FACTORY_HINT,
    HOOKABLE_TYPES,
    ModelRef,
    ModuleInfo,
    fmt_names,
)

__all__ = ["module_tree", "require_hookable_layers", "restore_layer_types"]


def nn_module_type(graph_module: nn.Module, qualname: str) -> str | None:
    """The original class of submodule ``qualname``, read from its graph's node metadata."""
    graph = getattr(graph_module, "graph", None)
    if graph is None:
        return None
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for path, type_name in stack.values():
            if path == qualname:
                return (
                    type_name
                    if isinstance(type_name, str)
                    else getattr(type_name, "__qualname__", str(type_name))
                )
    return None


def normalized_args(node: Any) -> dict[str, Any] | None:
    """Bind an ``aten`` call's args to its schema's argument names, defaults filled in."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return None
    bound: dict[str, Any] = {}
    arguments = list(schema.arguments)
    if len(node.args) > len(arguments):
        return None
    for arg, value in zip(arguments, node.args, strict=False):
        bound[arg.name] = value
    for key, value in node.kwargs.items():
        bound[key] = value
    for arg in arguments:
        if arg.name not in bound:
            if not arg.has_default_value():
                return None
            bound[arg.name] = arg.default_value
    return bound


def as_real_layer(module: nn.Module) -> nn.Module | None:
    """A real nn.Linear / nn.Conv2d equivalent to an ``InterpreterModule``, or None.

    Only a graph of exactly ``placeholder -> aten.linear | aten.conv2d -> output`` whose weight
    and bias are ``get_attr`` of this module's own parameters qualifies, so the swap computes
    the very same function with the very same parameter objects.
    """
    graph = getattr(module, "graph", None)
    if graph is None:
        return None
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    calls = [n for n in nodes if n.op == "call_function"]
    outputs = [n for n in nodes if n.op == "output"]
    others = [
        n for n in nodes if n.op not in ("placeholder", "call_function", "output", "get_attr")
    ]
    if len(placeholders) != 1 or len(calls) != 1 or len(outputs) != 1 or others:
        return None
    call, out = calls[0], outputs[0]
    if out.args != (call,) or placeholders[0].kwargs:
        return None
    ops = torch.ops.aten
    linear_ops = (ops.linear.default,)
    conv_ops = (ops.conv2d.default, getattr(ops.conv2d, "padding", None))
    if call.target not in linear_ops and call.target not in conv_ops:
        return None
    bound = normalized_args(call)
    if bound is None or bound.get("input") is not placeholders[0]:
        return None

    def param(node: Any) -> nn.Parameter | None | bool:
        # None: no bias; False: not a plain parameter of this module (do not swap).
        if node is None:
            return None
        if getattr(node, "op", None) != "get_attr" or "." in str(node.target):
            return False
        value = getattr(module, str(node.target), None)
        return value if isinstance(value, nn.Parameter) else False

    weight, bias = param(bound.get("weight")), param(bound.get("bias"))
    if weight is None or weight is False or bias is False:
        return None
    if call.target in linear_ops:
        if weight.dim() != 2:
            return None
        layer: nn.Module = nn.Linear(
            weight.shape[1], weight.shape[0], bias=bias is not None, device="meta"
        )
    else:
        groups = int(bound["groups"])
        if weight.dim() != 4:
            return None
        layer = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            kernel_size=tuple(weight.shape[2:]),
            stride=tuple(bound["stride"]),
            padding=bound["padding"]
            if isinstance(bound["padding"], str)
            else tuple(bound["padding"]),
            dilation=tuple(bound["dilation"]),
            groups=groups,
            bias=bias is not None,
            device="meta",
        )
    # Share the parameter objects: names, order, storage and fingerprint are unchanged.
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    layer.train(module.training)
    return layer


def restore_layer_types(model: nn.Module) -> list[str]:
    """Swap unflattened ``InterpreterModule`` leaves back to real ``nn.Linear`` / ``nn.Conv2d``.

    ``torch.export.unflatten`` rebuilds the module tree with the original names, but every
    submodule is an ``InterpreterModule`` (an FX graph), so ``isinstance(m, nn.Linear)`` fails
    and K-FAC / last-layer code cannot find the layers. A leaf whose graph is one
    ``aten.linear`` or ``aten.conv2d`` call on its own ``weight`` / ``bias`` is replaced by the
    equivalent ``nn`` layer holding the same ``Parameter`` objects; the parent graph calls the
    submodule by name, so forward hooks on the new layer fire. Anything else is left alone
    (see :func:`module_tree` for what remains).

    Args:
        model: An ``UnflattenedModule`` (other modules are returned unchanged).

    Returns:
        Names of the submodules swapped, in ``named_modules()`` order.
    """
    swapped: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or type(module).__name__ != "InterpreterModule":
            continue
        if any(True for _ in module.children()):
            continue
        layer = as_real_layer(module)
        if layer is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        swapped.append(name)
    return swapped


def module_tree(model: nn.Module) -> list[ModuleInfo]:
    """Every submodule with its original type and whether hooks can use it as a layer.

    Useful to see what a ``.pt2`` or TorchScript model looks like after loading: which
    ``Linear`` / ``Conv2d`` layers are real (``hookable``) and which stayed graph modules.
    """
    rows = []
    for name, module in model.named_modules():
        cls = type(module)
        loaded = cls.__name__
        if loaded == "InterpreterModule":
            type_name = nn_module_type(module, name) or loaded
        elif isinstance(module, torch.jit.ScriptModule):
            type_name = getattr(module, "original_name", loaded)
        else:
            type_name = f"{cls.__module__}.{cls.__qualname__}"
        rows.append(ModuleInfo(name, type_name, loaded, isinstance(module, HOOKABLE_TYPES)))
    return rows


def require_hookable_layers(model: nn.Module, ref: ModelRef | None, feature: str) -> None:
    """Raise a clear error when ``feature`` (e.g. ``--structure kron``) needs real layers.

    Args:
        model: The loaded model.
        ref: Its reference (for the form and path in the message), if known.
        feature: What needs the layers, for the message.

    Raises:
        BadInputError: No submodule is an ``nn.Linear`` / ``nn.Conv2d``; the message names the
            form that works.
    """
    rows = module_tree(model)
    if any(r.hookable for r in rows):
        return
    # Layers that exist but as graph / script modules: name them, so the user sees why.
    lost = [
        f"{r.name} ({r.type_name.rsplit('.', 1)[-1]} as {r.loaded_class})"
        for r in rows
        if r.name and r.type_name.rsplit(".", 1)[-1] in ("Linear", "Conv2d")
    ]
    where = f"{ref.path} ({ref.form} form)" if ref is not None else "this model"
    detail = f" (only {fmt_names(lost, 5)})" if lost else ""
    raise BadInputError(
        f"{where}: {feature} needs real nn.Linear / nn.Conv2d modules, found none{detail}; "
        f"{FACTORY_HINT}, or export with torch.export to .pt2"
    )


def static_batch_inputs(ep: Any) -> list[str]:
    """User inputs of an ExportedProgram whose first dimension is a fixed number."""
    user_inputs = set(ep.graph_signature.user_inputs)
    fixed = []
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        val = node.meta.get("val")
        shape = getattr(val, "shape", None)
        if shape is not None and len(shape) > 0 and isinstance(shape[0], int) and shape[0] > 1:
            fixed.append(
                f"{node.name} {tuple(int(s) if isinstance(s, int) else -1 for s in shape)}"
            )
    return fixed


def load_export(p: Path, device: torch.device) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch's own deserialiser trips its own deprecation warning (LeafSpec); users
            # cannot act on it.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            ep = torch.export.load(str(p))
    except Exception as err:
        raise BadInputError(
            f"{p}: cannot load torch.export archive ({type(err).__name__}: {err})"
        ) from None
    fixed = static_batch_inputs(ep)
    if fixed:
        # A static batch size makes every other batch size (including vmap's per-sample
        # calls) fail deep inside fitting; say so now.
        raise BadInputError(
            f"{p}: exported with a fixed batch size (inputs {', '.join(fixed)}); re-export with "
            "torch.export.export(model, args, dynamic_shapes=({0: torch.export.Dim.AUTO},)) "
            f"or {FACTORY_HINT}"
        )
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, device)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            model = torch.export.unflatten(ep)
    except Exception:
        # Some programs cannot be unflattened. ExportedProgram.module() still runs them (and
        # keeps parameter names, so the fingerprint is unchanged), but as one flat graph: no
        # submodule is called, so no hook fires. Diagonal / full / low-rank Laplace over all
        # weights still work; K-FAC and last-layer are refused by require_hookable_layers,
        # whose message names the factory form.
        return ep.module()
    restore_layer_types(model)
    return model
