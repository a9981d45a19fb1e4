"""The evaluate stage: MAP, temperature scaling and Laplace side by side on one split.

Rows `map`, `temperature` (fitted on the validation split; absent without one) and `laplace`
map metric names to numbers; gates (`--fail-if`) are checked against them. For regression the
MAP row uses the fitted observation noise as its variance and the baseline rescales that
variance on the validation split.

Under torchrun each rank runs the model and the predictive over its contiguous shard of every
split (`distributed.shard_loader`); rank 0 gathers the per-row outputs in row order and computes
the metrics, the temperature / variance scale and the gates exactly as one process would. Monte
Carlo predictives (`link_approx: mc`, `pred_type: nn`) draw from one stream per rank seeded alike,
so their estimates differ from one process's by Monte Carlo noise.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import split_batch, to_device
from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.datasets import load_dataset_spec
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
from laplace_cli.pipeline import distributed
from laplace_cli.pipeline.gates import (
    check_intervals_available,
    evaluate_gates,
    gate_table,
    parse_gates,
)
from laplace_cli.pipeline.predict_stage import PredictOptions, default_pred_options, predict_batch
from laplace_cli.pipeline.stage_support import (
    Progress,
    check_model_accepts,
    len_or_none,
    no_progress,
    split_loader,
)
from laplace_cli.posterior.predictive import RowSeeds


@dataclass
class SplitOutputs:
    """MAP outputs, Laplace predictive quantities and targets of a whole split, concatenated."""

    f_map: Tensor
    targets: Tensor
    probs: Tensor | None = None
    var_total: Tensor | None = None
    f_mu: Tensor | None = None
    #: The Laplace uncertainty scores of `Laplace.uncertainty`: `var` (logit / epistemic
    #: variance) and `mutual_info` (BALD, when samples were drawn); for `uncertainty_tables`.
    var: Tensor | None = None
    mutual_info: Tensor | None = None

    @classmethod
    def concat(cls, parts: list[SplitOutputs | None]) -> SplitOutputs:
        """The parts' rows one after the other (None: a part without rows, e.g. an empty shard)."""
        kept = [p for p in parts if p is not None]
        if not kept:
            raise ValueError("empty split")
        if len(kept) == 1:
            return kept[0]

        def cat(name: str) -> Tensor | None:
            xs = [getattr(p, name) for p in kept]
            return torch.cat(xs) if xs[0] is not None else None

        names = ("f_map", "targets", "probs", "var_total", "f_mu", "var", "mutual_info")
        return cls(*(cat(n) for n in names))


def collect_outputs(
    la: Laplace,
    loader: Any,
    options: PredictOptions,
    progress: Progress = no_progress,
    what: str = "",
    source: str = "",
    ctx: distributed.DistContext | None = None,
) -> SplitOutputs | None:
    """Run the MAP model and the Laplace predictive over a loader.

    `source` names the data in errors (default: `what`); the first batch is checked against
    the model (`pipeline.check_model_accepts`). With `ctx` (a distributed run) each rank runs
    its contiguous shard of the loader and rank 0 gets the whole split's outputs in row order;
    the other ranks get None."""
    # Monte Carlo draws are seeded per row (`RowSeeds`) from the row's index in the split, so
    # a row's scores do not depend on the batch size or on the number of processes.
    whole = getattr(loader, "dataset", None)
    loader = distributed.shard_loader(loader, ctx)  # refuses an iterable dataset under ctx
    row = distributed.shard_range(len(whole), ctx.rank, ctx.world_size)[0] if ctx else 0
    pred_type, link_approx = default_pred_options(la, options)
    f_map, ys, probs, var_total, f_mu, var, mi = [], [], [], [], [], [], []
    # One forward pass per batch where the subset can share it (last layer: the MAP outputs,
    # the model check and the predictive all read the same features).
    with la.subset.reuse_forward():
        for i, batch in enumerate(progress(loader, len_or_none(loader), what)):
            x, y = split_batch(batch)
            # dict (text) batches too; a bfloat16 / float16 model takes its own dtype
            x = to_device(x, la.device, getattr(la, "model_dtype", la.dtype))
            if i == 0:
                check_model_accepts(la, x, source or what)
            f_map.append(la.subset.output(x).to(la.dtype).cpu())
            generator = RowSeeds(options.seed, row)
            row += len(y)
            pred = predict_batch(la, x, pred_type, link_approx, options.n_samples, generator)
            ys.append(y.cpu())
            if "probs" in pred:
                probs.append(pred["probs"].cpu())
            if "var_total" in pred:
                var_total.append(pred["var_total"].cpu())
                f_mu.append(pred["mean"].cpu())
            if "var" in pred:
                var.append(pred["var"].cpu())
            if "mutual_info" in pred:
                mi.append(pred["mutual_info"].cpu())
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    mine = (
        SplitOutputs(cat(f_map), cat(ys), cat(probs), cat(var_total), cat(f_mu), cat(var), cat(mi))
        if ys
        else None
    )
    parts = distributed.gather_to_main(mine, ctx)
    return None if parts is None else SplitOutputs.concat(parts)


