"""Split conformal: brute-force quantile, set / interval construction and coverage."""

from __future__ import annotations

import math

import pytest
import torch

from laplace_cli.metrics.conformal import (
    aps_scores,
    class_sets,
    conformal_quantile,
    interval_metrics,
    interval_scores,
    interval_thresholds,
    lac_scores,
    regression_intervals,
    set_metrics,
)


def _brute_quantile(scores: list[float], level: float) -> float:
    """The smallest calibration score s with #{s_i <= s} >= (n + 1) level (inf if none)."""
    n = len(scores)
    for s in sorted(scores):
        if sum(1 for v in scores if v <= s) >= (n + 1) * level - 1e-9:
            return s
    return math.inf


@pytest.mark.parametrize("n", [1, 9, 10, 99, 250])
@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95])
def test_quantile_matches_brute_force(n: int, level: float) -> None:
    g = torch.Generator().manual_seed(n)
    s = torch.rand(n, generator=g, dtype=torch.float64)
    assert conformal_quantile(s, level) == _brute_quantile(s.tolist(), level)


def test_quantile_exact_counts() -> None:
    s = torch.arange(1.0, 100.0)  # n = 99, (n + 1) 0.9 = 90 exactly
    assert conformal_quantile(s, 0.9) == 90.0
    assert conformal_quantile(torch.arange(5.0), 0.9) == math.inf  # k = 6 > n


def _brute_aps(p: list[float], k: int, u: float) -> float:
    return sum(v for v in p if v > p[k]) + u * p[k]


def test_scores_match_definitions() -> None:
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(30, 5, generator=g, dtype=torch.float64), 1)
    p[0] = torch.tensor([0.4, 0.2, 0.2, 0.1, 0.1], dtype=torch.float64)  # ties
    y = torch.randint(0, 5, (30,), generator=g)
    y[0] = 1
    assert torch.allclose(lac_scores(p, y), 1 - p[torch.arange(30), y])
    aps = aps_scores(p, y, torch.Generator().manual_seed(9))
    u = torch.rand(30, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref = [_brute_aps(p[i].tolist(), int(y[i]), float(u[i])) for i in range(30)]
    assert aps.tolist() == pytest.approx(ref)
    # a label is in the set exactly when its own score is within the threshold
    sets = class_sets(p, 0.6, "aps", torch.Generator().manual_seed(9))
    for i in range(30):
        for k in range(5):
            assert bool(sets[i, k]) == (_brute_aps(p[i].tolist(), k, float(u[i])) <= 0.6)


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from the predicted probabilities (a calibrated model)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(2 * torch.randn(n, 6, generator=g, dtype=torch.float64), 1)
    y = torch.multinomial(p, 1, generator=g).squeeze(1)
    return p, y


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_classification_coverage_near_nominal(score: str) -> None:
    p_cal, y_cal = _synthetic(2000, 0)
    p_test, y_test = _synthetic(4000, 1)
    fn = (
        lac_scores
        if score == "lac"
        else (lambda p, y: aps_scores(p, y, torch.Generator().manual_seed(2)))
    )
    q = conformal_quantile(fn(p_cal, y_cal), 0.9)
    sets = class_sets(p_test, q, score, torch.Generator().manual_seed(3))
    out = set_metrics(sets, y_test)
    assert abs(out["coverage"] - 0.9) < 0.02
    assert 1 <= out["size"] < 6


def test_regression_intervals_coverage_and_normalised_width() -> None:
    g = torch.Generator().manual_seed(4)
    std = 0.2 + torch.rand(6000, 1, generator=g, dtype=torch.float64) * 3  # heteroscedastic
    mu = torch.randn(6000, 1, generator=g, dtype=torch.float64)
    y = mu + std * torch.randn(6000, 1, generator=g, dtype=torch.float64)
    cal, test = slice(0, 2000), slice(2000, None)
    q_norm = interval_thresholds(interval_scores(mu[cal], std[cal], y[cal]), 0.9)
    q_abs = interval_thresholds(interval_scores(mu[cal], torch.ones_like(std[cal]), y[cal]), 0.9)
    norm = interval_metrics(*regression_intervals(mu[test], std[test], q_norm), y[test])
    absr = interval_metrics(
        *regression_intervals(mu[test], torch.ones_like(std[test]), q_abs), y[test]
    )
    assert abs(norm["coverage"] - 0.9) < 0.02 and abs(absr["coverage"] - 0.9) < 0.02
    assert q_norm[0] == pytest.approx(1.645, abs=0.1)  # the Gaussian 90 % quantile
    lo, hi = regression_intervals(mu[test], std[test], q_norm)
    assert torch.allclose(hi - lo, 2 * q_norm[0] * std[test])
