"""What the uncertainty buys, for `laplace evaluate`: selective prediction, split conformal sets /
intervals and OOD detection over several data sets, for the MAP, temperature and Laplace rows.

Every number comes from the pure functions of `laplace_cli.metrics.selective`, `.conformal` and
`.ood`; this module only chooses, per row, the probabilities / variances and the scores:

* confidence scores (higher = more sure) per row: ``max_prob`` and ``entropy`` (its negative)
  for every classification row; the Laplace row adds ``mutual_info`` (BALD, when the predictive
  drew samples) and ``logit_var`` (the summed functional variance of the logits, GLM J Σ Jᵀ, or
  the sample variance with pred_type nn). Regression: ``pred_var`` (the summed predictive
  variance; for MAP and temperature the constant noise variance, so every row ties and the AURC
  is the plain MSE). OOD scores are minus the confidences.
* selective loss: 0/1 error (classification), the share of wrong labels (binary / multi-label),
  the mean squared error over outputs (regression).
* conformal: calibrated on the validation split at `level`; classification LAC and APS on each
  row's probabilities; binary / multi-label LAC per label (sets over {0, 1}, one threshold per
  label; coverage and size averaged over labels, and per label in `conformal_per_label`);
  regression the absolute residual (MAP) and the residual normalised by the row's predictive
  standard deviation (temperature, Laplace).

Tables are ``{label: {metric: value}}`` with labels "row score" (and "ood_set row score").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.scores import max_probability, predictive_entropy
from laplace_cli.metrics import conformal, selective
from laplace_cli.metrics.conformal_resplit import (
    DEFAULT_RESPLITS,
    resplit_coverage,
    resplit_permutations,
)
from laplace_cli.metrics.coverage_band import coverage_band
from laplace_cli.metrics.ood import ood_detection_metrics
from laplace_cli.metrics.selective import RiskCoverage

#: The score whose AURC goes into the main rows (usable in gates as `laplace.aurc`).
DEFAULT_SCORE = {"classification": "max_prob", "binary": "max_prob", "regression": "pred_var"}


@dataclass
class RowView:
    """One row's predictive on one split: probabilities (classification / binary) or mean and
    total variance (regression), and the Laplace extras when present."""

    probs: Tensor | None = None
    mean: Tensor | None = None
    var: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)  # more confidence scores


def confidences(likelihood: Likelihood, view: RowView) -> dict[str, Tensor]:
    """Confidence scores of a row (higher = more sure), each (N,)."""
    if likelihood == Likelihood.REGRESSION:
        out = {"pred_var": -view.var.to(torch.float64).reshape(view.var.shape[0], -1).sum(1)}
    else:
        binary = likelihood == Likelihood.BINARY
        p = view.probs.to(torch.float64)
        p = p.unsqueeze(1) if p.ndim == 1 else p
        out = {"max_prob": max_probability(p, binary), "entropy": -predictive_entropy(p, binary)}
    out.update(
        {k: -v.to(torch.float64).reshape(v.shape[0], -1).sum(1) for k, v in view.extra.items()}
    )
    return out


def selective_loss(likelihood: Likelihood, view: RowView, targets: Tensor) -> Tensor:
    """Per-row loss the selective risk averages."""
    if likelihood == Likelihood.REGRESSION:
        y = targets.to(torch.float64).reshape(view.mean.shape)
        return ((view.mean.to(torch.float64) - y) ** 2).reshape(y.shape[0], -1).mean(1)
    if likelihood == Likelihood.BINARY:
        y = targets.reshape(view.probs.shape).to(torch.float64)
        wrong = ((view.probs > 0.5).to(torch.float64) != y).to(torch.float64)
        return wrong.reshape(y.shape[0], -1).mean(1)
    return (view.probs.argmax(-1) != targets.reshape(-1).long()).to(torch.float64)


def selective_table(
    likelihood: Likelihood, views: dict[str, RowView], targets: Tensor
) -> tuple[dict[str, dict[str, float]], dict[str, RiskCoverage]]:
    """(table, curves): AURC and risk at 80 / 90 % coverage per row and score, and the
    risk–coverage curve of each."""
    table, curves = {}, {}
    accuracy = likelihood != Likelihood.REGRESSION
    for row, view in views.items():
        loss = selective_loss(likelihood, view, targets)
        for score, conf in confidences(likelihood, view).items():
            label = f"{row} {score}"
            table[label] = selective.selective_metrics(
                conf, loss, risk_name="mse", accuracy=accuracy
            )
            curves[label] = selective.risk_coverage_curve(conf, loss)
    return table, curves


def conformal_table(
    likelihood: Likelihood,
    val_views: dict[str, RowView],
    val_targets: Tensor,
    test_views: dict[str, RowView],
    test_targets: Tensor,
    level: float,
    seed: int = 0,
    resplits: int = DEFAULT_RESPLITS,
) -> dict[str, dict[str, float]]:
    """Split conformal per row and score, calibrated on validation, measured on test.

    `band_lower` / `band_upper`: the 95 % range the test coverage of a correct split-conformal
    procedure falls in for these split sizes (`metrics.coverage_band`); e.g. ±4.4 points
    around 0.9 for 360 calibration and 360 test rows. Coverage outside it is worth a look.

    `resplit_coverage` / `resplit_sd`: mean and sd of the test coverage over `resplits` random
    re-splits of the pooled validation + test rows into splits of the same sizes
    (`metrics.conformal_resplit`, seeded from `seed` + 2, the same re-splits for every row and
    score; APS rows keep the uniforms of the single split). It checks the procedure, not the
    split: a correct one gives ≈ the level whatever the data (see that module).

    Binary / multi-label: per-label LAC, coverage and set size (0–2) averaged over labels, and
    `threshold` the largest label's (`conformal_per_label_table` has each label)."""
    # One draw of re-splits shared by every row and score (paired; drawing is the slow part).
    # seed + 2: seed and seed + 1 already drive the APS uniforms of the single split.
    perms = resplit_permutations(len(val_targets) + len(test_targets), resplits, seed + 2)
    rows_of = {
        Likelihood.BINARY: _binary_conformal,
        Likelihood.CLASSIFICATION: _classification_conformal,
        Likelihood.REGRESSION: _regression_conformal,
    }.get(likelihood)
    table: dict[str, dict[str, float]] = {}
    if rows_of is not None:
        table = rows_of(val_views, val_targets, test_views, test_targets, level, seed, perms)
    low, high = coverage_band(len(val_targets), len(test_targets), level)
    for cells in table.values():
        cells.update(band_lower=low, band_upper=high)
    return table


