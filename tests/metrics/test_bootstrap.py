"""Bootstrap intervals (laplace_cli.metrics.bootstrap) against slow per-resample references.

Each vectorised statistic is checked against numpy loops (and sklearn's roc_auc_score) applied
to every materialised resample of the same index stream, and each interval against a
sorted-list percentile computed by hand: same seed ⇒ same interval.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics import bootstrap as BS
from laplace_cli.metrics import classification as M

pytestmark = pytest.mark.usefixtures("one_thread")

sklearn_metrics = pytest.importorskip("sklearn.metrics")
scipy_stats = pytest.importorskip("scipy.stats")


def make_classification(seed: int, n: int, c: int, scale: float = 2.5, decimals: int | None = None):
    """Softmax of random logits with labels drawn from it (a calibrated classifier).

    ``decimals`` rounds the logits so that many confidences tie (the equal-mass bins' ties)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    if decimals is not None:
        logits = logits.round(decimals=decimals)
    probs = logits.softmax(dim=1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return probs, labels


# ---------------------------------------------------------------------------------------------
# Independent references: one resample at a time, numpy loops
# ---------------------------------------------------------------------------------------------


def ref_percentile(values: list[float], q: float) -> float:
    """numpy's 'linear' quantile from a sorted list, by hand."""
    s = sorted(values)
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def ref_interval(values: list[float], level: float, method: str, estimate: float):
    a = (1 - level) / 2
    if method == "prediction":
        b = len(values)
        n_shifts = min(b - 1, max(1, BS.PREDICTION_PAIRS // b))
        pairs = [values[i] - values[(i + s) % b] for s in range(1, n_shifts + 1) for i in range(b)]
        return estimate + ref_percentile(pairs, a), estimate + ref_percentile(pairs, 1 - a)
    lo, hi = ref_percentile(values, a), ref_percentile(values, 1 - a)
    if method == "basic":
        return 2 * estimate - hi, 2 * estimate - lo
    return lo, hi


def ref_gaps(conf: np.ndarray, correct: np.ndarray, bins: np.ndarray, n_bins: int):
    n = len(conf)
    ece, mce = 0.0, 0.0
    for b in range(n_bins):
        members = [i for i in range(n) if bins[i] == b]
        if not members:
            continue
        gap = abs(np.mean(correct[members]) - np.mean(conf[members]))
        ece += len(members) / n * gap
        mce = max(mce, gap)
    return ece, mce


def ref_classification(p: np.ndarray, y: np.ndarray, n_bins: int, binning: str) -> dict:
    n = len(y)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    # Equal width: (k/B, (k+1)/B], confidence 0 in bin 0.
    width = np.array([max(0, math.ceil(c * n_bins) - 1) for c in conf])
    # Equal mass: rank = number of strictly smaller confidences, bin floor(rank B / N).
    order = sorted(conf)
    ranks = [sum(1 for o in order if o < c) for c in conf]
    mass = np.array([r * n_bins // n for r in ranks])
    ece_w, mce_w = ref_gaps(conf, correct, width, n_bins)
    ece_m, mce_m = ref_gaps(conf, correct, mass, n_bins)
    eps = np.finfo(np.float64).eps
    onehot = np.eye(p.shape[1])[y]
    return {
        "acc": correct.mean(),
        "nll": -np.mean(np.log(np.maximum(p[np.arange(n), y], eps))),
        "ece": ece_w if binning == "equal-width" else ece_m,
        "mce": mce_w if binning == "equal-width" else mce_m,
        "brier": np.mean(((p - onehot) ** 2).sum(axis=1)),
        "aece": ece_m,
    }


def all_indices(sizes, n_resamples, seed, strata=None, chunk_size=None):
    chunks = list(
        BS.resample_indices(sizes, n_resamples, seed=seed, strata=strata, chunk_size=chunk_size)
    )
    return [torch.cat([c[g] for c in chunks]).numpy() for g in range(len(sizes))]


# ---------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------


def test_stratified_resamples_keep_class_counts_and_are_seeded() -> None:
    _, y = make_classification(0, 90, 4)
    (idx,) = all_indices([90], 37, seed=3, strata=[y], chunk_size=10)
    assert idx.shape == (37, 90)
    counts = np.bincount(y.numpy(), minlength=4)
    for row in idx:
        assert (np.bincount(y.numpy()[row], minlength=4) == counts).all()
    (again,) = all_indices([90], 37, seed=3, strata=[y], chunk_size=10)
    assert (again == idx).all()
    (other,) = all_indices([90], 37, seed=4, strata=[y], chunk_size=10)
    assert (other != idx).any()


def test_unstratified_resamples_cover_rows_uniformly() -> None:
    (idx,) = all_indices([50], 400, seed=0)
    freq = np.bincount(idx.reshape(-1), minlength=50) / idx.size
    assert freq.min() > 0.6 / 50 and freq.max() < 1.4 / 50  # ~ 400 draws per row
    # Not the identity: rows repeat inside a resample (with replacement).
    assert all(len(set(r)) < 50 for r in idx[:20])


# ---------------------------------------------------------------------------------------------
# Statistics and intervals against the references
# ---------------------------------------------------------------------------------------------


def test_full_sample_counts_give_the_library_metrics() -> None:
    p, y = make_classification(1, 300, 5, decimals=1)
    ones = [torch.ones(1, 300, dtype=torch.float64)]
    for binning in BS.BINNINGS:
        got = {k: float(v) for k, v in BS.classification_statistic(p, y, 12, binning)(ones).items()}
        want = M.classification_metrics(p, y, 12, binning)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), binning
    assert M.classification_metrics(p, y, 12, "equal-mass")["ece"] == M.adaptive_ece(p, y, 12)


@pytest.mark.parametrize("binning", BS.BINNINGS)
@pytest.mark.parametrize("method", BS.METHODS)
def test_classification_intervals_match_a_per_resample_loop(binning: str, method: str) -> None:
    # Rounded logits: ties in confidence exercise the equal-mass tie groups.
    p, y = make_classification(2, 60, 3, decimals=1)
    b, seed, level, n_bins = 45, 11, 0.9, 7
    # A second row (tempered probabilities) for the paired difference.
    p2 = (p.log() / 1.7).softmax(dim=1)
    point = {
        "a": M.classification_metrics(p, y, n_bins, binning),
        "b": M.classification_metrics(p2, y, n_bins, binning),
    }
    stats = {
        "a": BS.classification_statistic(p, y, n_bins, binning),
        "b": BS.classification_statistic(p2, y, n_bins, binning),
    }
    dists = BS.bootstrap_distributions(
        stats, [60], n_resamples=b, seed=seed, strata=[y], chunk_size=16
    )
    settings = BS.BootstrapSettings(n_resamples=b, confidence=level, seed=seed, method=method)
    got = BS.intervals_from_distributions(point, dists, settings)

    (idx,) = all_indices([60], b, seed, strata=[y], chunk_size=16)
    pn, p2n, yn = p.numpy(), p2.numpy(), y.numpy()
    ref_a = [ref_classification(pn[r], yn[r], n_bins, binning) for r in idx]
    ref_b = [ref_classification(p2n[r], yn[r], n_bins, binning) for r in idx]
    for metric in ref_a[0]:
        values = [r[metric] for r in ref_a]
        assert np.allclose(dists["a"][metric].numpy(), values, rtol=1e-10, atol=1e-13), metric
        lo, hi = ref_interval(values, level, method, point["a"][metric])
        assert got["a"][metric]["lower"] == pytest.approx(lo, rel=1e-9, abs=1e-12), metric
        assert got["a"][metric]["upper"] == pytest.approx(hi, rel=1e-9, abs=1e-12), metric
        diffs = [ra[metric] - rb[metric] for ra, rb in zip(ref_a, ref_b, strict=True)]
        estimate = point["a"][metric] - point["b"][metric]
        lo, hi = ref_interval(diffs, level, method, estimate)
        d = got["a"][metric]["diff_vs_b"]
        assert d["estimate"] == pytest.approx(estimate, rel=1e-12, abs=1e-15)
        assert d["lower"] == pytest.approx(lo, rel=1e-9, abs=1e-12), metric
        assert d["upper"] == pytest.approx(hi, rel=1e-9, abs=1e-12), metric
        assert got["b"][metric]["diff_vs_a"]["estimate"] == pytest.approx(-estimate, abs=1e-15)


def test_auroc_matches_sklearn_on_every_resample() -> None:
    g = torch.Generator().manual_seed(5)
    # Scores rounded to one decimal: ties between in and OOD rows count ½.
    s_in = torch.randn(40, generator=g, dtype=torch.float64).round(decimals=1)
    s_out = (torch.randn(25, generator=g, dtype=torch.float64) + 0.8).round(decimals=1)
    stat = {"r": BS.auroc_statistic(s_in, s_out)}
    dists = BS.bootstrap_distributions(stat, [40, 25], n_resamples=60, seed=2, chunk_size=25)
    idx_in, idx_out = all_indices([40, 25], 60, 2, chunk_size=25)
    want = []
    for r_in, r_out in zip(idx_in, idx_out, strict=True):
        scores = np.concatenate([s_in.numpy()[r_in], s_out.numpy()[r_out]])
        labels = np.r_[np.zeros(40), np.ones(25)]
        want.append(sklearn_metrics.roc_auc_score(labels, scores))
    assert np.allclose(dists["r"]["auroc"].numpy(), want, rtol=0, atol=1e-12)
    full = BS.auroc_statistic(s_in, s_out)([torch.ones(1, 40), torch.ones(1, 25)])["auroc"]
    assert float(full) == pytest.approx(M.auroc(s_in, s_out), abs=1e-12)


def test_regression_matches_a_per_resample_loop() -> None:
    g = torch.Generator().manual_seed(7)
    n, d = 50, 2
    mean = torch.randn(n, d, generator=g, dtype=torch.float64)
    var = torch.rand(n, d, generator=g, dtype=torch.float64) + 0.1
    y = mean + var.sqrt() * torch.randn(n, d, generator=g, dtype=torch.float64) * 1.3
    levels = (0.5, 0.9)
    dists = BS.bootstrap_distributions(
        {"r": BS.regression_statistic(mean, var, y, levels)}, [n], n_resamples=30, seed=1
    )
    (idx,) = all_indices([n], 30, 1)
    m, v, t = mean.numpy(), var.numpy(), y.numpy()
    norm = scipy_stats.norm
    for k, r in enumerate(idx):
        mr, vr, tr = m[r], v[r], t[r]
        sd = np.sqrt(vr)
        z = (tr - mr) / sd
        want = {
            "rmse": np.sqrt(np.mean((tr - mr) ** 2)),
            "mae": np.mean(np.abs(tr - mr)),
            "nll": -np.mean(norm.logpdf(tr, mr, sd)),
            "crps": np.mean(
                sd * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))
            ),
            "coverage_50": np.mean(np.abs(tr - mr) <= norm.ppf(0.75) * sd),
            "coverage_90": np.mean(np.abs(tr - mr) <= norm.ppf(0.95) * sd),
        }
        for key, value in want.items():
            assert float(dists["r"][key][k]) == pytest.approx(value, rel=1e-10), key
    full = BS.regression_statistic(mean, var, y, levels)([torch.ones(1, n, dtype=torch.float64)])
    lib = M.regression_metrics(mean, var, y, levels)
    assert {k: float(v) for k, v in full.items()} == pytest.approx(lib, rel=1e-12)


def test_binary_matches_a_per_resample_loop() -> None:
    g = torch.Generator().manual_seed(8)
    p = torch.rand(40, 3, generator=g, dtype=torch.float64)
    t = (torch.rand(40, 3, generator=g, dtype=torch.float64) < p).to(torch.float64)
    dists = BS.bootstrap_distributions(
        {"r": BS.binary_statistic(p, t)}, [40], n_resamples=20, seed=4
    )
    (idx,) = all_indices([40], 20, 4)
    for k, r in enumerate(idx):
        want = M.binary_metrics(p[torch.as_tensor(r)], t[torch.as_tensor(r)])
        for key, value in want.items():
            assert float(dists["r"][key][k]) == pytest.approx(value, rel=1e-12), key


def test_bad_settings_are_refused() -> None:
    with pytest.raises(BadInputError, match="0 turns the bootstrap off"):
        BS.BootstrapSettings(n_resamples=0)
    with pytest.raises(BadInputError, match="percentile"):
        BS.BootstrapSettings(method="bca")
    with pytest.raises(BadInputError, match="confidence"):
        BS.BootstrapSettings(confidence=1.5)
    p, y = make_classification(0, 10, 3)
    with pytest.raises(BadInputError, match="equal-width"):
        BS.classification_statistic(p, y, binning="quantile")


# ---------------------------------------------------------------------------------------------
# Coverage of a fresh split's ECE (the full simulation: benchmarks/bootstrap_coverage.py)
# ---------------------------------------------------------------------------------------------


def test_prediction_interval_covers_a_fresh_splits_ece() -> None:
    """A calibrated classifier, n = 200: the 95 % prediction interval of the ECE holds the
    ECE of an independent split of the same size in most of 40 seeded repetitions, while the
    percentile interval (a confidence interval for the population ECE) does not."""
    reps, hits = 40, {"prediction": 0, "percentile": 0}
    for rep in range(reps):
        p, y = make_classification(100 + 2 * rep, 200, 10)
        p_fresh, y_fresh = make_classification(101 + 2 * rep, 200, 10)
        fresh = M.ece(p_fresh, y_fresh)
        stat = {"r": BS.classification_statistic(p, y)}
        values = BS.bootstrap_distributions(stat, [200], n_resamples=150, seed=rep, strata=[y])
        for method in hits:
            lo, hi = BS.interval(values["r"]["ece"], 0.95, method=method, estimate=M.ece(p, y))
            hits[method] += lo <= fresh <= hi
    # P(Binomial(40, 0.95) >= 34) = 0.997, P(Binomial(40, 0.8) >= 34) = 0.29. Seeded: this run
    # gives 39 of 40 (percentile: 30).
    assert hits["prediction"] >= 34, hits
    assert hits["percentile"] < hits["prediction"], hits


def test_interval_bounds_stay_inside_the_metric_range():
    """A prediction interval is the estimate plus resample spreads: near ECE = 0 its lower end
    would cross zero; it is moved onto the range, differences are left alone."""
    settings = BS.BootstrapSettings(n_resamples=50, confidence=0.9, method="prediction", seed=0)
    spread = torch.linspace(-0.02, 0.02, 50, dtype=torch.float64)
    point = {"map": {"ece": 0.001, "nll": -0.5}, "laplace": {"ece": 0.002, "nll": -0.6}}
    dists = {
        "map": {"ece": 0.001 + spread, "nll": -0.5 + spread},
        "laplace": {"ece": 0.002 + spread.flip(0), "nll": -0.6 + spread},
    }
    out = BS.intervals_from_distributions(point, dists, settings)
    raw = BS.interval(dists["map"]["ece"], 0.9, method="prediction", estimate=0.001)
    assert raw[0] < 0.0  # the unclipped bound crosses zero ...
    assert out["map"]["ece"]["lower"] == 0.0  # ... the reported one does not
    assert out["map"]["ece"]["upper"] == pytest.approx(raw[1])
    assert out["map"]["nll"]["lower"] < -0.5  # a regression-style NLL may be negative
    assert out["laplace"]["ece"]["diff_vs_map"]["lower"] < 0.0  # differences are signed
    assert BS.clip_to_range("acc", -0.1, 1.2) == (0.0, 1.0)
    assert BS.clip_to_range("unknown", -3.0, 3.0) == (-3.0, 3.0)
