"""Tests of laplace_cli.metrics.classification against independent implementations and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics import classification as M

sklearn_metrics = pytest.importorskip("sklearn.metrics")
scipy_stats = pytest.importorskip("scipy.stats")
scipy_integrate = pytest.importorskip("scipy.integrate")

SEED = 0


def make_classification(
    seed: int, n: int, c: int, scale: float = 3.0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random logits, their softmax, and labels drawn from the softmax (a calibrated model)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    probs = logits.softmax(dim=1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return logits.to(dtype), probs.to(dtype), labels


# ---------------------------------------------------------------------------------------------
# Independent reference implementations (numpy, loops)
# ---------------------------------------------------------------------------------------------


def ref_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int):
    edges = [k / n_bins for k in range(n_bins + 1)]
    conf_sum = [0.0] * n_bins
    acc_sum = [0.0] * n_bins
    count = [0] * n_bins
    for p, y in zip(probs, labels, strict=True):
        pred = int(np.argmax(p))
        c = float(p[pred])
        b = 0
        for k in range(n_bins):
            if edges[k] < c <= edges[k + 1]:
                b = k
                break
        conf_sum[b] += c
        acc_sum[b] += float(pred == y)
        count[b] += 1
    return conf_sum, acc_sum, count


def ref_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[float, float]:
    conf_sum, acc_sum, count = ref_bins(probs, labels, n_bins)
    n = sum(count)
    ece, mce = 0.0, 0.0
    for cs, a, k in zip(conf_sum, acc_sum, count, strict=True):
        if k:
            gap = abs(a / k - cs / k)
            ece += k / n * gap
            mce = max(mce, gap)
    return ece, mce


def ref_adaptive_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    n = len(conf)
    bins: dict[int, list[int]] = {}
    for i in range(n):
        rank = sum(1 for j in range(n) if conf[j] < conf[i])
        bins.setdefault(rank * n_bins // n, []).append(i)
    total = 0.0
    for members in bins.values():
        total += len(members) / n * abs(correct[members].mean() - conf[members].mean())
    return total


def ref_brier(probs: np.ndarray, labels: np.ndarray) -> float:
    total = 0.0
    for p, y in zip(probs, labels, strict=True):
        total += sum((p[c] - (1.0 if c == y else 0.0)) ** 2 for c in range(len(p)))
    return total / len(labels)


def ref_fpr_at_tpr(s_in: np.ndarray, s_out: np.ndarray, tpr: float) -> float:
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    fpr, tpr_curve, _ = sklearn_metrics.roc_curve(y, np.r_[s_in, s_out], drop_intermediate=False)
    return float(fpr[np.argmax(tpr_curve >= tpr - 1e-12)])


def ref_crps(mu: float, sigma: float, y: float) -> float:
    """CRPS by numerical integration of (F(x) − 1[x ≥ y])²."""
    dist = scipy_stats.norm(mu, sigma)
    lo, hi = min(mu - 12 * sigma, y), max(mu + 12 * sigma, y)
    below = scipy_integrate.quad(lambda x: dist.cdf(x) ** 2, lo, y, limit=200)[0]
    above = scipy_integrate.quad(lambda x: (1 - dist.cdf(x)) ** 2, y, hi, limit=200)[0]
    return below + above


# ---------------------------------------------------------------------------------------------
# Classification against references
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [1, 5, 15], ids=lambda b: f"bins{b}")
@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed{s}")
def test_classification_matches_references(seed: int, n_bins: int) -> None:
    _, probs, labels = make_classification(seed, 300, 4)
    p, y = probs.numpy(), labels.numpy()
    got = M.classification_metrics(probs, labels, n_bins=n_bins)
    ece, mce = ref_ece(p, y, n_bins)
    assert got["acc"] == pytest.approx(sklearn_metrics.accuracy_score(y, p.argmax(1)), abs=1e-12)
    assert got["nll"] == pytest.approx(sklearn_metrics.log_loss(y, p, labels=range(4)), rel=1e-10)
    assert got["brier"] == pytest.approx(ref_brier(p, y), rel=1e-10)
    assert got["ece"] == pytest.approx(ece, abs=1e-12)
    assert got["mce"] == pytest.approx(mce, abs=1e-12)
    assert got["aece"] == pytest.approx(ref_adaptive_ece(p, y, n_bins), abs=1e-12)
    # The single-metric functions agree with the combined one.
    assert M.ece(probs, labels, n_bins) == got["ece"]
    assert M.mce(probs, labels, n_bins) == got["mce"]
    assert M.adaptive_ece(probs, labels, n_bins) == got["aece"]
    assert M.nll(probs, labels) == got["nll"]
    assert M.brier(probs, labels) == got["brier"]
    assert M.accuracy(probs, labels) == got["acc"]


def test_reliability_bins_match_reference() -> None:
    _, probs, labels = make_classification(SEED, 200, 3)
    bins = M.reliability_bins(probs, labels, n_bins=10)
    conf_sum, acc_sum, count = ref_bins(probs.numpy(), labels.numpy(), 10)
    assert bins.count.tolist() == count
    assert bins.n_samples == 200
    assert torch.equal(bins.edges, torch.arange(11, dtype=torch.float64) / 10)
    for b in range(10):
        if count[b]:
            assert bins.confidence[b].item() == pytest.approx(conf_sum[b] / count[b], abs=1e-12)
            assert bins.accuracy[b].item() == pytest.approx(acc_sum[b] / count[b], abs=1e-12)
        else:
            assert math.isnan(bins.confidence[b].item()) and math.isnan(bins.accuracy[b].item())


def test_float32_probabilities_cast_to_float64_are_accepted() -> None:
    logits, _, labels = make_classification(SEED, 50, 1000, dtype=torch.float32)
    probs = logits.softmax(dim=1).double()  # rows off by float32 rounding, now in float64
    assert 0.0 <= M.ece(probs, labels) <= 1.0


def test_float32_softmax_is_accepted() -> None:
    logits, _, labels = make_classification(SEED, 500, 10, dtype=torch.float32)
    probs = logits.softmax(dim=1)  # float32 rows sum to 1 only up to rounding
    out = M.classification_metrics(probs, labels)
    ref = M.classification_metrics(probs.double() / probs.double().sum(1, keepdim=True), labels)
    for key in out:
        assert out[key] == pytest.approx(ref[key], abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------


def test_ece_hand_computed_with_empty_bins_and_edges() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    # Bins of width 0.2, (lo, hi]: 0.9 → bin 4 (acc 1/2, conf 0.9); 0.6 sits on an edge → bin 2;
    # [0.5, 0.5] predicts class 0 (first maximum) → correct, conf 0.5 → bin 2 (acc 1, conf 0.55).
    bins = M.reliability_bins(probs, labels, n_bins=5)
    assert bins.count.tolist() == [0, 0, 2, 0, 2]
    assert bins.accuracy[2].item() == pytest.approx(1.0)
    assert bins.confidence[2].item() == pytest.approx(0.55)
    assert M.ece(probs, labels, n_bins=5) == pytest.approx(0.5 * 0.4 + 0.5 * 0.45)
    assert M.mce(probs, labels, n_bins=5) == pytest.approx(0.45)
    assert M.accuracy(probs, labels) == pytest.approx(0.75)


def test_confidence_one_goes_to_last_bin_and_perfect_model_has_zero_error() -> None:
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    bins = M.reliability_bins(probs, labels, n_bins=15)
    assert bins.count[-1].item() == 2
    metrics = M.classification_metrics(probs, labels)
    assert metrics == {"acc": 1.0, "nll": 0.0, "ece": 0.0, "mce": 0.0, "brier": 0.0, "aece": 0.0}


def test_nll_clamps_zero_probability_of_true_class() -> None:
    probs = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert M.nll(probs, torch.tensor([1])) == pytest.approx(-math.log(np.finfo(np.float64).eps))
    assert M.nll(probs.float(), torch.tensor([1])) == pytest.approx(
        -math.log(np.finfo(np.float32).eps)
    )


def test_brier_hand_computed() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    expected = ((0.3**2 + 0.2**2 + 0.1**2) + (0.3**2 + 0.7**2 + 0.4**2)) / 2
    assert M.brier(probs, labels) == pytest.approx(expected)


def test_adaptive_ece_keeps_ties_in_one_bin() -> None:
    probs = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.9, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    # Ranks (strictly smaller) 0, 0, 0, 3 → bins 0, 0, 0, 1 with B = 2:
    # bin 0: acc 1/3, conf 0.6; bin 1: acc 1, conf 0.9.
    expected = 0.75 * abs(1 / 3 - 0.6) + 0.25 * abs(1.0 - 0.9)
    assert M.adaptive_ece(probs, labels, n_bins=2) == pytest.approx(expected)
    perm = torch.tensor([3, 1, 0, 2])
    assert M.adaptive_ece(probs[perm], labels[perm], n_bins=2) == pytest.approx(expected)


def test_adaptive_ece_equal_mass_without_ties() -> None:
    conf = torch.tensor([0.55, 0.6, 0.7, 0.75, 0.8, 0.95], dtype=torch.float64)
    probs = torch.stack([conf, 1 - conf], dim=1)
    labels = torch.tensor([0, 1, 0, 0, 1, 0])
    # Three bins of two: {0.55, 0.6} acc 1/2; {0.7, 0.75} acc 1; {0.8, 0.95} acc 1/2.
    expected = (abs(0.5 - 0.575) + abs(1.0 - 0.725) + abs(0.5 - 0.875)) / 3
    assert M.adaptive_ece(probs, labels, n_bins=3) == pytest.approx(expected)
    # More bins than samples: every sample alone, empty bins contribute 0.
    alone = sum(abs(float(labels[i] == 0) - conf[i].item()) for i in range(6)) / 6
    assert M.adaptive_ece(probs, labels, n_bins=15) == pytest.approx(alone)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 60),
    c=st.integers(2, 6),
    n_bins=st.integers(1, 20),
    scale=st.floats(0.0, 20.0),
)
def test_calibration_errors_are_in_range_and_order_free(
    seed: int, n: int, c: int, n_bins: int, scale: float
) -> None:
    _, probs, labels = make_classification(seed, n, c, scale)
    out = M.classification_metrics(probs, labels, n_bins=n_bins)
    assert 0.0 <= out["ece"] <= out["mce"] + 1e-12 <= 1.0 + 1e-12
    assert 0.0 <= out["aece"] <= 1.0
    assert 0.0 <= out["acc"] <= 1.0 and out["nll"] >= 0.0 and 0.0 <= out["brier"] <= 2.0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = M.classification_metrics(probs[perm], labels[perm], n_bins=n_bins)
    for key in out:
        assert shuffled[key] == pytest.approx(out[key], abs=1e-12)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c=st.integers(2, 10))
def test_calibrated_synthetic_data_has_small_ece(seed: int, c: int) -> None:
    # Labels drawn from the predicted probabilities: calibrated by construction.
    _, probs, labels = make_classification(seed, 20_000, c, scale=2.0)
    assert M.ece(probs, labels) < 0.03
    assert M.adaptive_ece(probs, labels) < 0.03


def test_overconfident_model_has_large_ece() -> None:
    logits, _, labels = make_classification(SEED, 5000, 5, scale=2.0)
    sharpened = (logits * 4).softmax(dim=1)
    assert M.ece(sharpened, labels) > 0.1


# ---------------------------------------------------------------------------------------------
# Binary / multi-label
# ---------------------------------------------------------------------------------------------


def test_binary_metrics_match_sklearn() -> None:
    g = torch.Generator().manual_seed(SEED)
    probs = torch.rand(100, 3, generator=g, dtype=torch.float64).clamp(0.01, 0.99)
    labels = torch.bernoulli(probs, generator=g)
    p, y = probs.numpy().ravel(), labels.numpy().ravel()
    assert M.binary_nll(probs, labels) == pytest.approx(sklearn_metrics.log_loss(y, p), rel=1e-10)
    assert M.binary_brier(probs, labels) == pytest.approx(
        sklearn_metrics.brier_score_loss(y, p), rel=1e-10
    )
    out = M.binary_metrics(probs, labels.long())
    assert out["acc"] == pytest.approx(sklearn_metrics.accuracy_score(y, p > 0.5))
    assert out["nll"] == M.binary_nll(probs, labels)
    # (N,) probabilities work too.
    assert M.binary_brier(probs[:, 0], labels[:, 0]) == pytest.approx(
        sklearn_metrics.brier_score_loss(y[::3], p[::3])
    )


def test_binary_labels_must_be_zero_or_one() -> None:
    with pytest.raises(BadInputError, match=r"labels: expected binary targets in \{0, 1\}"):
        M.binary_nll(torch.full((3,), 0.5), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(BadInputError, match=r"expected shape \(3,\)"):
        M.binary_brier(torch.full((3,), 0.5), torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------------
# OOD
# ---------------------------------------------------------------------------------------------


def test_auroc_hand_computed_with_ties() -> None:
    # out 1 vs in {0, 1, 1}: 1 + ½ + ½; out 2 beats all three → (2 + 3) / 6.
    s_in, s_out = torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 2.0])
    assert M.auroc(s_in, s_out) == pytest.approx(5 / 6)
    assert M.auroc(torch.zeros(4), torch.zeros(3)) == pytest.approx(0.5)
    assert M.auroc(torch.tensor([0.0]), torch.tensor([1.0])) == 1.0
    assert M.auroc(torch.tensor([1.0]), torch.tensor([0.0])) == 0.0


@settings(max_examples=30, deadline=None)
@given(
    s_in=st.lists(st.integers(0, 6), min_size=1, max_size=40),
    s_out=st.lists(st.integers(0, 6), min_size=1, max_size=40),
)
def test_auroc_matches_sklearn_and_is_antisymmetric(s_in: list[int], s_out: list[int]) -> None:
    a, b = torch.tensor(s_in, dtype=torch.float64), torch.tensor(s_out, dtype=torch.float64)
    got = M.auroc(a, b)
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    assert got == pytest.approx(sklearn_metrics.roc_auc_score(y, np.r_[s_in, s_out]))
    assert got + M.auroc(b, a) == pytest.approx(1.0)
    # Invariant to a strictly increasing transform of the scores.
    assert M.auroc(a.exp() * 3 - 1, b.exp() * 3 - 1) == pytest.approx(got)


def test_fpr_at_tpr_hand_computed() -> None:
    s_in = torch.tensor([0.1, 0.2, 0.3, 0.4])
    s_out = torch.tensor([0.25, 0.35, 0.5, 0.6])
    assert M.fpr_at_tpr(s_in, s_out, tpr=0.5) == 0.0  # threshold 0.5
    assert M.fpr_at_tpr(s_in, s_out, tpr=0.75) == 0.25  # threshold 0.35
    assert M.fpr_at_tpr(s_in, s_out, tpr=1.0) == 0.5  # threshold 0.25
    # 0.95 · 20 is 18.999999999999996 in floating point: still 19 positives needed.
    out20 = torch.arange(20, dtype=torch.float64)
    assert M.fpr_at_tpr(torch.tensor([1.5]), out20, tpr=0.95) == 1.0


@settings(max_examples=30, deadline=None)
@given(
    s_in=st.lists(st.integers(0, 8), min_size=1, max_size=40),
    s_out=st.lists(st.integers(0, 8), min_size=1, max_size=40),
    tpr=st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]),
)
def test_fpr_at_tpr_matches_sklearn_roc_curve(
    s_in: list[int], s_out: list[int], tpr: float
) -> None:
    a, b = np.array(s_in, dtype=float), np.array(s_out, dtype=float)
    got = M.fpr_at_tpr(torch.from_numpy(a), torch.from_numpy(b), tpr)
    assert got == pytest.approx(ref_fpr_at_tpr(a, b, tpr))


def test_ood_metrics_keys() -> None:
    out = M.ood_metrics(torch.randn(50), torch.randn(40) + 2)
    assert set(out) == {"auroc", "fpr95"} and out["auroc"] > 0.8


# ---------------------------------------------------------------------------------------------
# Regression
# ---------------------------------------------------------------------------------------------


def make_regression(seed: int, n: int, d: int, noise_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, d, generator=g, dtype=torch.float64)
    var = torch.rand(n, d, generator=g, dtype=torch.float64) + 0.1
    y = mean + noise_scale * var.sqrt() * torch.randn(n, d, generator=g, dtype=torch.float64)
    return mean, var, y


def test_regression_metrics_match_references() -> None:
    mean, var, y = make_regression(SEED, 200, 2)
    m, v, t = mean.numpy(), var.numpy(), y.numpy()
    out = M.regression_metrics(mean, var, y)
    assert set(out) == {"rmse", "mae", "nll", "crps", "coverage_50", "coverage_90", "coverage_95"}
    assert out["rmse"] == pytest.approx(math.sqrt(((m - t) ** 2).mean()))
    assert out["mae"] == pytest.approx(np.abs(m - t).mean())
    assert out["nll"] == pytest.approx(-scipy_stats.norm.logpdf(t, m, np.sqrt(v)).mean())
    torch_nll = torch.nn.functional.gaussian_nll_loss(mean, y, var, full=True, eps=0.0)
    assert out["nll"] == pytest.approx(torch_nll.item())
    for level in (0.5, 0.9, 0.95):
        lo, hi = scipy_stats.norm.interval(level, m, np.sqrt(v))
        expected = ((t >= lo) & (t <= hi)).mean()
        assert out[M.coverage_key(level)] == pytest.approx(expected)
        got_lo, got_hi = M.interval(mean, var, level)
        np.testing.assert_allclose(got_lo.numpy(), lo, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_hi.numpy(), hi, rtol=1e-12, atol=1e-12)
    sub = slice(0, 12)  # numerical integration is slow: check the CRPS on a few elements
    ref = np.mean(
        [
            ref_crps(mu, math.sqrt(s2), yy)
            for mu, s2, yy in zip(m[sub].ravel(), v[sub].ravel(), t[sub].ravel(), strict=True)
        ]
    )
    assert M.crps_gaussian(mean[sub], var[sub], y[sub]) == pytest.approx(ref, rel=1e-6)


def test_crps_hand_computed() -> None:
    # At y = μ: CRPS = σ (2φ(0) − 1/√π) = σ (√2 − 1)/√π.
    expected = 2.0 * (math.sqrt(2.0) - 1.0) / math.sqrt(math.pi)
    assert M.crps_gaussian(torch.zeros(1, 1), torch.full((1, 1), 4.0), torch.zeros(1, 1)) == (
        pytest.approx(expected)
    )
    # Far from the mean the CRPS approaches the absolute error minus σ/√π.
    far = M.crps_gaussian(torch.zeros(1), torch.ones(1), torch.full((1,), 50.0))
    assert far == pytest.approx(50.0 - 1 / math.sqrt(math.pi), rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), noise_scale=st.floats(0.1, 3.0))
def test_regression_properties(seed: int, noise_scale: float) -> None:
    mean, var, y = make_regression(seed, 50, 2, noise_scale)
    levels = [0.1, 0.3, 0.5, 0.7, 0.9, 0.99]
    curve = M.coverage_curve(mean, var, y, levels)
    assert torch.all(curve.empirical[1:] >= curve.empirical[:-1])  # monotone in level
    assert M.crps_gaussian(mean, var, y) >= 0.0
    assert M.mae(mean, var, y) <= M.rmse(mean, var, y) + 1e-12


def test_calibrated_regression_has_nominal_coverage() -> None:
    mean, var, y = make_regression(SEED, 20_000, 1)
    for level in (0.5, 0.9, 0.95):
        assert M.coverage(mean, var, y, level) == pytest.approx(level, abs=0.015)


def test_vector_targets_with_single_output() -> None:
    mean, var, y = make_regression(SEED, 30, 1)
    assert M.regression_metrics(mean, var, y.squeeze(1)) == M.regression_metrics(mean, var, y)


@pytest.mark.parametrize(
    ("level", "key"),
    [(0.5, "coverage_50"), (0.9, "coverage_90"), (0.95, "coverage_95"), (0.975, "coverage_97_5")],
)
def test_coverage_key(level: float, key: str) -> None:
    assert M.coverage_key(level) == key


# ---------------------------------------------------------------------------------------------
# Validation: every error says what was expected and what was got
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        pytest.param([[2.0, -1.0]], [0], r"probs: expected values in \[0, 1\]", id="logits"),
        pytest.param([[0.2, 0.2]], [0], r"expected rows summing to 1", id="not-normalised"),
        pytest.param([0.2, 0.8], [0], r"expected class probabilities of shape \(N, C\)", id="1d"),
        pytest.param([[1.0]], [0], r"C >= 2", id="one-class"),
        pytest.param(torch.empty(0, 3), torch.empty(0), r"at least one sample", id="empty"),
        pytest.param([[float("nan"), 1.0]], [0], r"expected finite values, got 1", id="nan"),
        pytest.param([[0.5, 0.5]], [0, 1], r"labels: expected shape \(1,\)", id="label-shape"),
        pytest.param([[0.5, 0.5]], [2], r"labels in \[0, 1\] for 2 classes, got", id="range"),
        pytest.param([[0.5, 0.5]], [0.5], r"expected integer class labels", id="float-labels"),
        pytest.param([[0.5, 0.5]], [True], r"expected integer class labels", id="bool-labels"),
    ],
)
def test_classification_validation(probs, labels, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        M.classification_metrics(torch.as_tensor(probs), torch.as_tensor(labels))


def test_integral_float_labels_are_accepted() -> None:
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    assert M.accuracy(probs, torch.tensor([1.0, 0.0])) == 1.0


@pytest.mark.parametrize("n_bins", [0, -1, 2.5, True])
def test_bad_n_bins(n_bins) -> None:
    with pytest.raises(BadInputError, match="n_bins: expected a positive integer"):
        M.ece(torch.tensor([[0.5, 0.5]]), torch.tensor([0]), n_bins=n_bins)


def test_regression_validation() -> None:
    mean, var, y = make_regression(SEED, 5, 2)
    with pytest.raises(BadInputError, match="var: expected strictly positive"):
        M.gaussian_nll(mean, var * 0, y)
    with pytest.raises(BadInputError, match=r"var: expected the shape of mean \(5, 2\)"):
        M.crps_gaussian(mean, torch.diag_embed(var), y)
    with pytest.raises(BadInputError, match=r"y: expected shape \(5, 2\)"):
        M.rmse(mean, var, y[:, 0])
    with pytest.raises(BadInputError, match="y: expected finite values"):
        M.mae(mean, var, y.masked_fill(y > 0, float("inf")))
    with pytest.raises(BadInputError, match=r"level: expected a number in \(0, 1\), got 1.0"):
        M.coverage(mean, var, y, 1.0)
    with pytest.raises(BadInputError, match=r"levels: expected a number in \(0, 1\)"):
        M.regression_metrics(mean, var, y, levels=(0.5, 95))


def test_ood_validation() -> None:
    with pytest.raises(BadInputError, match="scores_out: expected a non-empty 1-D tensor"):
        M.auroc(torch.ones(3), torch.ones(0))
    with pytest.raises(BadInputError, match=r"tpr: expected a number in \(0, 1\]"):
        M.fpr_at_tpr(torch.ones(3), torch.ones(3), tpr=0.0)
