"""How far a split-conformal coverage may honestly fall from its level on finite splits.

With n calibration rows, continuous scores (no ties) and exchangeable rows, the coverage of the
calibrated sets *given* the calibration split is Beta(k, n + 1 − k) distributed, where
k = ⌈(n + 1)·level⌉ (Vovk 2012; Angelopoulos & Bates 2021, §3.2). The coverage measured on m test
rows is then Binomial(m, coverage) / m, so the count of covered test rows is Beta-binomial:

    P(X = x) = C(m, x) · B(x + k, m − x + n + 1 − k) / B(k, n + 1 − k).

`coverage_band` returns the central `confidence` interval of X / m: the range a correct
conformal procedure lands in, e.g. [0.856, 0.942] for n = m = 360 at level 0.9. A measured
coverage outside it points at a real problem (a shift between calibration and test rows, ties,
a bug); inside it, the distance from the level is the sampling noise of the splits' sizes.
"""

from __future__ import annotations

import math

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.conformal import conformal_rank

__all__ = ["coverage_band", "covered_count_pmf"]


def covered_count_pmf(n_calibration: int, n_test: int, level: float) -> list[float]:
    """P(X = x) for x = 0..m: the number of covered test rows (Beta-binomial, see module doc)."""
    n, m = _check(n_calibration, n_test, level)
    k = conformal_rank(n, level)  # the rank rule of the procedure itself (float-safe ceil)
    if k > n:  # q̂ = +∞: every set holds every label
        return [0.0] * m + [1.0]
    a, b = float(k), float(n + 1 - k)
    log_beta_ab = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    log_pmf = [
        math.lgamma(m + 1)
        - math.lgamma(x + 1)
        - math.lgamma(m - x + 1)
        + math.lgamma(x + a)
        + math.lgamma(m - x + b)
        - math.lgamma(m + a + b)
        - log_beta_ab
        for x in range(m + 1)
    ]
    top = max(log_pmf)
    weights = [math.exp(v - top) for v in log_pmf]
    total = sum(weights)
    return [w / total for w in weights]


def coverage_band(
    n_calibration: int, n_test: int, level: float, confidence: float = 0.95
) -> tuple[float, float]:
    """(low, high): the central `confidence` interval of the test-split coverage X / m.

    low is the largest x/m with P(X < x) ≤ (1 − confidence)/2, high the smallest x/m with
    P(X > x) ≤ (1 − confidence)/2 (equal tails, at least `confidence` inside).
    """
    if not 0.0 < confidence < 1.0:
        raise BadInputError(f"confidence must be in (0, 1), got {confidence}")
    pmf = covered_count_pmf(n_calibration, n_test, level)
    m = len(pmf) - 1
    tail = (1.0 - confidence) / 2.0
    below, low = 0.0, 0
    for x, p in enumerate(pmf):
        if below + p > tail:
            low = x
            break
        below += p
    above, high = 0.0, m
    for x in range(m, -1, -1):
        if above + pmf[x] > tail:
            high = x
            break
        above += pmf[x]
    return low / m, high / m


def _check(n_calibration: int, n_test: int, level: float) -> tuple[int, int]:
    if int(n_calibration) < 1 or int(n_test) < 1:
        raise BadInputError(
            f"coverage band needs at least one calibration and one test row, got "
            f"{n_calibration} and {n_test}"
        )
    if not 0.0 < level < 1.0:
        raise BadInputError(f"conformal level must be in (0, 1), got {level}")
    return int(n_calibration), int(n_test)
