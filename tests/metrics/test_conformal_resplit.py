"""Conformal coverage over random calibration / test re-splits (`metrics.conformal_resplit`),
against brute-force loops and the Beta-binomial law of `metrics.coverage_band`."""

from __future__ import annotations

import math

import pytest
import torch

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics import conformal
from laplace_cli.metrics.conformal_resplit import resplit_coverage, resplit_permutations
from laplace_cli.metrics.coverage_band import coverage_band, covered_count_pmf
from laplace_cli.pipeline.uncertainty_tables import RowView, conformal_table


def _brute(cal: torch.Tensor, test: torch.Tensor, level: float, repeats: int, seed: int):
    """Per-split coverage by a Python loop: the single-split threshold on each re-split."""
    cal = cal.reshape(cal.shape[0], -1)
    test = test.reshape(test.shape[0], -1)
    n, m, d = cal.shape[0], test.shape[0], cal.shape[1]
    pooled = torch.cat([cal, test])
    out = []
    for perm in resplit_permutations(n + m, repeats, seed).tolist():
        hits = 0
        for col in range(d):
            q = conformal.conformal_quantile(pooled[perm[:n], col], level)
            hits += sum(1 for i in perm[n:] if float(pooled[i, col]) <= q)
        out.append(hits / (m * d))
    return out


@pytest.mark.parametrize(
    ("n", "m", "d", "level", "ties"),
    [
        (37, 23, 1, 0.9, False),
        (40, 31, 3, 0.8, True),
        (5, 7, 1, 0.9, False),
        (99, 10, 1, 0.9, False),
    ],
)
def test_matches_a_brute_force_loop_exactly(n, m, d, level, ties):
    g = torch.Generator().manual_seed(n + m)
    cal = torch.rand(n, d, generator=g, dtype=torch.float64)
    test = torch.rand(m, d, generator=g, dtype=torch.float64)
    if ties:  # few distinct values: q̂ lands on ties, ≤ must count them
        cal, test = (cal * 4).floor(), (test * 4).floor()
    got = resplit_coverage(cal.squeeze(1) if d == 1 else cal, test, level, repeats=60, seed=7)
    want = _brute(cal, test, level, 60, 7)
    assert got.coverages.tolist() == want
    assert got.mean == pytest.approx(sum(want) / len(want), abs=1e-15)
    mu = sum(want) / len(want)
    assert got.sd == pytest.approx(math.sqrt(sum((c - mu) ** 2 for c in want) / 59), rel=1e-12)
    if n == 5:  # k = ⌈6 · 0.9⌉ = 6 > n: q̂ = +∞, every set holds every label
        assert want == [1.0] * 60


def test_permutations_are_permutations_and_seeded():
    p = resplit_permutations(50, 20, seed=3)
    assert torch.equal(p.sort(1).values, torch.arange(50).expand(20, 50))
    assert torch.equal(p, resplit_permutations(50, 20, seed=3))
    assert not torch.equal(p, resplit_permutations(50, 20, seed=4))
    assert len({tuple(r) for r in p.tolist()}) == 20


def _pmf_moments(n: int, m: int, level: float) -> tuple[float, float]:
    pmf = covered_count_pmf(n, m, level)
    mean = sum(x / m * p for x, p in enumerate(pmf))
    var = sum((x / m - mean) ** 2 * p for x, p in enumerate(pmf))
    return mean, math.sqrt(var)


def test_exchangeable_scores_give_the_level_and_the_beta_binomial_spread():
    g = torch.Generator().manual_seed(0)
    n = m = 360
    cal, test = torch.randn(n, generator=g), torch.randn(m, generator=g)
    r = resplit_coverage(cal, test, 0.9, repeats=1000, seed=1)
    mean, sd = _pmf_moments(n, m, 0.9)
    k = conformal.conformal_rank(n, 0.9)
    assert mean == pytest.approx(k / (n + 1), abs=1e-9)  # the law's mean is k / (n + 1)
    assert abs(r.mean - mean) < 4 * sd / math.sqrt(1000)
    assert abs(r.mean - 0.9) < 0.005
    assert r.sd == pytest.approx(sd, rel=0.1)
    low, high = coverage_band(n, m, 0.9)
    inside = float(((r.coverages >= low) & (r.coverages <= high)).double().mean())
    assert 0.93 <= inside <= 0.99