#: Version of the report's JSON layout (`schema_version`; docs/report.schema.json). Bump it when
#: a key is renamed or removed or a value changes meaning; adding a key keeps it.
REPORT_SCHEMA_VERSION = 1


@dataclass
class EvaluationResult:
    rows: dict[str, dict[str, float]]
    settings: dict[str, Any]
    gates: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    plot_inputs: dict[str, Any] = field(default_factory=dict)
    #: What was evaluated: data spec, split(s), time and versions from `evaluate`; the
    #: posterior file, model reference and fingerprint added by `save_evaluation_outputs`.
    identity: dict[str, Any] = field(default_factory=dict)
    #: The comparison with `--baseline` (source, mismatches, deltas); empty without one.
    baseline: dict[str, Any] = field(default_factory=dict)
    #: The selective / conformal / OOD / per-label tables (`pipeline.uncertainty_tables`):
    #: `{table: {"row score": {metric: value}}}`; only the tables that apply.
    tables: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    #: Risk–coverage curves ("row score" → `metrics.selective.RiskCoverage`) for the plot.
    curves: dict[str, Any] = field(default_factory=dict)
    #: Bootstrap intervals (`evaluate(bootstrap_settings=...)`): `{row: {metric: {"lower",
    #: "upper", "diff_vs_<other>": {"estimate", "lower", "upper"}}}}`; empty without them.
    intervals: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(g["failed"] for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema_version": REPORT_SCHEMA_VERSION,
            "identity": self.identity,
            "rows": self.rows,
            "settings": self.settings,
            "gates": self.gates,
            "timings": self.timings,
        }
        if self.baseline:
            out["baseline"] = self.baseline
        if self.tables:
            out["tables"] = self.tables
        if self.intervals:
            out["intervals"] = self.intervals
        return out


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