def _binary_conformal(
    val_views: dict[str, RowView],
    val_targets: Tensor,
    test_views: dict[str, RowView],
    test_targets: Tensor,
    level: float,
    seed: int,
    perms: Tensor,
) -> dict[str, dict[str, float]]:
    """`conformal_table`'s binary / multi-label rows: per-label LAC."""
    table: dict[str, dict[str, float]] = {}
    for row, view in test_views.items():
        q, averaged, _ = _label_conformal(val_views[row], val_targets, view, test_targets, level)
        table[f"{row} lac"] = {**averaged, "threshold": max(q)}
        scores = (
            conformal.label_lac_scores(val_views[row].probs.double(), val_targets),
            conformal.label_lac_scores(view.probs.double(), test_targets),
        )
        table[f"{row} lac"].update(_resplit(scores, level, perms))
    return table


def _classification_conformal(
    val_views: dict[str, RowView],
    val_targets: Tensor,
    test_views: dict[str, RowView],
    test_targets: Tensor,
    level: float,
    seed: int,
    perms: Tensor,
) -> dict[str, dict[str, float]]:
    """`conformal_table`'s classification rows: LAC and APS sets."""
    table: dict[str, dict[str, float]] = {}
    y_val, y_test = val_targets.reshape(-1).long(), test_targets.reshape(-1).long()
    for row, view in test_views.items():
        p_val, p_test = val_views[row].probs.double(), view.probs.double()
        for score in conformal.CLASSIFICATION_SCORES:
            # Separate streams for the calibration and the test draws (APS only).
            s = _true_label_scores(score, p_val, y_val, seed)
            q = conformal.conformal_quantile(s, level)
            sets = conformal.class_sets(p_test, q, score, torch.Generator().manual_seed(seed + 1))
            table[f"{row} {score}"] = {**conformal.set_metrics(sets, y_test), "threshold": q}
            # The test rows' true-label scores, APS with the same uniforms as the sets above.
            s_test = _true_label_scores(score, p_test, y_test, seed + 1)
            table[f"{row} {score}"].update(_resplit((s, s_test), level, perms))
    return table


