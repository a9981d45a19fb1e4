"""Split-conformal coverage averaged over random calibration / test re-splits.

One fixed split gives one draw of the test coverage: with n calibration and m test rows it
scatters around the level with sd ≈ 1.6–2.2 points at n = m = 360 (`metrics.coverage_band`).
The standard check of a conformal procedure (Angelopoulos & Bates, "A Gentle Introduction to
Conformal Prediction and Distribution-Free Uncertainty Quantification", 2021, §3.2 "checking
for correct coverage") pools the calibration and test rows, draws R random re-splits of the same
sizes, and averages the test coverage over them.

Coverage only needs each row's conformity score of its TRUE label / target: a test row is
covered ⇔ its score ≤ q̂ (LAC: 1 − p_y ≤ q̂; randomised APS: the row's score with its own
uniform draw; regression: |y − μ|/σ ≤ q̂). q̂ is the k-th smallest calibration score with k from
`metrics.conformal.conformal_rank`, the rule the single split uses.

What the re-split mean does and does not say: re-splitting at random makes the pooled rows
exchangeable by construction, so for distinct scores the re-split coverage has exactly the
Beta-binomial law of `coverage_band` whatever the scores are (the coverage depends on the ranks
only, and a random split gives uniform ranks): mean k/(n + 1). A mean off the level therefore
points at the procedure — ties (over-coverage), a wrong rank rule, scores that do not decide
coverage — not at a shift between the original validation and test splits; the single-split
coverage against its band is the check of that shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.conformal import conformal_rank

__all__ = ["ResplitCoverage", "resplit_coverage", "resplit_permutations"]

#: Re-splits per conformal row of `evaluate`.
DEFAULT_RESPLITS = 1000

# Elements of one (re-splits × rows) block: bounds the memory of the gathers (~64 MiB float64).
_BLOCK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class ResplitCoverage:
    """Test coverage over random re-splits: `coverages` (R,) one per re-split (averaged over
    output columns / labels), their `mean` and sample standard deviation `sd`."""

    coverages: Tensor
    mean: float
    sd: float


def resplit_permutations(n_rows: int, repeats: int, seed: int) -> Tensor:
    """(repeats, n_rows) int64: one uniformly random permutation of the pooled rows per re-split;
    the first n_calibration entries of a row are its calibration rows, the rest its test rows.

    Drawn as the argsort of uniforms from ``torch.Generator().manual_seed(seed)``, so the same
    seed gives the same re-splits for every conformal row (paired comparisons)."""
    if repeats < 1:
        raise BadInputError(f"conformal re-splits: expected at least 1, got {repeats}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.argsort(torch.rand(repeats, n_rows, generator=g, dtype=torch.float64), dim=1)


def resplit_coverage(
    calibration_scores: Tensor,
    test_scores: Tensor,
    level: float,
    *,
    repeats: int = DEFAULT_RESPLITS,
    seed: int = 0,
    permutations: Tensor | None = None,
) -> ResplitCoverage:
    """Coverage at `level` over `repeats` random re-splits of the pooled rows into
    len(calibration_scores) calibration and len(test_scores) test rows.

    Args:
        calibration_scores: (n,) or (n, D) true-label / target conformity scores of the
            calibration rows; with D columns each column gets its own threshold (per label /
            per output) and a re-split's coverage is the mean over columns, as in the single
            split's tables.
        test_scores: (m,) or (m, D) the same scores of the test rows.
        level: target coverage in (0, 1).
        repeats: number of re-splits R.
        seed: seeds `resplit_permutations`.
        permutations: (R, n + m) re-splits from `resplit_permutations` to use instead of
            drawing them (`repeats` and `seed` are then ignored): drawing is the slow part, and
            several scores of the same rows can share one draw.
    """
    cal = _columns(calibration_scores, "calibration")
    test = _columns(test_scores, "test")
    if cal.shape[1] != test.shape[1]:
        raise BadInputError(
            f"conformal re-splits: calibration scores have {cal.shape[1]} columns, test scores "
            f"{test.shape[1]}; pass the same outputs / labels for both"
        )
    n, m = cal.shape[0], test.shape[0]
    k = conformal_rank(n, level)
    pooled = torch.cat([cal, test])
    if permutations is None:
        perms = resplit_permutations(n + m, repeats, seed)
    else:
        perms = torch.as_tensor(permutations, dtype=torch.int64)
        if perms.ndim != 2 or perms.shape[1] != n + m:
            raise BadInputError(
                f"conformal re-splits: expected permutations of shape (R, {n + m}), got "
                f"{tuple(perms.shape)}"
            )
    repeats = perms.shape[0]
    covered = torch.zeros(repeats, dtype=torch.float64)
    step = max(1, _BLOCK_ELEMENTS // (n + m))
    for start in range(0, repeats, step):
        block = perms[start : start + step]
        for d in range(pooled.shape[1]):
            s = pooled[:, d][block]  # (r, n + m): a re-split's rows, calibration first
            if k > n:  # q̂ = +∞: every test row is covered
                hits = torch.full((block.shape[0],), float(m), dtype=torch.float64)
            else:
                q = torch.kthvalue(s[:, :n], k, dim=1).values  # k-th smallest = sort()[k − 1]
                hits = (s[:, n:] <= q.unsqueeze(1)).sum(1).to(torch.float64)
            covered[start : start + step] += hits
    coverages = covered / (m * pooled.shape[1])
    sd = float(coverages.std()) if repeats > 1 else math.nan
    return ResplitCoverage(coverages=coverages, mean=float(coverages.mean()), sd=sd)


def _columns(scores: Tensor, name: str) -> Tensor:
    s = torch.as_tensor(scores, dtype=torch.float64)
    s = s.unsqueeze(1) if s.ndim == 1 else s.reshape(s.shape[0], -1)
    if s.shape[0] == 0:
        raise BadInputError(f"conformal re-splits: no {name} rows")
    if not bool(torch.isfinite(s).all()):
        raise BadInputError(f"conformal re-splits: {name} scores must be finite, got NaN/Inf")
    return s
