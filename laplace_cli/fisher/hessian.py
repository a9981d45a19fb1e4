"""The exact Hessian of the training loss with respect to a parameter subset (curvature "hessian").

    H = ∂²/∂θ² Σ_n ℓ(f(x_n; θ), y_n)

at the MAP θ*, with ℓ the unit-noise loss of `core.likelihoods.summed_loss` (cross-entropy,
½‖y − f‖², binary cross-entropy). The posterior scales it by s = 1/(σ²T) (regression) or 1/T
exactly as it scales the GGN, so the two curvatures are interchangeable in every structure that
takes a dense matrix (full) or its diagonal (diag). Unlike the GGN (Σ Jᵀ ∂²ℓ/∂f² J), H keeps
the term Σ_c ∂ℓ/∂f_c ∂²f_c/∂θ², so it may be indefinite away from an exact minimum: the
posterior then checks that Λ = s·H + diag(δ) is positive definite where it needs it and raises
`NumericalError` otherwise (laplace-torch only adds the prior; its Cholesky then fails).

Cost: one Hessian-vector product per parameter and batch (reverse-over-reverse, `torch.func`,
`chunk` products at a time), i.e. about P backward passes per batch whether the full matrix or
its diagonal is kept: the diagonal saves the P×P memory, not the time. Hence the size limit
`MAX_HESSIAN_PARAMS`, above which the GGN (the Hessian's positive semi-definite part, one
Jacobian per output) is the alternative. K-FAC and low-rank structures have no exact-Hessian
form here (nor in laplace-torch) and are refused when fitting starts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from laplace_cli.core import likelihoods as lik
from laplace_cli.core.enums import Likelihood, Structure
from laplace_cli.core.errors import BadInputError

__all__ = ["MAX_HESSIAN_PARAMS", "HESSIAN_STRUCTURES", "check_hessian_fit", "batch_hessian"]

#: Above this many parameters the exact Hessian (P Hessian-vector products per batch) is
#: refused: the GGN costs one Jacobian per output instead.
MAX_HESSIAN_PARAMS = 20_000

#: Structures that can hold the exact Hessian: the dense matrix or its exact diagonal.
HESSIAN_STRUCTURES = (Structure.FULL, Structure.DIAG)


def check_hessian_fit(
    structure: Structure | str, n_params: int, model_dtype: torch.dtype | None = None
) -> None:
    """Refuse a structure, a size or a model dtype the exact Hessian is not computed for."""
    structure = Structure.parse(structure, "hessian_structure")
    if model_dtype in (torch.float16, torch.bfloat16):
        # second derivatives through a half-precision network keep ~3 significant digits
        raise BadInputError(
            f"the exact Hessian of a {str(model_dtype).replace('torch.', '')} model would be "
            "computed in that precision; use curvature 'ggn' (float32 accumulation), or cast "
            "the model to float32"
        )
    if structure not in HESSIAN_STRUCTURES:
        raise BadInputError(
            f"the exact Hessian (curvature 'hessian') has no {structure.value!r} form; use "
            "structure 'full' or 'diag' with it, or curvature 'ggn' / 'ef' (e.g. "
            "backend=CurvlinopsGGN) for kron and lowrank"
        )
    if n_params > MAX_HESSIAN_PARAMS:
        raise BadInputError(
            f"the exact Hessian over {n_params} parameters costs {n_params} Hessian-vector "
            f"products per batch (limit {MAX_HESSIAN_PARAMS}); use curvature 'ggn' (its "
            "positive semi-definite part), or a smaller subset (last_layer, subnetwork)"
        )


def _chunk_size(n_params: int, rows: int, itemsize: int, max_memory: int | None) -> int:
    """Hessian-vector products per vectorised pass: each holds about a gradient (P) and the
    batch's backward graph (taken as rows·P here, a generous bound for small models)."""
    if max_memory is None:
        return min(n_params, 64)
    per_vector = max(1, itemsize * n_params * (2 + rows))
    return int(max(1, min(n_params, 256, max_memory // (4 * per_vector))))


def batch_hessian(
    fn: Callable[[Tensor], Tensor],
    theta: Tensor,
    likelihood: Likelihood | str,
    y: Tensor,
    structure: Structure | str,
    dtype: torch.dtype,
    max_memory: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(f, H) of one batch: outputs (B, C) at θ and the loss Hessian, (P, P) or its diagonal (P,).

    Args:
        fn: θ (P,) ↦ outputs (B, C), differentiable in θ (`ParameterSubset.output_fn(x)`).
        theta: the subset's MAP values (P,), in the model's dtype.
        likelihood: which summed unit-noise loss (`core.likelihoods.summed_loss`).
        y: targets as `Laplace.prepare_batch` gives them.
        structure: "full" (dense H) or "diag" (its exact diagonal).
        dtype: the dtype of the loss and of H (the posterior's).
        max_memory: bytes for one vectorised chunk of Hessian-vector products.
    """
    likelihood = Likelihood.parse(likelihood, "likelihood")
    diag_only = Structure.parse(structure, "hessian_structure") == Structure.DIAG
    theta = theta.detach()
    n_params = theta.numel()

    def loss(t: Tensor) -> Tensor:
        return lik.summed_loss(likelihood, fn(t).to(dtype), y)

    with torch.no_grad():
        f = fn(theta).detach().to(dtype)
    rows = int(f.shape[0]) if f.ndim else 1
    chunk = _chunk_size(n_params, rows, theta.element_size(), max_memory)
    try:
        H = _hessian_vectorised(loss, theta, diag_only, chunk)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, NotImplementedError):
        # vmap cannot run this model (data-dependent control flow, an op without a batching
        # rule): the same products one at a time with plain autograd.
        H = _hessian_loop(loss, theta, diag_only)
    return f, H.to(dtype)


def _hessian_vectorised(
    loss: Callable[[Tensor], Tensor], theta: Tensor, diag_only: bool, chunk: int
) -> Tensor:
    """Rows of H by vmapped vector-Jacobian products of ∇ℓ (H is symmetric: rows = columns)."""
    n = theta.numel()
    with torch.enable_grad():
        _, vjp_fn = torch.func.vjp(torch.func.grad(loss), theta)
        eye = torch.eye(n, dtype=theta.dtype, device=theta.device)
        pieces = []
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            (rows,) = torch.func.vmap(vjp_fn)(eye[start:stop])  # H[start:stop], (k, P)
            rows = rows.detach()
            pieces.append(rows[:, start:stop].diagonal() if diag_only else rows)
    return torch.cat(pieces)


def _hessian_loop(loss: Callable[[Tensor], Tensor], theta: Tensor, diag_only: bool) -> Tensor:
    """The same rows by double backward, one parameter at a time."""
    n = theta.numel()
    with torch.enable_grad():
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(t), t, create_graph=True)
        out = torch.zeros((n,) if diag_only else (n, n), dtype=theta.dtype, device=theta.device)
        for i in range(n):
            (row,) = torch.autograd.grad(g[i], t, retain_graph=i < n - 1, allow_unused=True)
            if row is None:  # ∂ℓ/∂θ_i does not depend on θ (e.g. a bias under a linear head)
                continue
            if diag_only:
                out[i] = row[i].detach()
            else:
                out[i] = row.detach()
    return out
