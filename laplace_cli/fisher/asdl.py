"""Optional ASDL backend: K-FAC and diagonal GGN / EF contributions computed by ASDL.

ASDL (Osawa et al., "ASDL: A Unified Interface for Gradient Preconditioning in PyTorch", 2023)
is installed from PyPI as ``asdfghjkl`` (extra ``laplace-cli[asdl]``; it provides the Python
module ``asdl``). The unrelated PyPI package named ``asdl`` is never used: the distribution
``asdfghjkl`` must be present.

Per batch, ``FisherMaker.forward_and_backward`` with ``data_size=1`` gives sums over the batch:
for each ``nn.Linear``, ``fisher.kron.A = Σ_n a aᵀ`` and ``fisher.kron.B = Σ_n Σ_c g gᵀ`` (exact
Fisher = GGN for cross-entropy and squared error, ``FISHER_EMP`` for the empirical Fisher), and
``fisher.diag.weight / .bias`` the exact diagonal. These are the native posterior's raw sums
(A summed, divided by N at finalize), so the posterior, its file and everything downstream are
the same whichever backend filled them; ``tests/fisher/test_asdl.py`` checks parity on small models.

Scope (refused with a clear error otherwise): structures ``kron`` and ``diag``; curvature
``ggn`` or ``ef``; likelihood ``classification`` or ``regression`` (scalar ``sigma_noise``);
subset ``all`` on a model whose trainable parameters all belong to ``nn.Linear`` layers fed
2-D (B, d) tensors (no sequences: ASDL's K-FAC does not follow the expand/reduce conventions).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from laplace_cli.core.enums import Curvature, Likelihood, Structure, Subset
from laplace_cli.core.errors import BadInputError

__all__ = [
    "asdl_accumulate",
    "check_asdl",
    "import_asdl",
]


def import_asdl() -> Any:
    """The ``asdl`` module of the ``asdfghjkl`` distribution, or a clear error."""
    try:
        importlib.metadata.distribution("asdfghjkl")
    except importlib.metadata.PackageNotFoundError:
        raise BadInputError(
            "backend 'asdl' needs ASDL: pip install 'laplace-cli[asdl]' (the PyPI package "
            "asdfghjkl, not the unrelated package 'asdl'); or use backend 'native'"
        ) from None
    try:
        import asdl
    except Exception as err:  # an import-time incompatibility with this torch
        raise BadInputError(
            f"backend 'asdl': asdfghjkl is installed but does not import with torch "
            f"{torch.__version__} ({type(err).__name__}: {err}); use backend 'native'"
        ) from None
    return asdl


def check_asdl(la: Any) -> None:
    """Refuse settings the ASDL adapter does not cover, naming the setting and the alternative."""
    import_asdl()
    problems = []
    if not la.structure_spec.asdl:  # posterior.table (a layer above this one) via `la`
        problems.append(f"structure {la.hessian_structure.value!r} (ASDL: kron or diag)")
    if la.curvature not in (Curvature.GGN, Curvature.EF):
        problems.append(f"curvature {la.curvature.value!r} (ASDL: ggn or ef)")
    if la.likelihood not in (Likelihood.CLASSIFICATION, Likelihood.REGRESSION):
        problems.append(f"likelihood {la.likelihood.value!r} (ASDL: classification or regression)")
    if la.subset_of_weights != Subset.ALL:
        problems.append(f"subset {la.subset_of_weights.value!r} (ASDL: all)")
    else:
        modules = dict(la.model.named_modules())
        for g in la.subset.groups:
            if g.kind == "other" or not isinstance(modules.get(g.module_name), nn.Linear):
                problems.append(f"parameter {g.name!r} is not an nn.Linear weight or bias")
                break
    if problems:
        raise BadInputError(
            "backend 'asdl' does not support " + "; ".join(problems) + "; use backend 'native'"
        )


def asdl_accumulate(la: Any, x: Any, y: Tensor) -> Tensor:
    """Add one batch's ASDL curvature to `la.posterior`; return the outputs f (B, C).

    The model's own ``fisher`` attributes, which ASDL writes on each module, are removed again.
    """
    asdl = import_asdl()
    if isinstance(x, dict) or x.ndim != 2:
        raise BadInputError(
            "backend 'asdl' takes (B, d) tensor inputs to an nn.Linear network; "
            "use backend 'native' for sequences, images or dict (text) batches"
        )
    post = la.posterior
    if getattr(post, "split_outputs", None) is not None:
        raise BadInputError("backend 'asdl' does not support a per-output sigma_noise")
    model = la.model
    modules = dict(model.named_modules())
    layers = {g.module_name: modules[g.module_name] for g in la.subset.groups}
    shape = asdl.SHAPE_KRON if la.hessian_structure == Structure.KRON else asdl.SHAPE_DIAG
    if la.curvature == Curvature.EF:
        fisher_type = asdl.FISHER_EMP
    else:
        fisher_type = asdl.FISHER_EXACT
    classification = la.likelihood == Likelihood.CLASSIFICATION
    config = asdl.FisherConfig(
        fisher_type=fisher_type,
        fisher_shapes=[shape],
        loss_type=asdl.LOSS_CROSS_ENTROPY if classification else asdl.LOSS_MSE,
        data_size=1,  # sums over the batch, as the native posterior keeps them
        ignore_modules=[m for n, m in modules.items() if n not in layers and n != ""],
    )
    maker = asdl.get_fisher_maker(model, config)
    was_training = model.training
    model.eval()
    try:
        dummy = maker.setup_model_call(model, x)
        if classification:
            maker.setup_loss_call(F.cross_entropy, dummy, y, reduction="sum")
        else:
            # ½ Σ (f − y)²: its gradient is the residual, as the native EF uses.
            maker.setup_loss_call(_half_squared_error, dummy, y, reduction="sum")
        maker.forward_and_backward()
        with torch.no_grad():
            f = model(x)
        _add_to_posterior(la, layers)
    finally:
        for m in layers.values():
            if hasattr(m, "fisher"):
                del m.fisher
        model.train(was_training)
        for p in model.parameters():
            p.grad = None  # ASDL's loss backward leaves gradients; the native path leaves none
    if hasattr(post, "n_data"):  # kron averages A over the data at finalize
        post.n_data += x.shape[0]
    if hasattr(post, "eigs"):
        post.eigs = None  # decompose again at finalize
    return f.detach()


def _half_squared_error(f: Tensor, t: Tensor, reduction: str = "sum") -> Tensor:
    """½ Σ (f − y)², whose gradient is the residual (ASDL wants a `reduction` argument)."""
    return 0.5 * F.mse_loss(f, t, reduction=reduction)


def _add_to_posterior(la: Any, layers: dict[str, nn.Module]) -> None:
    post = la.posterior
    dt = la.dtype
    if la.hessian_structure == Structure.KRON:
        for i, g in enumerate(la.subset.groups):
            kron = layers[g.module_name].fisher.kron
            post.B[i] += kron.B.to(dt)
            if g.kind == "weight":
                post.A_sum[i] += kron.A.to(dt)
        return
    pieces = []
    for g in la.subset.groups:
        diag = layers[g.module_name].fisher.diag
        pieces.append(getattr(diag, g.kind).reshape(-1).to(dt))
    post.h += torch.cat(pieces)
