"""What laplace-torch's backend instances compute, by this project's one engine.

`CurvlinopsGGN(model, "classification").diag(X, y)` and its siblings (laplace_cli.curvature)
delegate here: the curvature of a batch is a `Laplace` fit over that single batch (unit noise,
so the numbers are laplace-torch's unscaled backend curvature), Jacobians come from the
parameter subsets. The classes (laplace/backends.py) call these functions directly.

laplace-torch's conventions kept here: results are sums over the batch (no 1/N), the loss is
the summed cross-entropy or ½·Σ‖y − f‖², per-sample gradients are of that loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from laplace_cli.core import likelihoods as lik
from laplace_cli.core.batches import keep_graph
from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.subsets.base import AllWeights

__all__ = [
    "curvature",
    "gradients",
    "jacobians",
    "last_layer_jacobians",
]


def _last_layer(model: Any) -> Any:
    last = getattr(model, "last_layer", None)
    if last is None or not hasattr(model, "forward_with_features"):
        raise BadInputError(
            "last_layer=True needs a laplace_cli.utils.FeatureExtractor model (its last_layer "
            "and forward_with_features)"
        )
    return last


def _features(model: Any, x: Any) -> tuple[Tensor, Tensor]:
    if not hasattr(model, "forward_with_features"):
        _last_layer(model)  # raises the message naming FeatureExtractor
    return model.forward_with_features(x)


def _jacobians(model: Any, x: Any, enable_backprop: bool) -> tuple[Tensor, Tensor]:
    # keep_graph: the subsets then keep both differentiable in the inputs
    with keep_graph(enable_backprop):
        f, J = AllWeights(model).jacobians(x)
    return J, f


def jacobians(backend: Any, x: Any, enable_backprop: bool = False) -> tuple[Tensor, Tensor]:
    """(Js (B, C, P), f (B, C)) over the model's trainable parameters."""
    if backend.last_layer:
        return last_layer_jacobians(backend, x, enable_backprop)
    return _jacobians(backend.model, x, enable_backprop)


def last_layer_jacobians(
    backend: Any, x: Any, enable_backprop: bool = False
) -> tuple[Tensor, Tensor]:
    """(Js (B, C, P_last), f (B, C)) over the last layer, at the model's features."""
    # laplace-torch's FeatureExtractor(enable_backprop=True) also asks for the graph
    enable_backprop = enable_backprop or bool(getattr(backend.model, "enable_backprop", False))
    # a FeatureExtractor finds its last layer on its first forward pass
    _, phi = _features(backend.model, x)
    last = _last_layer(backend.model)
    if not enable_backprop:
        phi = phi.detach()
    return _jacobians(last, phi, enable_backprop)


def gradients(backend: Any, x: Any, y: Tensor) -> tuple[Tensor, Tensor]:
    """(Gs (B, P), loss): Gs[n] = J_nᵀ ∂ℓ_n/∂f_n, the per-sample gradients of the loss."""
    Js, f = jacobians(backend, x)
    likelihood = Likelihood(backend.likelihood)
    g = lik.output_gradient(likelihood, f, y)
    loss = lik.summed_loss(likelihood, f, y)
    return torch.einsum("bcp,bc->bp", Js, g.to(Js.dtype)), loss


def curvature(backend: Any, structure: str, x: Any, y: Tensor) -> tuple[Tensor, Tensor]:
    """(loss, curvature) of one batch: h (P,) for "diag", H (P, P) for "full", a `Kron` for
    "kron"."""
    model, subset, data = backend.model, "all", (x, y)
    if backend.subnetwork_indices is not None:
        subset = "subnetwork"
    if backend.last_layer:
        _, phi = _features(model, x)
        model, data = _last_layer(model), (phi.detach(), y)
    la = Laplace(
        model,
        backend.likelihood,
        subset,
        structure,
        curvature=backend._curvature_name(),
        n_mc_samples=backend.num_samples,
        subnetwork_indices=backend.subnetwork_indices,
        dict_key_x=backend.dict_key_x,
        dict_key_y=backend.dict_key_y,
    )
    la.fit([data])
    if structure == "kron":
        return la.loss.detach().reshape(()), la.posterior.as_kron()
    state = la.posterior.raw_state()
    H = state["h"] if structure == "diag" else state["H"]
    return la.loss.detach().reshape(()), H.detach()
