"""The predict stage: predictive options, one batch's predictions, and streamed prediction rows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import batch_size, split_batch
from laplace_cli.core.enums import Likelihood, LinkApprox, PredType
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.laplace.functional_prediction import functional_uncertainty
from laplace_cli.laplace.functional_state import is_functional
from laplace_cli.metrics.conformal import prediction_fields
from laplace_cli.pipeline.stage_support import (
    check_model_accepts,
    free_device_cache,
    is_out_of_memory,
    out_of_memory,
)
from laplace_cli.posterior.predictive import (
    RowSeeds,
    check_pred_options,
)


# --- predictions --------------------------------------------------------------------------------
@dataclass
class PredictOptions:
    pred_type: str | None = None
    link_approx: str | None = None
    n_samples: int = 100
    interval: float = 0.95
    seed: int = 0
    #: Stored conformal threshold(s) of one level and score (`conformal_stage.calibration_for`):
    #: the rows get `conformal_set`, `conformal_has_0` / `conformal_has_1` (binary) or
    #: `conformal_lower` / `conformal_upper`.
    conformal: dict[str, Any] | None = None


def default_pred_options(la: Laplace, options: PredictOptions) -> tuple[PredType, LinkApprox]:
    """Explicit options, else what the posterior was tuned for, else glm / probit (nn: mc)."""
    tuned = la.tuning or {}
    pred_type = options.pred_type or tuned.get("pred_type") or "glm"
    link_approx = options.link_approx or tuned.get("link_approx")
    if not link_approx:
        link_approx = "mc" if pred_type == "nn" else "probit"
    return check_pred_options(pred_type, link_approx)


def normal_quantile(level: float) -> float:
    """z with P(|N(0,1)| ≤ z) = level."""
    if not 0 < level < 1:
        raise BadInputError(f"--interval must lie strictly between 0 and 1, got {level}")
    return math.sqrt(2.0) * float(torch.erfinv(torch.tensor(level, dtype=torch.float64)))


def predict_batch(
    la: Laplace,
    x: Any,
    pred_type: PredType,
    link_approx: LinkApprox,
    n_samples: int,
    generator: torch.Generator | RowSeeds | None,
    interval: float = 0.95,
) -> dict[str, Tensor]:
    """Everything a prediction row needs for one batch (`Laplace.uncertainty`)."""
    if la.likelihood == Likelihood.REGRESSION:
        normal_quantile(interval)  # validates the level with the option's name
    if is_functional(la):  # function-space (GP) Laplace: its exact GLM predictive
        return functional_uncertainty(
            la, x, pred_type, link_approx, n_samples, generator, level=interval
        )
    return la.uncertainty(x, pred_type, link_approx, n_samples, generator, level=interval)


ROW_FIELDS = {
    # conformal_*: only with `PredictOptions.conformal` (`laplace predict --conformal`).
    Likelihood.REGRESSION: ("mean", "var", "var_total", "lower", "upper")
    + ("conformal_lower", "conformal_upper"),
    Likelihood.CLASSIFICATION: ("pred", "probs", "var", "entropy", "max_prob", "mutual_info")
    + ("conformal_set",),
    Likelihood.BINARY: ("pred", "probs", "var", "entropy", "max_prob", "mutual_info")
    + ("conformal_has_0", "conformal_has_1"),
}


def prediction_rows(la: Laplace, ids: list[Any], pred: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Rows with the normative field names (JSONL form: per-class values as lists)."""
    fields = [f for f in ROW_FIELDS[la.likelihood] if f in pred]
    columns = {f: pred[f].detach().cpu().tolist() for f in fields}
    return [{"id": rid, **{f: columns[f][i] for f in fields}} for i, rid in enumerate(ids)]


def number_chunks(chunks: Iterable[tuple[list[Any], Any]]) -> Iterator[tuple[list[Any], Any, int]]:
    """`(ids, x, start)`: each chunk with the global index of its first row.

    Number the chunks before dealing them to processes (`distributed.round_robin`), so that
    each row keeps its index, and with it its Monte Carlo stream (`RowSeeds`)."""
    start = 0
    for ids, x in chunks:
        yield ids, x, start
        start += len(ids)


