"""TorchScript models (``torch.jit.script`` / ``torch.jit.trace`` archives) in the engine.

A ``RecursiveScriptModule`` runs compiled code, which rules out the two tools the subsets use
on ordinary modules:

* ``torch.func.functional_call`` refuses it ("The stateless API can't be used with Jitted
  modules"), and dense per-sample Jacobians, the nn predictive and the low-rank products all
  call the model with substituted parameters;
* Python forward hooks cannot be registered on it, so layer inputs (K-FAC factors, last-layer
  features) cannot be captured.

:func:`script_parameters` substitutes parameters by setting the compiled module's attributes
for the duration of a call (the compiled code reads them with ``prim::GetAttr`` at every
call), which is what ``functional_call`` does for Python modules; it works under
``torch.func.vmap`` / ``jacrev`` / ``jvp`` and gives the same Jacobians as the Python module
(tested). The graph executor's optimisations (profiled autodiff subgraphs) are switched off
while the substituted call runs, so every op goes through the ordinary dispatcher that
``torch.func`` and autograd instrument.

What stays impossible is K-FAC over all weights: it needs each layer's inputs and output
gradients, i.e. hooks. ``Laplace`` refuses that combination (see :data:`KRON_HINT`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

__all__ = ["KRON_HINT", "is_script_module", "linear_modules", "script_parameters"]

#: The alternatives named when a TorchScript model meets a structure that needs hooks.
KRON_HINT = (
    "use --structure diag, full or lowrank over all weights, --subset last_layer (any "
    "structure), or load the model in a form with real nn.Linear / nn.Conv2d modules: save "
    "model.state_dict() as .safetensors and pass --model-factory pkg.module:function, or "
    "torch.export the model to .pt2"
)


def is_script_module(model: nn.Module) -> bool:
    """True for a compiled TorchScript module (scripted or traced)."""
    return isinstance(model, torch.jit.ScriptModule)


def linear_modules(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.Linear`` submodules of a TorchScript model, in order.

    Scripted and traced submodules keep the original class name in ``original_name``.
    """
    return [
        name
        for name, module in model.named_modules()
        if name and getattr(module, "original_name", None) == "Linear"
    ]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    owner = model
    for part in path:
        owner = getattr(owner, part)
    return owner, leaf


@contextlib.contextmanager
def script_parameters(model: nn.Module, values: Mapping[str, Tensor]) -> Iterator[None]:
    """Within the block, the TorchScript ``model`` computes with ``values`` as its parameters.

    Args:
        model: A ``RecursiveScriptModule``.
        values: ``{qualified parameter name: tensor}``; the tensors may be functorch-batched or
            carry autograd history, and may differ in shape (the last-layer features use an
            identity matrix in place of the head's weight).

    The original tensors are put back on exit, also after an error.
    """
    saved: list[tuple[nn.Module, str, Tensor]] = []
    try:
        for name, value in values.items():
            owner, leaf = _owner(model, name)
            saved.append((owner, leaf, getattr(owner, leaf)))
            owner._c.setattr(leaf, value)
        with torch.jit.optimized_execution(False):
            yield
    finally:
        for owner, leaf, old in reversed(saved):
            owner._c.setattr(leaf, old)
