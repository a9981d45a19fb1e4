"""Dense outputs (B, C, *S) in the pipeline: one batch's per-position predictive, and the
arrays `laplace predict` writes for them (docs/dense-outputs.md, "Command line").

`dense_batch` is what `evaluate` and `predict` both read: the MAP outputs and, per position,
the Laplace probabilities (or mean) and the GLM variance of the outputs. The GLM covariance is
computed once per batch (`laplace.dense_outputs.position_variance`) and passed through the
link per position, as `Laplace.__call__` does for dense outputs, so the probabilities are those
of `la(x)`; the per-position variance is the diagonal of J_s Σ J_sᵀ (the logits' variance for
classification / binary, the mean's for regression, without the observation noise).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from laplace_cli.core.enums import Likelihood, LinkApprox, PredType
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.npz_stream import NpzStream
from laplace_cli.laplace.dense_outputs import position_variance
from laplace_cli.pipeline.predict_stage import PredictOptions, default_pred_options
from laplace_cli.pipeline.stage_support import Progress, check_model_accepts, no_progress
from laplace_cli.posterior.predictive import glm_link

#: NPZ arrays per likelihood, each (N, ...) in input order (docs/dense-outputs.md).
NPZ_FIELDS = {
    Likelihood.CLASSIFICATION: ("id", "pred", "probs", "max_prob", "entropy", "var"),
    Likelihood.BINARY: ("id", "pred", "probs", "var"),
    Likelihood.REGRESSION: ("id", "mean", "var", "var_total"),
}


def is_dense(la: Any) -> bool:
    """Whether the posterior was fitted on dense outputs (`output_positions`)."""
    return getattr(la, "output_positions", None) is not None


def dense_batch(
    la: Any,
    x: Any,
    pred_type: PredType,
    link_approx: LinkApprox,
    n_samples: int,
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """One batch's outputs, each (B, C, *S): `f_map` (MAP outputs); `probs` (classification,
    binary) or `mean` (regression); with the GLM predictive `var` (the diagonal of the
    per-position output covariance) and for regression `var_total` (var + σ²). `pred_type`
    nn samples networks (`la(x, pred_type="nn")`): no `var` for classification / binary."""
    shape = tuple(la.output_shape)
    with torch.no_grad():
        f_map = la.subset.output(x).detach()
    out: dict[str, Tensor] = {"f_map": f_map.reshape(f_map.shape[0], *shape)}
    if pred_type == PredType.GLM:
        f_mu, f_cov = position_variance(la, x)
        f_mu, f_cov = f_mu.detach(), f_cov.detach()
        var = torch.diagonal(f_cov, dim1=1, dim2=2).movedim(-1, 1)  # (B, C, *S)
        out["var"] = var
        if la.likelihood == Likelihood.REGRESSION:
            out["mean"] = f_mu
            out["var_total"] = var + la.sigma_noise.detach().reshape(()) ** 2
            return out
        n_cls, b = shape[0], f_mu.shape[0]
        mu_rows = f_mu.reshape(b, n_cls, -1).transpose(1, 2).reshape(-1, n_cls)
        cov_rows = f_cov.reshape(b, n_cls, n_cls, -1).permute(0, 3, 1, 2).reshape(-1, n_cls, n_cls)
        rows = glm_link(la.likelihood, link_approx, mu_rows, cov_rows, n_samples, generator)
        out["probs"] = rows.reshape(b, -1, n_cls).transpose(1, 2).reshape(b, *shape).detach()
        return out
    pred = la(x, pred_type="nn", link_approx=link_approx, n_samples=n_samples, generator=generator)
    if la.likelihood == Likelihood.REGRESSION:
        mean, var = pred
        out.update(mean=mean.detach(), var=var.detach())
        out["var_total"] = out["var"] + la.sigma_noise.detach().reshape(()) ** 2
    else:
        out["probs"] = pred.detach()
    return out


def batch_generator(seed: int, start: int, device: Any) -> torch.Generator:
    """The Monte Carlo stream of the batch starting at input `start` (seed and start: the same
    batches give the same draws; per-row streams are not available for dense outputs)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + start)
    return g


