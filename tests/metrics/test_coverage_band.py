"""The coverage band of split conformal against a seeded simulation of the procedure itself."""

from __future__ import annotations

import math

import pytest
import torch

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.conformal import conformal_quantile
from laplace_cli.metrics.coverage_band import coverage_band, covered_count_pmf


def _simulated_counts(n: int, m: int, level: float, trials: int, seed: int) -> torch.Tensor:
    """Covered test rows per trial: continuous exchangeable scores, the library's quantile."""
    g = torch.Generator().manual_seed(seed)
    counts = []
    for _ in range(trials):
        cal = torch.rand(n, generator=g, dtype=torch.float64)
        test = torch.rand(m, generator=g, dtype=torch.float64)
        q = conformal_quantile(cal, level)
        counts.append(int((test <= q).sum()))
    return torch.tensor(counts)


@pytest.mark.parametrize("n,m,level", [(40, 30, 0.9), (25, 50, 0.8)])
def test_pmf_matches_a_simulation_of_split_conformal(n, m, level):
    pmf = torch.tensor(covered_count_pmf(n, m, level), dtype=torch.float64)
    counts = _simulated_counts(n, m, level, trials=6000, seed=0)
    empirical = torch.bincount(counts, minlength=m + 1).double() / counts.numel()
    # total variation between the formula and 6000 draws: ~0.04 expected from noise alone
    assert 0.5 * (pmf - empirical).abs().sum() < 0.07
    k = math.ceil((n + 1) * level)
    mean = float((pmf * torch.arange(m + 1)).sum())
    assert mean == pytest.approx(m * k / (n + 1), rel=1e-9)  # E[coverage] = k / (n + 1)
    assert float(pmf.sum()) == pytest.approx(1.0, abs=1e-12)


def test_band_holds_its_confidence_in_simulation():
    n, m, level = 60, 60, 0.9
    low, high = coverage_band(n, m, level, confidence=0.9)
    cov = _simulated_counts(n, m, level, trials=4000, seed=1).double() / m
    inside = float(((cov >= low) & (cov <= high)).double().mean())
    assert inside >= 0.88  # ≥ 0.90 by construction, minus simulation noise
    assert low < level < high


def test_band_of_the_digits_splits():
    # n = m = 360 at 0.9 (the digits sample models' val / test splits): about ±4.4 points
    low, high = coverage_band(360, 360, 0.9)
    assert 0.850 < low < 0.860 and 0.940 < high < 0.950
    # it narrows as the splits grow
    low2, high2 = coverage_band(5000, 5000, 0.9)
    assert high2 - low2 < (high - low) / 3


def test_threshold_beyond_the_calibration_rows_covers_everything():
    assert coverage_band(5, 10, 0.95) == (1.0, 1.0)  # k = 6 > n = 5: q̂ = +∞


@pytest.mark.parametrize("args", [(0, 10, 0.9), (10, 0, 0.9), (10, 10, 1.0), (10, 10, 0.0)])
def test_bad_arguments_are_refused(args):
    with pytest.raises(BadInputError):
        coverage_band(*args)
    with pytest.raises(BadInputError):
        coverage_band(10, 10, 0.9, confidence=1.0)