@pytest.mark.parametrize(("n", "level"), [(49, 0.56), (24, 0.28), (99, 0.07)])
def test_band_law_uses_the_procedures_rank(n, level):
    # (n + 1)·level lands a hair above an integer in floating point for these: a plain ceil
    # would give the band a rank one above the one conformal_quantile uses.
    k = conformal.conformal_rank(n, level)
    assert k == round((n + 1) * level)
    mean, _ = _pmf_moments(n, n, level)
    assert mean == pytest.approx(k / (n + 1), abs=1e-9)


def test_a_shifted_test_split_misses_its_band_but_not_the_resplit_mean():
    # Re-splitting pools the rows, which makes them exchangeable: the re-split mean checks the
    # procedure, while the single split's coverage against its band is what sees the shift.
    g = torch.Generator().manual_seed(1)
    n = m = 300
    cal, test = torch.randn(n, generator=g), torch.randn(m, generator=g) + 1.0
    single = float((test <= conformal.conformal_quantile(cal, 0.9)).double().mean())
    low, _ = coverage_band(n, m, 0.9)
    assert single < low - 0.1
    r = resplit_coverage(cal, test, 0.9, repeats=500, seed=0)
    assert abs(r.mean - 0.9) < 0.006


def test_tied_scores_over_cover():
    # Scores with few values (saturated probabilities) make q̂ a tie: coverage well above level.
    g = torch.Generator().manual_seed(2)
    cal = torch.randint(0, 3, (200,), generator=g).double()
    test = torch.randint(0, 3, (200,), generator=g).double()
    r = resplit_coverage(cal, test, 0.5, repeats=200, seed=0)
    assert r.mean > 0.6


def test_bad_input():
    with pytest.raises(BadInputError, match="columns"):
        resplit_coverage(torch.rand(5, 2), torch.rand(5, 3), 0.9)
    with pytest.raises(BadInputError, match="finite"):
        resplit_coverage(torch.tensor([0.1, math.nan]), torch.rand(3), 0.9)
    with pytest.raises(BadInputError, match="at least 1"):
        resplit_coverage(torch.rand(5), torch.rand(5), 0.9, repeats=0)
    with pytest.raises(BadInputError, match="level"):
        resplit_coverage(torch.rand(5), torch.rand(5), 1.5)
    with pytest.raises(BadInputError, match="shape"):
        resplit_coverage(torch.rand(5), torch.rand(5), 0.9, permutations=torch.zeros(3, 9))


def test_given_permutations_are_the_seeded_ones():
    cal, test = torch.rand(30, dtype=torch.float64), torch.rand(20, dtype=torch.float64)
    perms = resplit_permutations(50, 25, seed=9)
    a = resplit_coverage(cal, test, 0.85, repeats=25, seed=9)
    b = resplit_coverage(cal, test, 0.85, permutations=perms)
    assert torch.equal(a.coverages, b.coverages)


# -- the evaluate table: re-split columns against the full set / interval machinery ------------


def _aps_score(p: list[float], y: int, u: float) -> float:
    return sum(v for v in p if v > p[y]) + u * p[y]


