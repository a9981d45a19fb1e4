"""laplace-torch's small helpers (`laplace.utils.utils`) that users call directly."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from laplace_cli.core.errors import BadInputError

__all__ = [
    "get_nll",
    "validate",
    "parameters_per_layer",
    "expand_prior_precision",
    "fix_prior_prec_structure",
    "invsqrt_precision",
    "kron",
    "diagonal_add_scalar",
    "symeig",
    "block_diag",
    "normal_samples",
    "SoDSampler",
]


def get_nll(out_dist: Tensor, targets: Tensor) -> Tensor:
    """Mean negative log-likelihood of class probabilities `out_dist` (B, C) at `targets`."""
    return F.nll_loss(torch.log(out_dist), targets)


@torch.no_grad()
def validate(
    laplace: Any,
    val_loader: Iterable[Any],
    loss: Callable[..., Tensor] | Any,
    pred_type: str = "glm",
    link_approx: str = "probit",
    n_samples: int = 100,
    dict_key_y: str = "labels",
) -> float:
    """`loss` of `laplace`'s predictive over `val_loader`, as laplace-torch's `validate`.

    `loss` is a callable on all predictions at once — `loss(probs, y)`, or for a (mean,
    variance) predictive `loss(mean, var, y)` — or a torchmetrics `Metric` updated per batch.
    """
    is_metric = hasattr(loss, "update") and hasattr(loss, "compute")
    means: list[Tensor] = []
    variances: list[Tensor] = []
    targets: list[Tensor] = []
    for data in val_loader:
        if isinstance(data, Mapping):
            x, y = data, data[dict_key_y]
        else:
            x, y = data
        out = laplace(x, pred_type=pred_type, link_approx=link_approx, n_samples=n_samples)
        y = torch.as_tensor(y).to(out[0].device if isinstance(out, tuple) else out.device)
        if isinstance(out, tuple):
            if is_metric:
                try:
                    loss.update(*out, y)
                except TypeError:  # a metric of (prediction, target) only
                    loss.update(out[0], y)
            else:
                means.append(out[0])
                variances.append(out[1])
                targets.append(y)
        elif is_metric:
            loss.update(out, y)
        else:
            means.append(out)
            targets.append(y)
    if is_metric:
        return float(loss.compute().sum().item())
    if not variances:
        return float(loss(torch.cat(means), torch.cat(targets)).item())
    return float(loss(torch.cat(means), torch.cat(variances), torch.cat(targets)).item())


def parameters_per_layer(model: nn.Module) -> list[int]:
    """Number of entries of each parameter tensor of `model`."""
    return [int(p.numel()) for p in model.parameters()]


def expand_prior_precision(prior_prec: Tensor, model: nn.Module) -> Tensor:
    """A prior precision (1,), (tensors,) or (P,) expanded to one value per trainable entry."""
    params = [p for p in model.parameters() if p.requires_grad]
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    if prior_prec.ndim != 1:
        raise BadInputError(f"prior_prec must be 1-D, got shape {tuple(prior_prec.shape)}")
    n = prior_prec.numel()
    if n == 1:
        return torch.ones_like(theta) * prior_prec
    if n == theta.numel():
        return prior_prec.to(theta.device)
    if n != len(params):
        raise BadInputError(
            f"prior_prec has {n} values; expected 1, one per parameter tensor ({len(params)}) "
            f"or one per parameter ({theta.numel()})"
        )
    return torch.cat([d * torch.ones_like(p).reshape(-1) for d, p in zip(prior_prec, params)])


def fix_prior_prec_structure(
    prior_prec_init: float | Tensor,
    prior_structure: str,
    n_layers: int,
    n_params: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """`prior_prec_init` repeated to the shape of `prior_structure` ("scalar", "layerwise",
    "diag"): (1,), (n_layers,) or (n_params,)."""
    structure = str(getattr(prior_structure, "value", prior_structure))
    sizes = {"scalar": 1, "layerwise": n_layers, "diag": n_params}
    if structure not in sizes:
        raise BadInputError(f"Invalid prior structure {prior_structure}.")
    value = torch.as_tensor(prior_prec_init).reshape(-1)[0].item()
    return torch.full((sizes[structure],), value, device=device, dtype=dtype)


def invsqrt_precision(M: Tensor) -> Tensor:
    """A lower-triangular `L` with `L Lᵀ = M⁻¹` (laplace-torch's `M^{-1/2}`): the scale of a
    Gaussian of precision `M`, obtained without inverting `M` first."""
    flipped = torch.linalg.cholesky(torch.flip(M, (-2, -1)))
    L_inv = torch.transpose(torch.flip(flipped, (-2, -1)), -2, -1)
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    return torch.linalg.solve_triangular(L_inv, eye, upper=False)


def kron(t1: Tensor, t2: Tensor) -> Tensor:
    """Kronecker product of two matrices (`torch.kron` for 2-D inputs)."""
    if t1.ndim != 2 or t2.ndim != 2:
        raise BadInputError("kron takes two 2-D tensors")
    return torch.kron(t1, t2)


def diagonal_add_scalar(X: Tensor, value: float | Tensor) -> Tensor:
    """`X` with `value` added to its diagonal (a new tensor; `X` is left unchanged)."""
    eye = torch.eye(X.shape[0], dtype=X.dtype, device=X.device)
    return X + eye * value


def symeig(M: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (clamped at 0, NaNs zeroed) and eigenvectors of a symmetric matrix, as
    laplace-torch's `symeig`: on a failed decomposition retried once with the identity added
    (and removed from the eigenvalues); a second failure raises (laplace-torch exits)."""
    try:
        L, W = torch.linalg.eigh(M, UPLO="U")
    except RuntimeError:  # did not converge
        eye = torch.eye(M.shape[0], device=M.device, dtype=M.dtype)
        L, W = torch.linalg.eigh(M + eye, UPLO="U")
        L = L - 1.0
    return torch.nan_to_num(L.clamp(min=0.0)), torch.nan_to_num(W)


def block_diag(blocks: list[Tensor]) -> Tensor:
    """The block-diagonal matrix of square `blocks` (`torch.block_diag`)."""
    return torch.block_diag(*blocks)


def normal_samples(
    mean: Tensor, var: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """`n_samples` draws (n_samples, B, C) from the Gaussians of `mean` (B, C) and diagonal
    variance (B, C) or full covariance (B, C, C) `var`, with laplace-torch's draw order (one
    (C, n_samples) standard normal shared across the batch)."""
    if mean.ndim != 2:
        raise BadInputError("Invalid input shape of mean, should be 2-dimensional.")
    _, output_dim = mean.shape
    eps = torch.randn(
        (output_dim, n_samples), device=mean.device, dtype=mean.dtype, generator=generator
    )
    if mean.shape == var.shape:
        scaled = var.sqrt().unsqueeze(-1) * eps.unsqueeze(0)
    elif var.ndim == 3 and mean.shape == var.shape[:2] and var.shape[-1] == output_dim:
        scaled = torch.matmul(torch.linalg.cholesky(var), eps.unsqueeze(0))
    else:
        raise BadInputError("Invalid input shapes.")
    return (mean.unsqueeze(-1) + scaled).permute((2, 0, 1))


class SoDSampler(torch.utils.data.Sampler):
    """Samples `M` of `N` indices without replacement (numpy `default_rng(seed)`), as
    laplace-torch's subset-of-data sampler."""

    def __init__(self, N: int, M: int, seed: int = 0) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        self.indices = torch.tensor(rng.choice(list(range(N)), M, replace=False))

    def __iter__(self):
        return (i for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)