def evaluate(
    la: Laplace,
    data_path: str | Path,
    *,
    split: str = "test",
    val_split: str | None = "val",
    ood_data: str | Path | Mapping[str, str | Path] | None = None,
    ood_split: str = "test",
    options: PredictOptions | None = None,
    gates: list[str] | None = None,
    batch_size: int | None = None,
    n_bins: int = 15,
    progress: Progress = no_progress,
    shard: bool = True,
    conformal_level: float = 0.9,
    per_label_temperature: bool = False,
    gate_rows: dict[str, dict[str, Any]] | None = None,
    binning: str = "equal-width",
    bootstrap_settings: bootstrap.BootstrapSettings | None = None,
) -> EvaluationResult | None:
    """Score MAP, temperature scaling and Laplace on `split`; check `gates` (failures recorded).

    `n_bins` and `binning` (`equal-width` or `equal-mass`) set the bins of `ece` / `mce`. With
    `bootstrap_settings`, every row's metrics get bootstrap intervals and paired differences
    (`EvaluationResult.intervals`, `metrics.bootstrap`) that gates can read (`ece.upper`,
    `nll.diff_vs_map.lower`); a gate on a bound without them is refused before any work.

    `gate_rows` are more rows the gates may read (e.g. `baseline.laplace` from `--baseline`).

    `ood_data` is one dataset spec, or several by name (`{name: spec}`): the first set's AUROC
    and FPR@95 go into the rows as `auroc` / `fpr95`, every named set's as `auroc_<name>` /
    `fpr95_<name>`, and all sets, rows and scores into the `ood` table. With a validation split
    the `conformal` table calibrates at `conformal_level`; `per_label_temperature` fits one
    temperature per label for binary / multi-label models instead of one shared.

    Under torchrun (and `shard`) every rank must call this: the ranks share the predictive
    work, rank 0 returns the result of the whole split (the same as one process) and the other
    ranks return None.
    """
    options = options or PredictOptions()
    parsed_gates = _checked_gates(gates, bootstrap_settings, binning)  # before any work
    ctx = distributed.context(la.device) if shard else None
    pred_type, link_approx = default_pred_options(la, options)
    collect = _collector(la, options, batch_size, progress, ctx)
    timings: dict[str, float] = {}
    test, val, oods = _predict_splits(
        collect, data_path, split, val_split, ood_data, ood_split, timings
    )
    if test is None:
        return None  # not rank 0: the metrics are computed there
    how = _Scoring(n_bins, binning, per_label_temperature, bootstrap_settings, conformal_level)
    scored = _score_splits(la, test, val, oods, how, options.seed, isinstance(ood_data, Mapping))
    timings.update(scored.timings)
    used_val = val_split if val is not None else None
    settings = _evaluation_settings(la, scored, split, used_val, options, pred_type, link_approx)
    table = gate_table({**scored.rows, **(gate_rows or {})}, scored.intervals)
    results = evaluate_gates(parsed_gates, table) if parsed_gates else []
    return EvaluationResult(
        rows=scored.rows,
        settings=settings,
        gates=[r.to_dict() for r in results],
        timings=timings,
        plot_inputs=scored.plots,
        identity=_data_identity(data_path, split, ood_data, ood_split),
        tables=scored.extra.tables,
        curves=scored.extra.curves,
        intervals=scored.intervals,
    )


def _checked_gates(
    gates: list[str] | None, bootstrap_settings: bootstrap.BootstrapSettings | None, binning: str
) -> list[Any]:
    """Parse the gates and check the binning, so that bad input fails before any prediction."""
    parsed_gates = parse_gates(gates or [])  # malformed gates fail before any work
    check_intervals_available(parsed_gates, bootstrap_settings is not None)
    if binning not in bootstrap.BINNINGS:
        raise BadInputError(
            f"binning: expected one of {', '.join(bootstrap.BINNINGS)}, got {binning!r}"
        )
    return parsed_gates


def _collector(
    la: Laplace, options: PredictOptions, batch_size: int | None, progress: Progress, ctx: Any
) -> Callable[..., Any]:
    """`outputs(spec, split, label, source, **loader_kw)`: one split's outputs (None off rank 0)."""

    def outputs(split_spec: Any, name: str, label: str, source: str, **kw: Any) -> Any:
        loader = split_loader(split_spec, name, la.likelihood, batch_size, any_order=True, **kw)
        return collect_outputs(la, loader, options, progress, label, source=source, ctx=ctx)

    return outputs


def _predict_splits(
    outputs: Callable[..., Any],
    data_path: str | Path,
    split: str,
    val_split: str | None,
    ood_data: str | Path | Mapping[str, str | Path] | None,
    ood_split: str,
    timings: dict[str, float],
) -> tuple[Any, Any, dict[str, Any]]:
    """Run the predictive over the test, validation and OOD splits (in that order), timed.

    Every rank runs this (the predictive work is shared); the outputs are None off rank 0.
    """
    spec = load_dataset_spec(data_path)
    start = time.perf_counter()
    test = outputs(spec, split, f"evaluate {split}", f"{data_path}: split {split!r}")
    timings[f"predict_{split}"] = time.perf_counter() - start
    val = None
    if val_split and val_split in spec.splits:
        start = time.perf_counter()
        val = outputs(spec, val_split, f"evaluate {val_split}", f"{data_path}: split {val_split!r}")
        timings[f"predict_{val_split}"] = time.perf_counter() - start
    ood_sets = dict(ood_data) if isinstance(ood_data, Mapping) else {}
    if ood_data is not None and not ood_sets:
        ood_sets = {"ood": ood_data}
    oods: dict[str, Any] = {}
    for name, path in ood_sets.items():
        # Only the inputs are used: an OOD split needs no targets (none are scored).
        oods[name] = outputs(
            load_dataset_spec(path),
            ood_split,
            f"evaluate ood {name}",
            f"{path}: split {ood_split!r}",
            require_labels=False,
        )
    return test, val, oods


