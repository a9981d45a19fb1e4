"""Selective prediction metrics against sorted-loop references."""

from __future__ import annotations

import math

import pytest
import torch

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.selective import (
    aurc,
    risk_at_coverage,
    risk_coverage_curve,
    selective_metrics,
)


def _loop_aurc_distinct(conf: list[float], loss: list[float]) -> float:
    """Geifman's AURC: the mean over k of the risk of the k most confident rows."""
    order = sorted(range(len(conf)), key=lambda i: -conf[i])
    total, acc = 0.0, 0.0
    for k, i in enumerate(order, start=1):
        acc += loss[i]
        total += acc / k
    return total / len(conf)


def _loop_aurc_thresholds(conf: list[float], loss: list[float]) -> float:
    """Area of the step curve over the distinct thresholds, by brute force."""
    n, area, prev = len(conf), 0.0, 0.0
    for t in sorted(set(conf), reverse=True):
        kept = [loss[i] for i in range(n) if conf[i] >= t]
        cov = len(kept) / n
        area += (cov - prev) * sum(kept) / len(kept)
        prev = cov
    return area


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aurc_matches_sorted_loop(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    conf = torch.rand(200, generator=g, dtype=torch.float64)
    loss = (torch.rand(200, generator=g) > conf).double()  # errors more likely when unsure
    assert aurc(conf, loss) == pytest.approx(_loop_aurc_distinct(conf.tolist(), loss.tolist()))
    sq = torch.randn(200, generator=g, dtype=torch.float64) ** 2  # a regression loss
    assert aurc(conf, sq) == pytest.approx(_loop_aurc_distinct(conf.tolist(), sq.tolist()))


def test_aurc_with_ties_matches_threshold_loop_and_ignores_row_order() -> None:
    g = torch.Generator().manual_seed(3)
    conf = torch.randint(0, 5, (100,), generator=g).double()  # many ties
    loss = torch.randint(0, 2, (100,), generator=g).double()
    ref = _loop_aurc_thresholds(conf.tolist(), loss.tolist())
    assert aurc(conf, loss) == pytest.approx(ref)
    perm = torch.randperm(100, generator=g)
    assert aurc(conf[perm], loss[perm]) == pytest.approx(ref)
    curve = risk_coverage_curve(conf, loss)
    assert curve.coverage[-1] == 1.0 and len(curve.coverage) == len(set(conf.tolist()))
    assert curve.risk[-1] == pytest.approx(float(loss.mean()))


def test_oracle_and_inverted_rankings() -> None:
    loss = torch.tensor([0.0] * 8 + [1.0] * 2)
    good = -loss + 0.01 * torch.arange(10)  # errors least confident
    bad = loss.clone()  # errors most confident
    assert aurc(good, loss) < aurc(bad, loss)
    assert risk_at_coverage(good, loss, 0.8) == 0.0
    assert risk_at_coverage(bad, loss, 0.2) == 1.0


def test_risk_at_coverage_matches_loop() -> None:
    g = torch.Generator().manual_seed(4)
    conf = torch.rand(101, generator=g, dtype=torch.float64)
    loss = torch.rand(101, generator=g, dtype=torch.float64)
    for cov in (0.1, 0.5, 0.8, 0.9, 1.0):
        k = math.ceil(cov * 101)
        idx = sorted(range(101), key=lambda i: -conf[i].item())[:k]
        assert risk_at_coverage(conf, loss, cov) == pytest.approx(
            sum(loss[i].item() for i in idx) / k
        )
    # exactly 90 rows of 100 at 0.9 (no floating-point overshoot to 91)
    conf100, loss100 = torch.arange(100.0, 0, -1), torch.tensor([0.0] * 90 + [1.0] * 10)
    assert risk_at_coverage(conf100, loss100, 0.9) == 0.0


def _loop_risk_tied(conf: list[float], loss: list[float], cov: float) -> float:
    """Mean over every order of the tied rows, by enumerating the groups in a loop."""
    n, k = len(conf), math.ceil(round(cov * len(conf), 9))
    taken, total = 0, 0.0
    for t in sorted(set(conf), reverse=True):
        group = [loss[i] for i in range(n) if conf[i] == t]
        use = min(len(group), k - taken)
        total += use * sum(group) / len(group)
        taken += use
        if taken == k:
            break
    return total / k


def test_risk_at_coverage_with_ties_is_order_free() -> None:
    g = torch.Generator().manual_seed(8)
    conf = torch.randint(0, 4, (50,), generator=g).double()
    loss = torch.rand(50, generator=g, dtype=torch.float64)
    for cov in (0.1, 0.33, 0.8, 0.9, 1.0):
        ref = _loop_risk_tied(conf.tolist(), loss.tolist(), cov)
        assert risk_at_coverage(conf, loss, cov) == pytest.approx(ref)
        perm = torch.randperm(50, generator=g)
        assert risk_at_coverage(conf[perm], loss[perm], cov) == pytest.approx(ref)
    # all rows tied (a constant-variance MAP): every coverage has the overall mean risk
    assert risk_at_coverage(torch.ones(50), loss, 0.8) == pytest.approx(float(loss.mean()))


def test_selective_metrics_keys_and_bad_input() -> None:
    conf, loss = torch.rand(50), (torch.rand(50) > 0.5).double()
    out = selective_metrics(conf, loss, accuracy=True)
    assert set(out) == {"aurc", "acc_at_80", "acc_at_90"}
    assert out["acc_at_80"] == pytest.approx(1 - risk_at_coverage(conf, loss, 0.8))
    with pytest.raises(BadInputError):
        aurc(torch.rand(3), torch.rand(4))
    with pytest.raises(BadInputError):
        risk_at_coverage(conf, loss, 0.0)
    with pytest.raises(BadInputError):
        aurc(torch.tensor([float("nan")]), torch.tensor([1.0]))