def test_classification_table_matches_sets_on_every_resplit():
    g = torch.Generator().manual_seed(5)
    nv, nt, c, seed, level, reps = 60, 45, 4, 11, 0.8, 40
    logits = torch.randn(nv + nt, c, generator=g, dtype=torch.float64) * 2
    probs = torch.softmax(logits, -1)
    y = torch.multinomial(probs, 1, generator=g).squeeze(1)
    views_v, views_t = {"map": RowView(probs=probs[:nv])}, {"map": RowView(probs=probs[nv:])}
    table = conformal_table(
        Likelihood.CLASSIFICATION, views_v, y[:nv], views_t, y[nv:], level, seed, resplits=reps
    )
    # The single split's uniforms: calibration from seed, test from seed + 1.
    u = torch.cat(
        [
            torch.rand(nv, generator=torch.Generator().manual_seed(seed), dtype=torch.float64),
            torch.rand(nt, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64),
        ]
    )
    perms = resplit_permutations(nv + nt, reps, seed + 2)
    for score in ("lac", "aps"):
        covs = []
        for perm in perms:
            cal, test = perm[:nv], perm[nv:]
            if score == "lac":
                s = [1.0 - float(probs[i, y[i]]) for i in cal]
            else:
                s = [_aps_score(probs[i].tolist(), int(y[i]), float(u[i])) for i in cal]
            q = conformal.conformal_quantile(torch.tensor(s), level)
            sets = conformal.class_sets(probs[test], q, score, uniforms=u[test])
            covs.append(conformal.set_metrics(sets, y[test])["coverage"])
        cell = table[f"map {score}"]
        mean = sum(covs) / reps
        assert cell["resplit_coverage"] == pytest.approx(mean, abs=1e-12)
        sd = math.sqrt(sum((v - mean) ** 2 for v in covs) / (reps - 1))
        assert cell["resplit_sd"] == pytest.approx(sd, rel=1e-9)


def test_regression_and_label_tables_match_intervals_on_every_resplit():
    g = torch.Generator().manual_seed(6)
    nv, nt, seed, level, reps = 50, 40, 3, 0.9, 30
    mean = torch.randn(nv + nt, 2, generator=g, dtype=torch.float64)
    var = torch.rand(nv + nt, 2, generator=g, dtype=torch.float64) + 0.2
    y = mean + torch.randn(nv + nt, 2, generator=g, dtype=torch.float64) * var.sqrt()
    views = [
        {"laplace": RowView(mean=mean[s], var=var[s])} for s in (slice(0, nv), slice(nv, None))
    ]
    table = conformal_table(
        Likelihood.REGRESSION, views[0], y[:nv], views[1], y[nv:], level, seed, resplits=reps
    )
    covs = []
    for perm in resplit_permutations(nv + nt, reps, seed + 2):
        cal, test = perm[:nv], perm[nv:]
        s = ((y[cal] - mean[cal]).abs() / var[cal].sqrt()).tolist()
        q = [conformal.conformal_quantile(torch.tensor([r[d] for r in s]), level) for d in (0, 1)]
        lo, hi = conformal.regression_intervals(mean[test], var[test].sqrt(), q)
        covs.append(conformal.interval_metrics(lo, hi, y[test])["coverage"])
    assert table["laplace normalised"]["resplit_coverage"] == pytest.approx(
        sum(covs) / reps, abs=1e-12
    )

    p = torch.sigmoid(torch.randn(nv + nt, 3, generator=g, dtype=torch.float64))
    t = torch.bernoulli(p, generator=g)
    views = [{"map": RowView(probs=p[s])} for s in (slice(0, nv), slice(nv, None))]
    table = conformal_table(
        Likelihood.BINARY, views[0], t[:nv], views[1], t[nv:], level, seed, resplits=reps
    )
    covs = []
    for perm in resplit_permutations(nv + nt, reps, seed + 2):
        cal, test = perm[:nv], perm[nv:]
        s = conformal.label_lac_scores(p[cal], t[cal])
        sets = conformal.label_sets(p[test], conformal.interval_thresholds(s, level))
        covs.append(conformal.label_set_metrics(sets, t[test])[0]["coverage"])
    assert table["map lac"]["resplit_coverage"] == pytest.approx(sum(covs) / reps, abs=1e-12)
