"""Seeded bootstrap confidence intervals of the evaluation metrics, vectorised over resamples.

A *resample* draws N rows with replacement from a split of N rows. Resamples are drawn as
index tensors of shape (b, N) in chunks (:func:`resample_indices`) and turned into per-row
counts ``w`` (b, N); every metric here is then a function of ``w`` evaluated for all the
resamples of a chunk at once (``w @ x / N`` for a mean, ``scatter_add`` for binned and rank
statistics), never a Python loop per resample. Applied to ``w = 1`` each statistic equals the
metric of :mod:`laplace_cli.metrics.classification` on the whole split. The statistics are
:mod:`laplace_cli.metrics.bootstrap_statistics` (re-exported here); this module draws the
resamples and turns their values into intervals.

* **Stratified** resampling (classification: by label) draws each stratum's rows from that
  stratum only, so every resample keeps the split's class counts; accuracy, NLL and ECE then do
  not vary with the class mix, which is fixed by how the split was made.
* **Paired** differences: every row of an evaluation (MAP, temperature, Laplace) is scored on
  the *same* resamples, so ``laplace.nll − map.nll`` is computed per resample and its interval
  reflects the noise of the difference, not of each metric separately.
* With out-of-distribution data (AUROC), a second group of rows is resampled alongside the
  test rows, from the same random stream.

Three interval methods, each from the same B resampled values ``θ*_b``:

* ``percentile``: the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of the
  ``θ*_b`` (linear interpolation, numpy's default). A confidence interval for the metric of
  the population the split was drawn from.
* ``basic``: the percentile bounds reflected around the estimate, ``(2θ̂ − q_hi, 2θ̂ − q_lo)``,
  which removes the bootstrap's estimate of the bias (ECE is biased upwards: a resample's ECE
  exceeds the split's, which exceeds the population's).
* ``prediction`` (default: the question a nightly gate asks): where the metric of a *fresh* split of the same size would fall,
  ``θ̂ + quantiles of (θ*_b − θ*_b')`` over pairs of distinct resamples. The split's value and
  a fresh split's are two draws of the same noisy statistic, so the interval is about √2
  wider than a confidence interval and needs no bias correction (both draws share the bias).
  This is the interval that answers "is tonight's ECE different from what another test split
  would give?"; ``benchmarks/bootstrap_coverage.py`` measures each method's coverage of a
  fresh split's ECE (percentile and basic fall well short of their level for ECE).

Resamples depend only on the seed, the group sizes, the strata and ``n_resamples``: for the
same inputs and seed the intervals are identical on every run and machine (CPU generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError

# The statistics live in their own module; their names stay importable from here.
from laplace_cli.metrics.bootstrap_statistics import (
    BINNINGS,
    Statistic,
    auroc_statistic,
    binary_statistic,
    classification_statistic,
    regression_statistic,
)
from laplace_cli.metrics.checks import (
    check_level,
)

__all__ = [
    "BINNINGS",
    "METHODS",
    "BootstrapSettings",
    "Statistic",
    "auroc_statistic",
    "binary_statistic",
    "bootstrap_distributions",
    "METRIC_RANGES",
    "classification_statistic",
    "clip_to_range",
    "interval",
    "intervals_from_distributions",
    "regression_statistic",
    "resample_indices",
]

METHODS = ("percentile", "basic", "prediction")
"""Interval methods (module docstring): percentile, basic (reflected), prediction (fresh split)."""

#: ``prediction`` pairs resample b with b + s (mod B) for s = 1..S, S = min(B − 1, this // B):
#: every ordered pair of distinct resamples up to B = 2048, a fixed subset beyond.
PREDICTION_PAIRS = 1 << 22

#: Upper bound on b × N per chunk of resamples (memory: a few float64 tensors of this size).
CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class BootstrapSettings:
    """How intervals are computed; recorded in the report's settings.

    Attributes:
        n_resamples: B, the number of resamples (> 0).
        confidence: central probability of each interval, in (0, 1).
        seed: seed of the resampling stream.
        method: ``percentile``, ``basic`` or ``prediction`` (module docstring).
    """

    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    method: str = "prediction"

    def __post_init__(self) -> None:
        if isinstance(self.n_resamples, bool) or not isinstance(self.n_resamples, int):
            raise BadInputError(f"bootstrap: expected an integer B > 0, got {self.n_resamples!r}")
        if self.n_resamples < 1:
            raise BadInputError(
                f"bootstrap: expected B > 0 resamples, got {self.n_resamples} "
                "(0 turns the bootstrap off)"
            )
        check_level(self.confidence, "confidence")
        if self.method not in METHODS:
            raise BadInputError(
                f"bootstrap method: expected one of {', '.join(METHODS)}, got {self.method!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_resamples": self.n_resamples,
            "confidence": self.confidence,
            "seed": self.seed,
            "method": self.method,
        }


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def _strata_positions(n: int, strata: Tensor | None) -> list[Tensor]:
    """Row positions of each stratum, strata in ascending order (one stratum: all rows)."""
    if strata is None:
        return [torch.arange(n)]
    s = torch.as_tensor(strata).reshape(-1).cpu()
    if s.shape[0] != n:
        raise BadInputError(f"strata: expected {n} values, got {s.shape[0]}")
    return [torch.nonzero(s == value).reshape(-1) for value in torch.unique(s)]


def resample_indices(
    sizes: Sequence[int],
    n_resamples: int,
    *,
    seed: int,
    strata: Sequence[Tensor | None] | None = None,
    chunk_size: int | None = None,
) -> Iterator[list[Tensor]]:
    """Bootstrap resamples of one or more groups of rows, in chunks of resamples.

    For each chunk of b resamples and each group (in order), and in that group for each stratum
    (ascending stratum value), ``randint(0, n_s, (b, n_s))`` is drawn from one CPU generator
    seeded with ``seed`` and mapped to the stratum's row positions; a group's index tensor is
    the strata's columns side by side, (b, N_group). Row order inside a resample does not
    matter to any metric.

    Args:
        sizes: number of rows of each group (e.g. the test split, then the OOD split).
        n_resamples: B, the total number of resamples.
        seed: seed of the generator.
        strata: per group, None or (N_group,) stratum labels (resampled within each stratum).
        chunk_size: resamples per chunk (default: ``CHUNK_ELEMENTS // max(sizes)``). It changes
            which random numbers land where, so it is part of the stream's definition.

    Yields:
        One list per chunk: per group, a (b, N_group) int64 tensor of row indices.
    """
    if any(n < 1 for n in sizes):
        raise BadInputError(f"bootstrap: expected groups of at least one row, got sizes {sizes}")
    strata = list(strata) if strata is not None else [None] * len(sizes)
    positions = [_strata_positions(n, s) for n, s in zip(sizes, strata, strict=True)]
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // max(sizes))
    generator = torch.Generator().manual_seed(int(seed))
    done = 0
    while done < n_resamples:
        b = min(chunk_size, n_resamples - done)
        chunk = []
        for group in positions:
            cols = [
                pos[torch.randint(0, pos.shape[0], (b, pos.shape[0]), generator=generator)]
                for pos in group
            ]
            chunk.append(torch.cat(cols, dim=1))
        yield chunk
        done += b


def _counts(index: Tensor, n: int) -> Tensor:
    """(b, n) float64 number of times each row appears in each resample."""
    w = torch.zeros(index.shape[0], n, dtype=torch.float64)
    return w.scatter_add_(1, index, torch.ones(index.shape, dtype=torch.float64))


def bootstrap_distributions(
    statistics: Mapping[str, Statistic],
    sizes: Sequence[int],
    *,
    n_resamples: int,
    seed: int,
    strata: Sequence[Tensor | None] | None = None,
    chunk_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Tensor]]:
    """The B resampled values of every statistic, all rows on the same resamples (paired).

    Args:
        statistics: row name → statistic (counts per group → metric → (b,) values).
        sizes, n_resamples, seed, strata, chunk_size: as :func:`resample_indices`.
        progress: called with the number of resamples done after each chunk.

    Returns:
        row → metric → (B,) float64 values, resample b in position b for every row.
    """
    parts: dict[str, dict[str, list[Tensor]]] = {row: {} for row in statistics}
    done = 0
    for chunk in resample_indices(
        sizes, n_resamples, seed=seed, strata=strata, chunk_size=chunk_size
    ):
        counts = [_counts(idx, n) for idx, n in zip(chunk, sizes, strict=True)]
        for row, statistic in statistics.items():
            for metric, values in statistic(counts).items():
                parts[row].setdefault(metric, []).append(values.to(torch.float64).cpu())
        done += chunk[0].shape[0]
        if progress is not None:
            progress(done)
    return {row: {m: torch.cat(v) for m, v in ms.items()} for row, ms in parts.items()}


# --------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------


def interval(
    values: Tensor, confidence: float = 0.95, *, method: str = "percentile", estimate: float = 0.0
) -> tuple[float, float]:
    """``(lower, upper)`` of the central ``confidence`` interval from bootstrap values.

    ``percentile``: the ``(1 ∓ confidence)/2`` quantiles of ``values`` (linear interpolation
    between order statistics, as ``numpy.quantile``). ``basic``: ``(2·estimate − q_hi,
    2·estimate − q_lo)``. ``prediction``: ``estimate`` plus those quantiles of the differences
    ``values[b] − values[(b + s) mod B]``, s = 1..S (``PREDICTION_PAIRS``). NaN when any value
    is NaN.
    """
    confidence = check_level(confidence, "confidence")
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if v.numel() == 0 or bool(torch.isnan(v).any()):
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    probs = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)
    if method == "prediction":
        if v.numel() < 2:
            return math.nan, math.nan
        n_shifts = min(v.numel() - 1, max(1, PREDICTION_PAIRS // v.numel()))
        pairs = torch.cat([v - v.roll(-s) for s in range(1, n_shifts + 1)])
        q = torch.quantile(pairs, probs)
        return estimate + float(q[0]), estimate + float(q[1])
    q = torch.quantile(v, probs)
    lo, hi = float(q[0]), float(q[1])
    if method == "percentile":
        return lo, hi
    if method == "basic":
        return 2.0 * estimate - hi, 2.0 * estimate - lo
    raise BadInputError(f"bootstrap method: expected one of {', '.join(METHODS)}, got {method!r}")


#: The values a metric can take. ``basic`` and ``prediction`` bounds are the estimate plus
#: resample spreads, so near a boundary they can cross it (an ECE of 0.017 with a spread of
#: ±0.017 gives a lower bound of −0.0003); a bound outside the range is moved onto it, which
#: never lowers the interval's coverage. NLL is absent: a regression NLL can be negative.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "acc": (0.0, 1.0),
    "ece": (0.0, 1.0),
    "mce": (0.0, 1.0),
    "aece": (0.0, 1.0),
    "brier": (0.0, 2.0),
    "rmse": (0.0, math.inf),
    "mae": (0.0, math.inf),
    "crps": (0.0, math.inf),
    "coverage": (0.0, 1.0),
    "auroc": (0.0, 1.0),
}


def clip_to_range(metric: str, lower: float, upper: float) -> tuple[float, float]:
    """``(lower, upper)`` moved into ``METRIC_RANGES[metric]`` (unchanged for other metrics)."""
    lo_bound, hi_bound = METRIC_RANGES.get(metric, (-math.inf, math.inf))
    if math.isnan(lower) or math.isnan(upper):
        return lower, upper
    return min(max(lower, lo_bound), hi_bound), max(min(upper, hi_bound), lo_bound)


def intervals_from_distributions(
    point: Mapping[str, Mapping[str, float]],
    distributions: Mapping[str, Mapping[str, Tensor]],
    settings: BootstrapSettings,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Intervals of each row's metrics and of its paired differences to every other row.

    Returns ``{row: {metric: {"lower", "upper", "diff_vs_<other>": {"estimate", "lower",
    "upper"}, ...}}}``: the path of a value is the path a gate names it by
    (``laplace.nll.diff_vs_map.lower``). A difference is ``row − other`` per resample; its
    estimate is the difference of the point values.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    level, method = settings.confidence, settings.method
    for row, dists in distributions.items():
        row_out: dict[str, dict[str, Any]] = {}
        for metric, values in dists.items():
            estimate = float(point[row][metric])
            lo, hi = clip_to_range(
                metric, *interval(values, level, method=method, estimate=estimate)
            )
            entry: dict[str, Any] = {"lower": lo, "upper": hi}
            for other, other_dists in distributions.items():
                if other == row or metric not in other_dists:
                    continue
                diff_estimate = estimate - float(point[other][metric])
                d_lo, d_hi = interval(
                    values - other_dists[metric], level, method=method, estimate=diff_estimate
                )
                entry[f"diff_vs_{other}"] = {
                    "estimate": diff_estimate,
                    "lower": d_lo,
                    "upper": d_hi,
                }
            row_out[metric] = entry
        out[row] = row_out
    return out
