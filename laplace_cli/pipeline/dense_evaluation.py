"""`evaluate` for dense outputs (B, C, *S): MAP, temperature scaling and Laplace per position.

Every unmasked position of every input is one row of the metrics (`metrics.segmentation`):
pixel accuracy, NLL, ECE / MCE / adaptive ECE, Brier and mean IoU (classification); the
binary and regression metrics per position otherwise. The temperature row fits one T on the
validation split's positions. The tables that are defined per input (selective prediction,
conformal sets, OOD detection, bootstrap intervals) are skipped, each with a one-line reason in
`settings.skipped`. `pipeline.evaluation.evaluate` calls `score_dense` and wraps its result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import split_batch, to_device
from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.datasets import load_dataset_spec
from laplace_cli.metrics import classification as metrics
from laplace_cli.metrics.segmentation import mean_iou
from laplace_cli.metrics.temperature import apply_temperature, fit_temperature_checked
from laplace_cli.pipeline.dense_predictions import batch_generator, dense_batch
from laplace_cli.pipeline.predict_stage import PredictOptions, default_pred_options
from laplace_cli.pipeline.stage_support import (
    Progress,
    check_model_accepts,
    dense_labels,
    len_or_none,
    no_progress,
    split_loader,
)

#: Why the per-input tables are not in a dense report (`settings.skipped`).
SKIPPED = {
    "selective": "risk-coverage curves rank whole inputs; not defined per position",
    "conformal": "conformal sets are per input; not defined per position",
}


@dataclass
class DenseRows:
    """A split's unmasked positions as rows: MAP outputs, Laplace predictive, targets."""

    f_map: Tensor  # (R, C)
    targets: Tensor  # (R,) class labels, or (R, C)
    probs: Tensor | None = None  # (R, C) classification / binary
    mean: Tensor | None = None  # (R, C) regression
    var_total: Tensor | None = None  # (R, C) regression
    var: Tensor | None = None  # (R, C) GLM output variance, if computed
    n_inputs: int = 0


@dataclass
class DenseScored:
    """What `evaluate` reports for dense outputs (the fields of `EvaluationResult`)."""

    rows: dict[str, dict[str, float]]
    settings: dict[str, Any]
    timings: dict[str, float]
    plot_inputs: dict[str, Any]
    tables: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def _rows(t: Tensor, n_cls: int) -> Tensor:
    """(B, C, *S) as (B·|S|, C), position-major within each input."""
    return t.reshape(t.shape[0], n_cls, -1).transpose(1, 2).reshape(-1, n_cls)


def collect_dense(
    la: Any,
    loader: Any,
    options: PredictOptions,
    progress: Progress = no_progress,
    what: str = "",
    source: str = "",
    laplace: bool = True,
) -> DenseRows:
    """Run the MAP model and the per-position Laplace predictive over a loader; keep the
    unmasked positions as rows (classification targets equal to the posterior's ignore_index
    are dropped). `laplace=False`: the MAP outputs only (the validation split, which only
    fits the temperature: the GLM predictive costs C·|S| backward passes per chunk)."""
    pred_type, link_approx = default_pred_options(la, options)
    n_cls = int(la.output_shape[0])
    parts: dict[str, list[Tensor]] = {}
    start = 0
    for i, batch in enumerate(progress(loader, len_or_none(loader), what)):
        x, y = split_batch(batch)
        x = to_device(x, la.device, getattr(la, "model_dtype", la.dtype))
        if i == 0:
            check_model_accepts(la, x, source or what)
        if laplace:
            g = batch_generator(options.seed, start, la.device)
            pred = dense_batch(la, x, pred_type, link_approx, options.n_samples, g)
        else:
            with torch.no_grad():
                f = la.subset.output(x).detach()
            pred = {"f_map": f.reshape(f.shape[0], *la.output_shape)}
        start += int(y.shape[0])
        if la.likelihood == Likelihood.CLASSIFICATION:
            y_rows = y.reshape(-1).long()
            keep = y_rows != la.ignore_index
        else:
            y_rows = _rows(y.reshape(pred["f_map"].shape), n_cls)
            keep = torch.ones(y_rows.shape[0], dtype=torch.bool)
        parts.setdefault("targets", []).append(y_rows[keep])
        for key in ("f_map", "probs", "mean", "var_total", "var"):
            if key in pred:
                rows = _rows(pred[key].detach().to(la.dtype).cpu(), n_cls)
                parts.setdefault(key, []).append(rows[keep])
    if not parts:
        raise BadInputError(f"{source or what}: empty split (no inputs)")
    cat = {k: torch.cat(v) for k, v in parts.items()}
    if cat["targets"].numel() == 0:
        raise BadInputError(
            f"{source or what}: every position is masked (labels all equal ignore_index "
            f"{la.ignore_index})"
        )
    return DenseRows(n_inputs=start, **cat)


