"""Dense outputs (B, C, *S) in `Laplace(output_positions=...)`: targets, loss, Λ and predictions.

The subset flattens the outputs to M = C·|S| (`subsets.dense_outputs`); here the positions
become rows of the likelihood: f (B, M) is viewed as (B, |S|, C), the per-position loss and
Hessian square root L_s (C, K) come from the ordinary (B, C) likelihood code on those rows, and

    W[b] = blockdiag_s( √w_bs · L_bs )       (M, |S|·K)

so that the posterior's Σ_b J_bᵀ W_b W_bᵀ J_b is Σ_b Σ_s w_bs J_bsᵀ Λ_bs J_bs: the GGN summed over
positions, exactly, for every structure (diag, kron, full, low-rank), with the per-position
output gradients of every layer in the K-FAC factor B. The position weights w are

* "independent": 1 (the positions' log-likelihoods are summed),
* "mean": 1/|S_b| (their mean per input, |S_b| the unmasked positions of input b),

and 0 for a masked position (a classification target equal to `ignore_index`), which therefore
contributes nothing to the loss or the curvature. docs/dense-outputs.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from laplace_cli.core.enums import Likelihood, LinkApprox, PredType, Subset
from laplace_cli.core.errors import BadInputError, NumericalError
from laplace_cli.posterior.predictive import glm_link, link
from laplace_cli.subsets.base import ParameterSubset
from laplace_cli.subsets.dense_outputs import DenseLastLayer, DenseOutputs

OUTPUT_POSITIONS = ("independent", "mean")


def parse_output_positions(value: str | None) -> str | None:
    """None, "independent" or "mean"; anything else is refused naming the choices."""
    if value is None:
        return None
    if value not in OUTPUT_POSITIONS:
        raise BadInputError(
            f"output_positions: expected 'independent' or 'mean' (or None for (B, C) outputs), "
            f"got {value!r}"
        )
    return value


def check_dense_choices(la: Any, backend: str, feature_reduction: str | None) -> None:
    """Refuse the settings that dense outputs do not support, naming what to use instead."""
    if backend == "asdl":
        raise BadInputError("output_positions needs backend 'native' (or 'auto'), not 'asdl'")
    if la.likelihood == Likelihood.REGRESSION and la.output_positions == "mean":
        raise BadInputError(
            "output_positions='mean' is for classification and binary likelihoods; use "
            "'independent' for regression"
        )
    if feature_reduction is not None:
        raise BadInputError("feature_reduction does not apply with output_positions; drop it")


def build_dense_subset(
    la: Any, subnetwork_indices: Any, plain: Callable[[Any], ParameterSubset]
) -> ParameterSubset:
    """The subset for dense outputs: a 1×1-conv head in closed form for the last layer, the
    flattening wrapper around the ordinary subset otherwise."""
    if la.subset_of_weights == Subset.LAST_LAYER:
        return DenseLastLayer(la.model, la.last_layer_name)
    return DenseOutputs(plain(subnetwork_indices))


def prepare_targets(likelihood: Likelihood, y: Tensor, dtype: torch.dtype) -> Tensor:
    """Targets of a dense batch: (B, *S) class indices as (B, |S|) integers; (B, C, *S) or
    (B, *S) real targets as they are (matched to the outputs in `target_rows`)."""
    if likelihood == Likelihood.CLASSIFICATION:
        return y.long().reshape(y.shape[0], -1)
    return y.to(dtype)


def positions_view(f: Tensor, n_classes: int) -> Tensor:
    """Flattened outputs (B, C·|S|) as rows per position, (B, |S|, C)."""
    return f.reshape(f.shape[0], n_classes, -1).transpose(1, 2)


def target_rows(likelihood: Likelihood, f_rows: Tensor, y: Tensor, index: int) -> Tensor:
    """Targets per position: (B, |S|) class indices, or (B, |S|, C) real targets."""
    b, n_pos, n_cls = f_rows.shape
    if likelihood == Likelihood.CLASSIFICATION:
        if y.shape != (b, n_pos):
            raise BadInputError(
                f"batch {index}: dense classification targets must be (batch, *positions) "
                f"with {n_pos} positions per input, got {tuple(y.shape)}"
            )
        return y
    if y.numel() != b * n_pos * n_cls:
        raise BadInputError(
            f"batch {index}: targets of shape {tuple(y.shape)} do not fit model outputs "
            f"(batch {b}, {n_cls} outputs, {n_pos} positions)"
        )
    return y.reshape(b, n_cls, n_pos).transpose(1, 2)


def valid_mask(likelihood: Likelihood, y_rows: Tensor, ignore_index: int) -> Tensor:
    """(B, |S|) True where the position counts (classification targets ≠ ignore_index)."""
    if likelihood == Likelihood.CLASSIFICATION:
        return y_rows != ignore_index
    return torch.ones(y_rows.shape[:2], dtype=torch.bool, device=y_rows.device)


def position_weights(valid: Tensor, mode: str, dtype: torch.dtype) -> Tensor:
    """w (B, |S|): 1 per unmasked position ("independent") or 1/|S_b| ("mean"); 0 if masked."""
    w = valid.to(dtype)
    if mode == "mean":
        w = w / valid.sum(1, keepdim=True).clamp_min(1).to(dtype)
    return w


def row_losses(likelihood: Likelihood, f: Tensor, y: Tensor) -> Tensor:
    """Negative log-likelihood of each row, (R,), for rows f (R, C) (the `summed_loss` terms)."""
    if likelihood == Likelihood.CLASSIFICATION:
        return F.cross_entropy(f, y, reduction="none")
    if likelihood == Likelihood.REGRESSION:
        return 0.5 * ((f - y) ** 2).sum(-1)
    return F.binary_cross_entropy_with_logits(f, y.to(f.dtype), reduction="none").sum(-1)


def block_diagonal(W_rows: Tensor) -> Tensor:
    """(B, |S|, C, K) per-position square roots as W (B, C·|S|, |S|·K), block-diagonal in s.

    Row c·|S| + s matches the flattened outputs; column t·K + k is column k of position t.
    """
    b, n_pos, n_cls, k = W_rows.shape
    eye = torch.eye(n_pos, dtype=W_rows.dtype, device=W_rows.device)
    return torch.einsum("bsck,st->bcstk", W_rows, eye).reshape(b, n_cls * n_pos, n_pos * k)


def prepared_rows(la: Any, f: Tensor, y: Tensor, index: int) -> tuple[Tensor, Tensor, Tensor]:
    """(f_rows (B, |S|, C), y_rows with masked labels set to 0, w (B, |S|)) of one batch."""
    n_cls = la.subset.output_shape[0]
    f_rows = positions_view(f, n_cls)
    y_rows = target_rows(la.likelihood, f_rows, y, index)
    valid = valid_mask(la.likelihood, y_rows, la.ignore_index)
    if la.likelihood == Likelihood.CLASSIFICATION:
        y_rows = torch.where(valid, y_rows, torch.zeros_like(y_rows))
    return f_rows, y_rows, position_weights(valid, la.output_positions, f.dtype)


def record_batch(la: Any, index: int, f: Tensor, y: Tensor) -> None:
    """`Laplace._record_batch` for dense outputs: checks, the weighted loss and the data count.

    n_outputs is M = C·|S| (the flattened outputs the posterior sees), so the regression
    normaliser N·M·log(σ√2π) counts every position.
    """
    shape = la.subset.output_shape
    n_out = f.shape[1]
    if la.n_outputs is None:
        if la._sigma_noise.numel() != 1:
            raise BadInputError(
                "output_positions takes one scalar sigma_noise (got one per output)"
            )
        la.n_outputs = n_out
        la.output_shape = shape
    elif n_out != la.n_outputs:
        raise BadInputError(
            f"batch {index}: model gave outputs {shape}, earlier {la.output_shape}; with "
            "output_positions every input must give the same output shape"
        )
    f_rows, y_rows, w = prepared_rows(la, f, y, index)
    if la.likelihood == Likelihood.CLASSIFICATION:
        raw = target_rows(la.likelihood, f_rows, y, index)
        ok = (raw == la.ignore_index) | ((raw >= 0) & (raw < shape[0]))
        if not bool(ok.all()):
            bad = raw[~ok]
            raise BadInputError(
                f"batch {index}: labels must lie in [0, {shape[0]}) or equal ignore_index "
                f"{la.ignore_index}, got {int(bad[0])}"
            )
    else:
        if not torch.isfinite(y).all():
            raise BadInputError(f"batch {index}: targets contain NaN or Inf")
        if la.likelihood == Likelihood.BINARY and y.numel() and ((y < 0) | (y > 1)).any():
            raise BadInputError(f"batch {index}: binary targets must lie in [0, 1]")
    if not torch.isfinite(f).all():
        raise NumericalError(f"batch {index}: the model's outputs contain NaN or Inf")
    b, n_pos, n_cls = f_rows.shape
    losses = row_losses(
        la.likelihood,
        f_rows.reshape(-1, n_cls),
        y_rows.reshape(b * n_pos, *y_rows.shape[2:]),
    )
    la.loss = la.loss + (w.reshape(-1) * losses).sum().detach()
    la.n_data += b


def output_sqrt(
    la: Any, f: Tensor, y: Tensor, rows_sqrt: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """W (B, M, |S|·K) for dense outputs from `rows_sqrt` (the (B, C) rule) on the positions."""
    f_rows, y_rows, w = prepared_rows(la, f, y, -1)
    b, n_pos, n_cls = f_rows.shape
    W = rows_sqrt(f_rows.reshape(-1, n_cls), y_rows.reshape(b * n_pos, *y_rows.shape[2:]))
    W = W.reshape(b, n_pos, n_cls, W.shape[-1]) * w.sqrt().reshape(b, n_pos, 1, 1)
    return block_diagonal(W)


def position_variance(la: Any, x: Any) -> tuple[Tensor, Tensor]:
    """GLM mean (B, C, *S) and per-position output covariance J_s Σ J_sᵀ (B, C, C, *S)."""
    f_mu, f_var = la.functional_variance(x)
    shape = la.subset.output_shape if f_mu.shape[0] else la.output_shape
    n_cls, spatial = shape[0], shape[1:]
    b, n_pos = f_mu.shape[0], math.prod(spatial)
    blocks = torch.diagonal(f_var.reshape(b, n_cls, n_pos, n_cls, n_pos), dim1=2, dim2=4)
    return f_mu.reshape(b, *shape), blocks.reshape(b, n_cls, n_cls, *spatial)


def _rows_to_dense(rows: Tensor, shape: tuple[int, ...]) -> Tensor:
    """(B·|S|, C) rows back to (B, C, *S)."""
    n_cls, spatial = shape[0], shape[1:]
    b = rows.shape[0] // max(math.prod(spatial), 1)
    return rows.reshape(b, -1, n_cls).transpose(1, 2).reshape(b, *shape)


def predict(
    la: Any,
    x: Any,
    pt: PredType,
    link_approx: LinkApprox,
    likelihood: Likelihood,
    n_samples: int,
    joint: bool,
    diagonal_output: bool,
    generator: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    """`la(x)` for dense outputs, per position: probabilities (B, C, *S) for classification
    and binary; (mean (B, C, *S), covariance (B, C, C, *S) or with `diagonal_output` variance
    (B, C, *S)) for regression. Positions are independent rows of the link."""
    if joint:
        raise BadInputError(
            "joint=True is not available with output_positions; use la.functional_variance(x) "
            "for the covariance across positions (B, C·|S|, C·|S|)"
        )
    if not isinstance(generator, torch.Generator | None):
        raise BadInputError(
            "per-row seeds (RowSeeds) are not available with output_positions; pass a "
            "torch.Generator"
        )
    if pt == PredType.GLM:
        f_mu, f_var = position_variance(la, x)
        shape = tuple(f_mu.shape[1:])
        if likelihood == Likelihood.REGRESSION:
            if diagonal_output:
                return f_mu, torch.diagonal(f_var, dim1=1, dim2=2).movedim(-1, 1)
            return f_mu, f_var
        n_cls = shape[0]
        mu_rows = f_mu.reshape(f_mu.shape[0], n_cls, -1).transpose(1, 2).reshape(-1, n_cls)
        var_rows = f_var.reshape(f_var.shape[0], n_cls, n_cls, -1).permute(0, 3, 1, 2)
        var_rows = var_rows.reshape(-1, n_cls, n_cls)
        if diagonal_output:
            var_rows = torch.diagonal(var_rows, dim1=-2, dim2=-1)
        probs = glm_link(likelihood, link_approx, mu_rows, var_rows, n_samples, generator)
        return _rows_to_dense(probs, shape)
    samples = la.predictive_samples(x, pred_type="nn", n_samples=n_samples, generator=generator)
    if likelihood == Likelihood.REGRESSION:
        return samples.mean(0), samples.var(0)
    return samples.mean(0)


def link_per_position(la: Any, samples: Tensor) -> Tensor:
    """Sampled flattened outputs (n, B, C·|S|) through the link per position, (n, B, C, *S)."""
    shape = la.subset.output_shape if samples.shape[1] else la.output_shape
    n_cls = shape[0]
    s, b = samples.shape[:2]
    rows = samples.reshape(s, b, n_cls, -1).transpose(2, 3)  # (n, B, |S|, C)
    return link(la.likelihood, rows).transpose(2, 3).reshape(s, b, *shape)
