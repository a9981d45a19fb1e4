"""Scoring the collected outputs: the rows (MAP, temperature scaling, Laplace), their OOD metrics,
bootstrap intervals and the uncertainty tables.

For regression the MAP row uses the fitted observation noise as its variance and the baseline
rescales that variance on the validation split. Runs on rank 0 only, on the whole split's
outputs (`pipeline.split_outputs.collect_outputs`), so the numbers are those of one process.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.enums import Likelihood
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.metrics import bootstrap
from laplace_cli.metrics import classification as metrics
from laplace_cli.metrics.temperature import (
    CalibrationWarning,
    apply_temperature,
    apply_variance_scale,
    fit_temperature_checked,
    fit_variance_scale,
)
from laplace_cli.pipeline.split_outputs import SplitOutputs

__all__ = ["WORSE_THAN_MAP", "Scored", "Scoring", "score_splits"]


def _classification_rows(
    la: Laplace,
    test: SplitOutputs,
    val: SplitOutputs | None,
    n_bins: int,
    binning: str = "equal-width",
):
    labels = test.targets.long().reshape(-1)
    rows, plots = {}, {}
    map_probs = torch.softmax(test.f_map, -1)
    rows["map"] = metrics.classification_metrics(map_probs, labels, n_bins, binning)
    plots["map"] = (map_probs, labels)
    temperature, note = None, None
    if val is not None:
        temperature, note = fit_temperature_checked(val.f_map, val.targets.long().reshape(-1))
        t_probs = torch.softmax(apply_temperature(test.f_map, temperature), -1)
        rows["temperature"] = metrics.classification_metrics(t_probs, labels, n_bins, binning)
        plots["temperature"] = (t_probs, labels)
        if note is None:
            note = _worse_than_map(rows, f"temperature scaling (T = {temperature:.4g})", "T = 1")
    rows["laplace"] = metrics.classification_metrics(test.probs, labels, n_bins, binning)
    plots["laplace"] = (test.probs, labels)
    return rows, plots, {"temperature": temperature, "temperature_warning": note}


#: A calibration baseline whose test NLL exceeds the MAP's by this factor is warned about.
WORSE_THAN_MAP = 1.1


def _worse_than_map(rows: dict[str, dict[str, float]], what: str, unscaled: str) -> str | None:
    """A CalibrationWarning (and its text) when the baseline fitted on the validation split
    has a higher test NLL than the MAP it rescales (the same model at `unscaled`)."""
    fitted, base = rows["temperature"].get("nll"), rows["map"].get("nll")
    # Materially worse only (10 %): a fit on another split is off by a little as often as not.
    if fitted is None or base is None or not fitted > WORSE_THAN_MAP * base:
        return None
    note = (
        f"{what}, fitted on the validation split, makes the test NLL worse than the MAP at "
        f"{unscaled} ({fitted:.4g} vs {base:.4g}): the validation split is too small or unlike "
        "the test split"
    )
    warnings.warn(note, CalibrationWarning, stacklevel=2)
    return note


def _binary_rows(
    la: Laplace,
    test: SplitOutputs,
    val: SplitOutputs | None = None,
    n_bins: int = 15,
    per_label_temperature: bool = False,
):
    """Binary / multi-label rows: acc, nll, brier and ECE (the mean of the per-label ECEs, listed
    per label in the baseline's `ece_per_label`); the temperature row (one T shared by the
    labels, or one per label) is fitted on the validation split."""
    from laplace_cli.metrics.binary import (
        apply_binary_temperature,
        binary_ece,
        fit_binary_temperature,
        two_class,
    )

    y = test.targets.reshape(test.probs.shape)
    probs = {"map": torch.sigmoid(test.f_map)}
    temperature = None
    if val is not None:
        y_val = val.targets.reshape(val.f_map.shape)
        t = fit_binary_temperature(val.f_map, y_val, per_label_temperature)
        probs["temperature"] = apply_binary_temperature(test.f_map, t)
        temperature = [float(v) for v in t] if per_label_temperature else float(t[0])
    probs["laplace"] = test.probs
    rows, plots, per_label = {}, {}, {}
    for row, p in probs.items():
        mean_ece, per_label[row] = binary_ece(p, y, n_bins)
        rows[row] = {**metrics.binary_metrics(p, y), "ece": mean_ece}
        plots[row] = two_class(p, y)  # all labels pooled for the reliability diagram
    note = None
    if temperature is not None:
        note = _worse_than_map(rows, "temperature scaling", "T = 1")
    baseline = {"temperature": temperature, "temperature_warning": note, "ece_per_label": per_label}
    return rows, plots, baseline


def _regression_rows(la: Laplace, test: SplitOutputs, val: SplitOutputs | None):
    y = test.targets.reshape(test.f_map.shape).to(test.f_map.dtype)
    noise = (
        (la.sigma_noise.detach().cpu().reshape(-1) ** 2).to(test.f_map.dtype).expand_as(test.f_map)
    )
    rows, plots = {}, {}
    rows["map"] = metrics.regression_metrics(test.f_map, noise, y)
    plots["map"] = (test.f_map, noise, y)
    scale, note = None, None
    if val is not None:
        yv = val.targets.reshape(val.f_map.shape).to(val.f_map.dtype)
        noise_v = noise[:1].expand_as(val.f_map)
        scale = fit_variance_scale(val.f_map, noise_v, yv)
        scaled = apply_variance_scale(noise, scale)
        rows["temperature"] = metrics.regression_metrics(test.f_map, scaled, y)
        plots["temperature"] = (test.f_map, scaled, y)
        note = _worse_than_map(rows, f"variance scaling (s = {scale:.4g})", "s = 1")
    rows["laplace"] = metrics.regression_metrics(test.f_mu, test.var_total, y)
    plots["laplace"] = (test.f_mu, test.var_total, y)
    return rows, plots, {"variance_scale": scale, "temperature_warning": note}


def _ood_scores(la: Laplace, out: SplitOutputs, row: str) -> Tensor:
    """Higher = more likely out of distribution: 1 − max prob (classification), variance (regression)."""
    if la.likelihood == Likelihood.REGRESSION:
        var = out.var_total if row == "laplace" else None
        if var is None:
            return torch.zeros(out.f_map.shape[0])
        return var.sum(-1)
    if la.likelihood == Likelihood.BINARY:
        p = out.probs if row == "laplace" else torch.sigmoid(out.f_map)
        return -(torch.maximum(p, 1 - p)).min(-1).values
    probs = out.probs if row == "laplace" else torch.softmax(out.f_map, -1)
    return 1 - probs.max(-1).values


@dataclass(frozen=True)
class Scoring:
    """How the rows are scored: the ece bins, the temperature, the bootstrap, the conformal level."""

    n_bins: int
    binning: str
    per_label_temperature: bool
    bootstrap_settings: bootstrap.BootstrapSettings | None
    conformal_level: float


@dataclass
class Scored:
    """What scoring the collected outputs gives: the rows and everything derived from them."""

    how: Scoring
    n_test: int
    rows: dict[str, dict[str, float]]
    plots: dict[str, Any]
    baseline: dict[str, Any]
    intervals: dict[str, Any]
    recorded_bootstrap: Any
    extra: Any
    timings: dict[str, float]


def score_splits(
    la: Laplace, test: Any, val: Any, oods: dict[str, Any], how: Scoring, seed: int, named: bool
) -> Scored:
    """Rows, bootstrap intervals and uncertainty tables from the outputs (rank 0 only).

    `named`: the OOD sets were given by name (their metrics keep the `_<name>` suffix).
    """
    n_bins, binning = how.n_bins, how.binning
    timings: dict[str, float] = {}
    ood = next(iter(oods.values()), None)
    rows, plots, baseline = _score_rows(
        la, test, val, ood, n_bins, how.per_label_temperature, binning
    )
    intervals: dict[str, Any] = {}
    recorded_bootstrap = None
    if how.bootstrap_settings is not None:
        start = time.perf_counter()
        intervals, recorded_bootstrap = _bootstrap_intervals(
            la, test, ood, rows, plots, baseline, n_bins, binning, how.bootstrap_settings
        )
        timings["bootstrap"] = time.perf_counter() - start
    extra = _uncertainty_tables(la, test, val, oods, baseline, how.conformal_level, seed)
    for row, values in extra.row_metrics.items():
        # One unnamed OOD set ("ood"): its `auroc` / `fpr95` are in the rows already.
        rows[row].update({k: v for k, v in values.items() if named or not k.endswith("_ood")})
    if baseline.get("ece_per_label") is not None:
        # A table, not a setting: popped so that the settings do not repeat it.
        per_label = baseline.pop("ece_per_label")
        extra.tables["ece_per_label"] = {
            row: {f"label_{k}": v for k, v in enumerate(eces)} for row, eces in per_label.items()
        }
    n_test = int(test.targets.shape[0])
    return Scored(how, n_test, rows, plots, baseline, intervals, recorded_bootstrap, extra, timings)


def _uncertainty_tables(
    la: Laplace, test: Any, val: Any, oods: dict[str, Any], baseline: Any, level: float, seed: int
) -> Any:
    """Selective / conformal / OOD tables (`pipeline.uncertainty_tables`) for the rows."""
    from laplace_cli.pipeline.uncertainty_tables import uncertainty_tables

    noise = la.sigma_noise.detach().cpu().reshape(-1) ** 2  # the MAP row's regression variance
    info = {**baseline, "noise": noise}
    return uncertainty_tables(la.likelihood, test, val, oods, info, level=level, seed=seed)


def _score_rows(
    la: Laplace,
    test: Any,
    val: Any,
    ood: Any,
    n_bins: int,
    per_label_temperature: bool = False,
    binning: str = "equal-width",
) -> tuple[Any, Any, Any]:
    """`(rows, plots, baseline)`: the metrics of each row (MAP, temperature, Laplace) on the
    test split, with the OOD detection metrics when an OOD split was given."""
    if la.likelihood == Likelihood.CLASSIFICATION:
        rows, plots, baseline = _classification_rows(la, test, val, n_bins, binning)
    elif la.likelihood == Likelihood.BINARY:
        rows, plots, baseline = _binary_rows(la, test, val, n_bins, per_label_temperature)
    else:
        rows, plots, baseline = _regression_rows(la, test, val)
    if ood is not None:
        for row in list(rows):
            s_in, s_out = _row_ood_scores(la, test, ood, row, baseline.get("temperature"))
            rows[row].update(metrics.ood_metrics(s_in, s_out))
    return rows, plots, baseline


def _row_ood_scores(
    la: Laplace, test: Any, ood: Any, row: str, temperature: Any
) -> tuple[Tensor, Tensor]:
    """A row's OOD scores of the scored split and of the OOD split (`_ood_scores`; the
    temperature row rescales the MAP outputs first)."""
    s_in, s_out = _ood_scores(la, test, row), _ood_scores(la, ood, row)
    if row == "temperature" and la.likelihood == Likelihood.BINARY:
        from laplace_cli.metrics.binary import apply_binary_temperature

        t = torch.as_tensor(temperature, dtype=torch.float64)
        p_in = apply_binary_temperature(test.f_map, t)
        p_out = apply_binary_temperature(ood.f_map, t)
        # The MAP / Laplace rows' binary score (`_ood_scores`), on the rescaled outputs.
        s_in = -(torch.maximum(p_in, 1 - p_in)).min(-1).values
        s_out = -(torch.maximum(p_out, 1 - p_out)).min(-1).values
    elif row == "temperature" and temperature is not None:
        p_in = torch.softmax(apply_temperature(test.f_map, temperature), -1)
        p_out = torch.softmax(apply_temperature(ood.f_map, temperature), -1)
        s_in, s_out = 1 - p_in.max(-1).values, 1 - p_out.max(-1).values
    return s_in, s_out


def _bootstrap_intervals(
    la: Laplace,
    test: Any,
    ood: Any,
    rows: dict[str, dict[str, float]],
    plots: dict[str, Any],
    baseline: dict[str, Any],
    n_bins: int,
    binning: str,
    settings: bootstrap.BootstrapSettings,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(intervals, recorded settings)`: bootstrap intervals of every row's metrics and paired
    differences, all rows on the same resamples of the test split (stratified by label for
    classification) and, with an OOD split, of the OOD split (AUROC)."""
    strata = None
    stats: dict[str, bootstrap.Statistic] = {}
    if la.likelihood == Likelihood.CLASSIFICATION:
        for row, (probs, labels) in plots.items():
            stats[row] = bootstrap.classification_statistic(probs, labels, n_bins, binning)
        strata = test.targets.long().reshape(-1)
    elif la.likelihood == Likelihood.BINARY:
        from laplace_cli.metrics.binary import apply_binary_temperature

        y = test.targets.reshape(test.probs.shape)
        probs = {"map": torch.sigmoid(test.f_map), "laplace": test.probs}
        if "temperature" in rows:
            t = torch.as_tensor(baseline.get("temperature"), dtype=torch.float64)
            probs["temperature"] = apply_binary_temperature(test.f_map, t)
        stats = {row: bootstrap.binary_statistic(probs[row], y) for row in rows if row in probs}
    else:
        for row, (mean, var, y) in plots.items():
            stats[row] = bootstrap.regression_statistic(mean, var, y)
    sizes = [int(test.targets.shape[0])]
    if ood is not None:
        sizes.append(int(ood.f_map.shape[0]))
        for row in list(stats):
            s_in, s_out = _row_ood_scores(la, test, ood, row, baseline.get("temperature"))
            auroc = bootstrap.auroc_statistic(s_in, s_out)
            stats[row] = _merged(stats[row], auroc)
    dists = bootstrap.bootstrap_distributions(
        stats,
        sizes,
        n_resamples=settings.n_resamples,
        seed=settings.seed,
        strata=[strata] + [None] * (len(sizes) - 1),
    )
    recorded = {**settings.to_dict(), "stratified_by": "label" if strata is not None else None}
    return bootstrap.intervals_from_distributions(rows, dists, settings), recorded


def _merged(*statistics: bootstrap.Statistic) -> bootstrap.Statistic:
    """One statistic returning the metrics of all of them."""
    return lambda counts: {k: v for s in statistics for k, v in s(counts).items()}