@dataclass(frozen=True)
class _Scoring:
    """How the rows are scored: the ece bins, the temperature, the bootstrap, the conformal level."""

    n_bins: int
    binning: str
    per_label_temperature: bool
    bootstrap_settings: bootstrap.BootstrapSettings | None
    conformal_level: float


@dataclass
class _Scored:
    """What scoring the collected outputs gives: the rows and everything derived from them."""

    how: _Scoring
    n_test: int
    rows: dict[str, dict[str, float]]
    plots: dict[str, Any]
    baseline: dict[str, Any]
    intervals: dict[str, Any]
    recorded_bootstrap: Any
    extra: Any
    timings: dict[str, float]


def _score_splits(
    la: Laplace, test: Any, val: Any, oods: dict[str, Any], how: _Scoring, seed: int, named: bool
) -> _Scored:
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
    return _Scored(
        how, n_test, rows, plots, baseline, intervals, recorded_bootstrap, extra, timings
    )


def _evaluation_settings(
    la: Laplace,
    scored: _Scored,
    split: str,
    val_split: str | None,
    options: PredictOptions,
    pred_type: Any,
    link_approx: Any,
) -> dict[str, Any]:
    """The `settings` of the report: what was evaluated and how (keys in report order)."""
    return {
        "split": split,
        "val_split": val_split,  # None when no validation split was scored
        "pred_type": pred_type.value,
        # Regression has no link function: no approximation of one is used (None, "n/a").
        "link_approx": None if la.likelihood == Likelihood.REGRESSION else link_approx.value,
        "n_samples": options.n_samples,
        **_posterior_settings(la),
        "n_test": scored.n_test,
        **{k: v for k, v in scored.baseline.items() if v is not None},
        **(
            {"conformal_level": scored.how.conformal_level}
            if "conformal" in scored.extra.tables
            else {}
        ),
        **(
            {"n_bins": scored.how.n_bins, "binning": scored.how.binning}
            if la.likelihood != Likelihood.REGRESSION
            else {}
        ),
        "bootstrap": scored.recorded_bootstrap,
    }


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


def _posterior_settings(la: Laplace) -> dict[str, Any]:
    """The posterior's settings recorded in the report."""
    return {
        "likelihood": la.likelihood.value,
        "structure": la.hessian_structure.value,
        "subset": la.subset_of_weights.value,
        "prior_precision": [float(v) for v in la.prior_precision.reshape(-1)],
        "sigma_noise": [float(v) for v in la.sigma_noise.reshape(-1)],
        "temperature_la": la.temperature,
    }