def iter_prediction_rows(
    la: Laplace,
    chunks: Iterable[tuple[list[Any], Tensor] | tuple[list[Any], Tensor, int]],
    options: PredictOptions,
    source: str = "input",
) -> Iterator[list[dict[str, Any]]]:
    """Stream rows chunk by chunk: memory is bounded by one chunk, whatever the input length.

    Chunks are `(ids, x)`, or `(ids, x, start)` from `number_chunks` (needed when they are not
    all seen here, as under torchrun). Monte Carlo draws are seeded per row from
    `options.seed` and the row's global index (`RowSeeds`), so a row's scores do not depend on
    the batch size or on the batch it falls in. `source` names the inputs in errors (the
    first chunk is checked against the model)."""
    pred_type, link_approx = default_pred_options(la, options)
    checked = False
    seen = 0
    for chunk in chunks:
        ids, x = chunk[0], chunk[1]
        start = chunk[2] if len(chunk) > 2 else seen
        seen = start + len(ids)
        with la.subset.reuse_forward():  # the check's forward pass serves the prediction
            if not checked:
                try:
                    check_model_accepts(la, x, source)
                except (RuntimeError, MemoryError) as exc:
                    if not is_out_of_memory(exc):
                        raise
                    free_device_cache()  # the batch is halved below; check one row now
                    check_model_accepts(la, _rows_of(x, 0, 1), source)
                checked = True
            # Float features are checked; token ids (dict / integer batches) cannot be NaN.
            if isinstance(x, Tensor) and x.is_floating_point() and not torch.isfinite(x).all():
                bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero()[0, 0])
                raise BadInputError(f"{source}: row {ids[bad]}: features contain NaN or Inf")
            pred = predict_halving(la, x, start, pred_type, link_approx, options)
            if options.conformal is not None:
                # APS: one uniform per row, seeded by its global index (any batch, any rank).
                u = RowSeeds(options.seed, start).uniform(len(ids))
                pred.update(prediction_fields(pred, options.conformal, u))
        yield prediction_rows(la, list(ids), pred)


def _rows_of(x: Any, lo: int, hi: int) -> Any:
    """Rows lo:hi of a batch (a tensor, or a dict of tensors for text models)."""
    if isinstance(x, Mapping):
        return {k: v[lo:hi] for k, v in x.items()}
    return x[lo:hi]


def predict_halving(
    la: Laplace,
    x: Any,
    start: int,
    pred_type: PredType,
    link_approx: LinkApprox,
    options: PredictOptions,
) -> dict[str, Tensor]:
    """`predict_batch` on `x`; on an out-of-memory error, the two halves one after the other
    (recursively, down to one row), then the results joined.

    The result does not change: Monte Carlo draws are seeded per row from its global index
    (`RowSeeds(seed, start)`), so a row's scores do not depend on the batch it falls in. One
    row that still does not fit is `OutOfMemory` (exit 3) naming the batch size asked for."""
    n = batch_size(x)
    try:
        return predict_batch(
            la,
            x,
            pred_type,
            link_approx,
            options.n_samples,
            RowSeeds(options.seed, start),
            options.interval,
        )
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(exc):
            raise  # the memory guard's refusal (exit 2), and every other error
        free_device_cache()
        if n <= 1:
            raise out_of_memory("predict (even one row at a time)", n, la.device, exc) from exc
    half = n // 2
    first = predict_halving(la, _rows_of(x, 0, half), start, pred_type, link_approx, options)
    second = predict_halving(
        la, _rows_of(x, half, n), start + half, pred_type, link_approx, options
    )
    return {k: torch.cat([first[k], second[k]]) for k in first}


def loader_chunks(loader: Iterable[Any]) -> Iterator[tuple[list[int], Tensor]]:
    """(ids, x) chunks from a split's DataLoader; ids are global row numbers."""
    start = 0
    for batch in loader:
        x, _ = split_batch(batch)
        n = batch_size(x)  # dict (text) batches too
        yield list(range(start, start + n)), x
        start += n