def _true_label_scores(score: str, probs: Tensor, y: Tensor, seed: int) -> Tensor:
    """LAC or randomised APS conformity scores of the true labels (APS uniforms from `seed`)."""
    if score == "lac":
        return conformal.lac_scores(probs, y)
    return conformal.aps_scores(probs, y, torch.Generator().manual_seed(seed))


def _regression_conformal(
    val_views: dict[str, RowView],
    val_targets: Tensor,
    test_views: dict[str, RowView],
    test_targets: Tensor,
    level: float,
    seed: int,
    perms: Tensor,
) -> dict[str, dict[str, float]]:
    """`conformal_table`'s regression rows: absolute / normalised residual intervals."""
    table: dict[str, dict[str, float]] = {}
    for row, view in test_views.items():
        normalised = row != "map"
        name = "normalised" if normalised else "abs_residual"
        val = val_views[row]
        std_val = val.var.double().sqrt() if normalised else torch.ones_like(val.mean.double())
        std_test = view.var.double().sqrt() if normalised else torch.ones_like(view.mean.double())
        s_val = conformal.interval_scores(val.mean, std_val, val_targets)
        q = conformal.interval_thresholds(s_val, level)
        lower, upper = conformal.regression_intervals(view.mean, std_test, q)
        table[f"{row} {name}"] = {
            **conformal.interval_metrics(lower, upper, test_targets),
            "threshold": q[0] if len(q) == 1 else max(q),
        }
        s_test = conformal.interval_scores(view.mean, std_test, test_targets)
        table[f"{row} {name}"].update(_resplit((s_val, s_test), level, perms))
    return table


def _resplit(scores: tuple[Tensor, Tensor], level: float, perms: Tensor) -> dict[str, float]:
    """`resplit_coverage` / `resplit_sd` of (validation, test) true-label scores."""
    r = resplit_coverage(*scores, level, permutations=perms)
    return {"resplit_coverage": r.mean, "resplit_sd": r.sd}


def _label_conformal(
    val: RowView, val_targets: Tensor, test: RowView, test_targets: Tensor, level: float
) -> tuple[list[float], dict[str, float], list[dict[str, float]]]:
    """(thresholds, averaged, per label) of per-label LAC sets for one row."""
    scores = conformal.label_lac_scores(val.probs.double(), val_targets)
    q = conformal.interval_thresholds(scores, level)
    sets = conformal.label_sets(test.probs.double(), q)
    averaged, per_label = conformal.label_set_metrics(sets, test_targets)
    return q, averaged, per_label


def conformal_per_label_table(
    val_views: dict[str, RowView],
    val_targets: Tensor,
    test_views: dict[str, RowView],
    test_targets: Tensor,
    level: float,
) -> dict[str, dict[str, float]]:
    """Binary / multi-label: per row, each label's test coverage, mean set size and threshold
    (`coverage_<k>`, `size_<k>`, `threshold_<k>`)."""
    table: dict[str, dict[str, float]] = {}
    for row, view in test_views.items():
        q, _, per_label = _label_conformal(val_views[row], val_targets, view, test_targets, level)
        cells: dict[str, float] = {}
        for k, (metrics, threshold) in enumerate(zip(per_label, q, strict=True)):
            cells.update({f"{name}_{k}": v for name, v in metrics.items()})
            cells[f"threshold_{k}"] = threshold
        table[f"{row} lac"] = cells
    return table


def ood_table(
    likelihood: Likelihood, in_views: dict[str, RowView], ood_views: dict[str, dict[str, RowView]]
) -> dict[str, dict[str, float]]:
    """AUROC, AUPR-in, AUPR-out and FPR@95 per OOD set, row and score (OOD score = −confidence)."""
    table = {}
    for name, views in ood_views.items():
        for row, view in views.items():
            conf_in = confidences(likelihood, in_views[row])
            for score, conf_out in confidences(likelihood, view).items():
                metrics = ood_detection_metrics(-conf_in[score], -conf_out)
                table[f"{name} {row} {score}"] = metrics
    return table