def _data_identity(
    data_path: str | Path, split: str, ood_data: Any, ood_split: str
) -> dict[str, Any]:
    """The data half of a report's identity block, with the time and the versions."""
    from datetime import datetime, timezone

    from laplace_cli.core.version import __version__

    identity: dict[str, Any] = {"data": str(Path(data_path).resolve()), "split": split}
    if isinstance(ood_data, Mapping):  # named OOD sets (`--ood-data name=spec`)
        identity["ood_data"] = {k: str(Path(v).resolve()) for k, v in ood_data.items()}
        identity["ood_split"] = ood_split
    elif ood_data is not None:
        identity["ood_data"] = str(Path(ood_data).resolve())
        identity["ood_split"] = ood_split
    identity["created"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    identity["laplace_cli"] = __version__
    identity["torch"] = torch.__version__
    return identity


IDENTITY_KEYS = ("posterior", "model", "fingerprint", "recipe")
"""Keys of `save_evaluation_outputs`'s `extra` copied into the report's identity block."""


def add_identity(result: EvaluationResult, extra: dict[str, Any] | None) -> dict[str, Any]:
    """Put the posterior / model / fingerprint / recipe of `extra` first in `result.identity`."""
    head = {k: (extra or {}).get(k) for k in IDENTITY_KEYS if (extra or {}).get(k) is not None}
    if "posterior" in head:
        head["posterior"] = str(Path(head["posterior"]).resolve())
    rest = {k: v for k, v in result.identity.items() if k not in head}
    result.identity = {**head, **rest}
    return result.identity


def save_evaluation_outputs(
    result: EvaluationResult,
    likelihood: Likelihood,
    *,
    report: str | Path | None = None,
    plot: str | Path | None = None,
    html: str | Path | None = None,
    extra: dict[str, Any] | None = None,
    history: str | Path | None = None,
) -> dict[str, str]:
    """Write the JSON report, the reliability / coverage plot and the HTML page that were asked for.

    With `history` (a run history file) the HTML page also shows its trend plot.

    The HTML page embeds the plot; without `plot` it draws one into a temporary file first.
    Returns the paths written, by kind.
    """
    import json

    from laplace_cli.io.atomic import atomic_write_bytes

    written: dict[str, str] = {}
    add_identity(result, extra)  # the JSON report, the HTML page and --json all show it
    payload = {**result.to_dict(), **(extra or {})}
    if report is not None:
        atomic_write_bytes(report, (json.dumps(_jsonable(payload), indent=2) + "\n").encode())
        written["report"] = str(report)

    n_bins = result.settings.get("n_bins", 15)  # the bins of the report's ece (equal-width)

    def draw(path: str | Path) -> None:
        _draw_plot(result, likelihood, path, n_bins)

    if plot is not None:
        draw(plot)
        written["plot"] = str(plot)
    if html is not None:
        _write_evaluation_html(result, html, plot, draw, extra, history)
        written["html"] = str(html)
    return written


def _draw_plot(
    result: EvaluationResult, likelihood: Likelihood, path: str | Path, n_bins: int
) -> None:
    """The coverage plot (regression) or the reliability diagram (classification) at `path`."""
    from laplace_cli.pipeline.report import plot_coverage, plot_reliability

    if likelihood == Likelihood.REGRESSION:
        plot_coverage(result.plot_inputs, path, title="coverage of central intervals")
    elif likelihood == Likelihood.CLASSIFICATION:
        plot_reliability(result.plot_inputs, path, n_bins=n_bins, title="reliability")
    else:  # binary / multi-label: each label a two-class problem, all labels pooled
        plot_reliability(
            result.plot_inputs, path, n_bins=n_bins, title="reliability (labels pooled)"
        )


def _write_evaluation_html(
    result: EvaluationResult,
    html: str | Path,
    plot: str | Path | None,
    draw: Callable[[str | Path], None],
    extra: dict[str, Any] | None,
    history: str | Path | None,
) -> None:
    """The HTML page; the images it embeds are drawn into a temporary folder that it outlives."""
    import tempfile
    from types import SimpleNamespace

    from laplace_cli.pipeline.report import write_html_report

    images: list[str | Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        if plot is not None:
            images.append(plot)
        else:
            img = Path(tmp) / "plot.png"
            draw(img)
            images.append(img)
        if result.curves:
            from laplace_cli.pipeline.report import plot_risk_coverage

            images.append(plot_risk_coverage(result.curves, Path(tmp) / "risk_coverage.png"))
        if history is not None:
            from laplace_cli.io.history import read_runs
            from laplace_cli.pipeline.run_history import plot_trend

            images.append(plot_trend(read_runs(history), Path(tmp) / "trend.png"))
        settings = {**result.settings, **(extra or {}).get("posterior_info", {})}
        gates = [SimpleNamespace(text=g["gate"], **g) for g in result.gates]
        write_html_report(
            html,
            "laplace evaluate",
            result.rows,
            settings,
            images,
            gates=gates,
            identity=result.identity,
            baseline=result.baseline or None,
            tables=result.tables,
            intervals=result.intervals or None,
        )


def _jsonable(obj: Any) -> Any:
    import math

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def jsonable(obj: Any) -> Any:
    """`obj` as the JSON report writes it: non-finite floats as None, paths as strings."""
    return _jsonable(obj)
