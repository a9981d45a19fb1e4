"""Split conformal: brute-force quantile, set / interval construction and coverage."""

from __future__ import annotations

import math

import pytest
import torch

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.conformal import (
    aps_scores,
    class_sets,
    conformal_quantile,
    interval_metrics,
    interval_scores,
    interval_thresholds,
    label_lac_scores,
    label_set_metrics,
    label_sets,
    lac_scores,
    prediction_fields,
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


def test_aps_sets_with_given_uniforms_match_the_loop() -> None:
    g = torch.Generator().manual_seed(4)
    p = torch.softmax(torch.randn(25, 4, generator=g, dtype=torch.float64), 1)
    u = torch.rand(25, generator=g, dtype=torch.float64)
    sets = class_sets(p, 0.7, "aps", uniforms=u)
    fields = prediction_fields({"probs": p}, {"aps": 0.7}, u)["conformal_set"]
    for i in range(25):
        for k in range(4):
            member = _brute_aps(p[i].tolist(), k, float(u[i])) <= 0.7
            assert bool(sets[i, k]) == member and int(fields[i, k]) == int(member)
    with pytest.raises(BadInputError, match="one uniform per row"):
        class_sets(p, 0.7, "aps", uniforms=u[:3])
    with pytest.raises(BadInputError, match="uniform"):
        prediction_fields({"probs": p}, {"aps": 0.7})


def test_label_sets_match_a_loop() -> None:
    g = torch.Generator().manual_seed(5)
    p = torch.rand(40, 3, generator=g, dtype=torch.float64)
    y = (torch.rand(40, 3, generator=g) < p).to(torch.float64)
    scores = label_lac_scores(p, y)
    q = interval_thresholds(scores, 0.8)
    sets = label_sets(p, q)
    averaged, per_label = label_set_metrics(sets, y)
    fields = prediction_fields({"probs": p}, {"label_lac": q})
    for k in range(3):
        col = [1 - (p[i, k] if y[i, k] == 1 else 1 - p[i, k]).item() for i in range(40)]
        assert scores[:, k].tolist() == pytest.approx(col)
        assert q[k] == _brute_quantile(col, 0.8)
        covered = size = 0
        for i in range(40):
            members = {
                v for v, pv in ((0, 1 - p[i, k].item()), (1, p[i, k].item())) if 1 - pv <= q[k]
            }
            assert bool(sets[i, k, 0]) == (0 in members) == bool(fields["conformal_has_0"][i, k])
            assert bool(sets[i, k, 1]) == (1 in members) == bool(fields["conformal_has_1"][i, k])
            covered += int(y[i, k]) in members
            size += len(members)
        assert per_label[k] == pytest.approx({"coverage": covered / 40, "size": size / 40})
    assert averaged["coverage"] == pytest.approx(sum(m["coverage"] for m in per_label) / 3)
    # One label given as (N,): the fields keep that shape.
    one = prediction_fields({"probs": p[:, 0]}, {"label_lac": q[:1]})
    assert one["conformal_has_1"].shape == (40,)
    with pytest.raises(BadInputError, match="one per label"):
        label_sets(p, q[:2])