def npz_arrays(la: Any, ids: list[Any], pred: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """The NPZ arrays of one batch (`NPZ_FIELDS`); floats as float32, classes as int64."""
    arrays: dict[str, np.ndarray] = {}
    ids_arr = np.asarray(ids)
    arrays["id"] = ids_arr if ids_arr.dtype.kind in "iu" else ids_arr.astype(str)
    f32 = lambda t: t.detach().to(torch.float32).cpu().numpy()  # noqa: E731
    if la.likelihood == Likelihood.REGRESSION:
        for key in ("mean", "var", "var_total"):
            arrays[key] = f32(pred[key])
        return arrays
    probs = pred["probs"]
    if la.likelihood == Likelihood.CLASSIFICATION:
        arrays["pred"] = probs.argmax(1).cpu().numpy().astype(np.int64)
        arrays["probs"] = f32(probs)
        arrays["max_prob"] = f32(probs.max(1).values)
        logp = torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
        arrays["entropy"] = f32(-(probs * logp).sum(1))
    else:
        arrays["pred"] = (probs > 0.5).cpu().numpy().astype(np.int8)
        arrays["probs"] = f32(probs)
    if "var" in pred:
        arrays["var"] = f32(pred["var"])
    return arrays


def write_dense_predictions(
    la: Any,
    chunks: Iterable[tuple[Any, ...]],
    options: PredictOptions,
    output: str | Path,
    source: str,
    progress: Progress = no_progress,
    total: int | None = None,
) -> int:
    """Predict every chunk `(ids, x[, start])` and write the arrays to the NPZ `output`,
    streamed batch by batch to temporary files and renamed into place at the end (an error
    leaves `output` as it was). Returns the number of inputs written."""
    from laplace_cli.core.batches import to_device

    if options.conformal is not None:
        raise BadInputError(
            "--conformal: conformal sets are per input; not available for dense outputs "
            "(drop --conformal)"
        )
    pred_type, link_approx = default_pred_options(la, options)
    stream = NpzStream(output)
    n = 0
    try:
        for chunk in progress(chunks, total, "predict"):
            ids, x = chunk[0], chunk[1]
            start = chunk[2] if len(chunk) > 2 else n
            x = to_device(x, la.device, getattr(la, "model_dtype", la.dtype))
            if n == 0:
                check_model_accepts(la, x, source)
            if isinstance(x, Tensor) and x.is_floating_point() and not torch.isfinite(x).all():
                bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero()[0, 0])
                raise BadInputError(f"{source}: row {ids[bad]}: features contain NaN or Inf")
            g = batch_generator(options.seed, start, la.device)
            pred = dense_batch(la, x, pred_type, link_approx, options.n_samples, g)
            stream.append(npz_arrays(la, list(ids), pred))
            n += len(ids)
        if n == 0:
            raise BadInputError(f"{source}: no inputs to predict")
        stream.close()
    except BaseException:
        stream.abort()
        raise
    return n


def dense_summary(la: Any) -> str:
    """`C × H × W` of the outputs, for messages."""
    shape = tuple(la.output_shape or ())
    return " × ".join(str(v) for v in shape) + f" ({math.prod(shape)} outputs per input)"


def predict_split_npz(
    recipe: Any, cfg: dict[str, Any], out: Path, la: Any, ctx: Any, progress: Progress
) -> str:
    """A recipe's predict stage for dense outputs: the split's arrays in `predictions.npz`."""
    from laplace_cli.io.datasets import load_dataset_spec
    from laplace_cli.pipeline.predict_stage import loader_chunks, number_chunks
    from laplace_cli.pipeline.stage_support import dense_labels, split_loader

    fmt = cfg.get("format", "npz")
    if fmt != "npz":
        raise BadInputError(
            f"{recipe.source}: predict.format: {fmt} writes one row per input; the posterior "
            "has dense outputs (output_positions): use format: npz"
        )
    if ctx is not None:
        raise BadInputError(
            "predict of dense outputs runs in one process: run the recipe without torchrun"
        )
    split = cfg.get("split", "test")
    spec = load_dataset_spec(recipe.data)
    loader = split_loader(
        spec,
        split,
        la.likelihood,
        recipe.batch_size,
        require_labels=False,
        label_maps=dense_labels(la, spec),
    )
    options = PredictOptions(
        pred_type=cfg.get("pred_type"),
        link_approx=cfg.get("link_approx"),
        n_samples=int(cfg.get("samples", 100)),
        seed=recipe.seed,
    )
    path = out / cfg.get("output", "predictions.npz")
    source = f"{recipe.data}: split {split!r}"
    chunks = number_chunks(loader_chunks(loader))
    write_dense_predictions(la, chunks, options, path, source, progress, len(loader))
    return str(path)