def row_views(likelihood: Likelihood, out: Any, baseline: dict[str, Any]) -> dict[str, RowView]:
    """The rows' predictives on one split's outputs (`evaluation.SplitOutputs`): MAP, the
    temperature baseline when it was fitted (`baseline`'s temperature / variance_scale), and
    Laplace."""
    from laplace_cli.metrics.binary import apply_binary_temperature
    from laplace_cli.metrics.temperature import apply_temperature

    views: dict[str, RowView] = {}
    extra: dict[str, Tensor] = {}
    if out.mutual_info is not None:
        extra["mutual_info"] = out.mutual_info
    if likelihood == Likelihood.REGRESSION:
        noise = baseline["noise"].to(out.f_map.dtype).expand_as(out.f_map)
        views["map"] = RowView(mean=out.f_map, var=noise)
        if baseline.get("variance_scale") is not None:
            views["temperature"] = RowView(mean=out.f_map, var=noise * baseline["variance_scale"])
        views["laplace"] = RowView(mean=out.f_mu, var=out.var_total)
        return views
    if out.var is not None:
        extra["logit_var"] = out.var
    if likelihood == Likelihood.BINARY:
        views["map"] = RowView(probs=torch.sigmoid(out.f_map))
        if baseline.get("temperature") is not None:
            t = torch.as_tensor(baseline["temperature"], dtype=torch.float64)
            views["temperature"] = RowView(probs=apply_binary_temperature(out.f_map, t))
    else:
        views["map"] = RowView(probs=torch.softmax(out.f_map, -1))
        if baseline.get("temperature") is not None:
            t_logits = apply_temperature(out.f_map, baseline["temperature"])
            views["temperature"] = RowView(probs=torch.softmax(t_logits, -1))
    views["laplace"] = RowView(probs=out.probs, extra=extra)
    return views


@dataclass
class UncertaintyTables:
    """The tables of the report and the risk–coverage curves to plot."""

    tables: dict[str, dict[str, dict[str, float]]]
    curves: dict[str, RiskCoverage]
    #: Per row, the metrics that also go into the main rows (gates read those): `aurc` of the
    #: default score, and with OOD sets `auroc_<set>` / `fpr95_<set>` of that score.
    row_metrics: dict[str, dict[str, float]]


def uncertainty_tables(
    likelihood: Likelihood,
    test: Any,
    val: Any,
    ood: dict[str, Any],
    baseline: dict[str, Any],
    *,
    level: float = 0.9,
    seed: int = 0,
) -> UncertaintyTables:
    """Selective, conformal (with a validation split) and OOD (with OOD sets) tables."""
    kind = likelihood.value
    default = DEFAULT_SCORE[kind]
    test_views = row_views(likelihood, test, baseline)
    tables: dict[str, dict[str, dict[str, float]]] = {}
    sel, curves = selective_table(likelihood, test_views, test.targets)
    tables["selective"] = sel
    row_metrics: dict[str, dict[str, float]] = {
        row: {"aurc": sel[f"{row} {default}"]["aurc"]} for row in test_views
    }
    if val is not None:
        val_views = row_views(likelihood, val, baseline)
        conf = conformal_table(
            likelihood, val_views, val.targets, test_views, test.targets, level, seed
        )
        if conf:
            tables["conformal"] = conf
        n_labels = test.targets.reshape(test.targets.shape[0], -1).shape[1]
        if likelihood == Likelihood.BINARY and n_labels > 1:
            tables["conformal_per_label"] = conformal_per_label_table(
                val_views, val.targets, test_views, test.targets, level
            )
    if ood:
        ood_views = {name: row_views(likelihood, out, baseline) for name, out in ood.items()}
        tables["ood"] = ood_table(likelihood, test_views, ood_views)
        for name in ood:
            for row in test_views:
                m = tables["ood"][f"{name} {row} {default}"]
                row_metrics[row][f"auroc_{name}"] = m["auroc"]
                row_metrics[row][f"fpr95_{name}"] = m["fpr95"]
    return UncertaintyTables(tables=tables, curves=curves, row_metrics=row_metrics)