def score_dense(
    la: Any,
    data_path: str | Path,
    *,
    split: str = "test",
    val_split: str | None = "val",
    options: PredictOptions | None = None,
    batch_size: int | None = None,
    n_bins: int = 15,
    binning: str = "equal-width",
    progress: Progress = no_progress,
    ood_data: Any = None,
    bootstrap_settings: Any = None,
) -> DenseScored:
    """Rows `map`, `temperature` (with a validation split) and `laplace` over the positions."""
    if bootstrap_settings is not None:
        raise BadInputError(
            "--bootstrap resamples inputs and is not available for dense outputs yet; drop it"
        )
    options = options or PredictOptions()
    pred_type, link_approx = default_pred_options(la, options)
    spec = load_dataset_spec(data_path)
    label_maps = dense_labels(la, spec)
    timings: dict[str, float] = {}

    def collect(name: str, laplace: bool = True) -> DenseRows:
        loader = split_loader(
            spec, name, la.likelihood, batch_size, any_order=True, label_maps=label_maps
        )
        start = time.perf_counter()
        out = collect_dense(
            la, loader, options, progress, f"evaluate {name}", f"{data_path}: split {name!r}",
            laplace=laplace,
        )  # fmt: skip
        timings[f"predict_{name}"] = time.perf_counter() - start
        return out

    test = collect(split)
    val = collect(val_split, False) if val_split and val_split in spec.splits else None
    rows, plots, baseline = _score(la, test, val, n_bins, binning)
    skipped = dict(SKIPPED)
    if ood_data is not None:
        skipped["ood"] = "OOD detection scores whole inputs; not defined per position"
    settings = {
        "split": split,
        "val_split": val_split if val is not None else None,
        "pred_type": pred_type.value,
        "link_approx": None if la.likelihood == Likelihood.REGRESSION else link_approx.value,
        "n_samples": options.n_samples,
        "likelihood": la.likelihood.value,
        "structure": la.hessian_structure.value,
        "subset": la.subset_of_weights.value,
        "prior_precision": [float(v) for v in la.prior_precision.reshape(-1)],
        "sigma_noise": [float(v) for v in la.sigma_noise.reshape(-1)],
        "temperature_la": la.temperature,
        "output_positions": la.output_positions,
        "ignore_index": int(la.ignore_index),
        "output_shape": [int(v) for v in la.output_shape],
        "n_test": test.n_inputs,
        "n_positions": int(test.targets.shape[0]),
        **{k: v for k, v in baseline.items() if v is not None},
        **(
            {"n_bins": n_bins, "binning": binning} if la.likelihood != Likelihood.REGRESSION else {}
        ),
        "bootstrap": None,
        "skipped": skipped,
    }
    tables = {}
    if test.var is not None and la.likelihood == Likelihood.CLASSIFICATION:
        tables["position_variance"] = {"laplace": _variance_table(test)}
    return DenseScored(rows, settings, timings, plots, tables)


def _variance_table(test: DenseRows) -> dict[str, float]:
    """Mean per-position output variance (mean over classes of the GLM diagonal) on all,
    correctly and wrongly classified positions: whether the variance flags the errors."""
    assert test.var is not None and test.probs is not None
    v = test.var.mean(1)
    right = test.probs.argmax(1) == test.targets
    mean = lambda t: float(t.mean()) if t.numel() else float("nan")  # noqa: E731
    return {
        "mean_var": mean(v),
        "mean_var_correct": mean(v[right]),
        "mean_var_wrong": mean(v[~right]),
    }


def _score(
    la: Any, test: DenseRows, val: DenseRows | None, n_bins: int, binning: str
) -> tuple[dict[str, dict[str, float]], dict[str, Any], dict[str, Any]]:
    """(rows, plot inputs, baseline settings) per likelihood."""
    if la.likelihood == Likelihood.CLASSIFICATION:
        return _classification(test, val, n_bins, binning)
    if la.likelihood == Likelihood.BINARY:
        return _binary(test, val, n_bins)
    return _regression(la, test)


def _classification(
    test: DenseRows, val: DenseRows | None, n_bins: int, binning: str
) -> tuple[dict[str, dict[str, float]], dict[str, Any], dict[str, Any]]:
    labels = test.targets
    n_cls = test.f_map.shape[1]
    probs = {"map": torch.softmax(test.f_map, -1)}
    temperature, note = None, None
    if val is not None:
        temperature, note = fit_temperature_checked(val.f_map, val.targets)
        probs["temperature"] = torch.softmax(apply_temperature(test.f_map, temperature), -1)
    assert test.probs is not None
    probs["laplace"] = test.probs
    rows, plots = {}, {}
    for row, p in probs.items():
        rows[row] = metrics.classification_metrics(p, labels, n_bins, binning)
        rows[row]["miou"] = mean_iou(p.argmax(1), labels, n_cls)
        plots[row] = (p, labels)
    return rows, plots, {"temperature": temperature, "temperature_warning": note}


def _binary(
    test: DenseRows, val: DenseRows | None, n_bins: int
) -> tuple[dict[str, dict[str, float]], dict[str, Any], dict[str, Any]]:
    from laplace_cli.metrics.binary import (
        apply_binary_temperature,
        binary_ece,
        fit_binary_temperature,
        two_class,
    )

    y = test.targets
    probs = {"map": torch.sigmoid(test.f_map)}
    temperature = None
    if val is not None:
        t = fit_binary_temperature(val.f_map, val.targets, False)
        probs["temperature"] = apply_binary_temperature(test.f_map, t)
        temperature = float(t[0])
    assert test.probs is not None
    probs["laplace"] = test.probs
    rows, plots = {}, {}
    for row, p in probs.items():
        rows[row] = {**metrics.binary_metrics(p, y), "ece": binary_ece(p, y, n_bins)[0]}
        plots[row] = two_class(p, y)
    return rows, plots, {"temperature": temperature}


def _regression(
    la: Any, test: DenseRows
) -> tuple[dict[str, dict[str, float]], dict[str, Any], dict[str, Any]]:
    y = test.targets.to(test.f_map.dtype)
    noise = (la.sigma_noise.detach().cpu().reshape(()) ** 2).to(y.dtype).expand_as(test.f_map)
    assert test.mean is not None and test.var_total is not None
    rows = {
        "map": metrics.regression_metrics(test.f_map, noise, y),
        "laplace": metrics.regression_metrics(test.mean, test.var_total, y),
    }
    plots = {"map": (test.f_map, noise, y), "laplace": (test.mean, test.var_total, y)}
    return rows, plots, {}
