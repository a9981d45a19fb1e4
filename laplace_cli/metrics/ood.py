"""Out-of-distribution detection metrics beyond AUROC: average precision with either class as
the positive one, and the table row `ood_detection_metrics` used by `laplace evaluate`.

Scores follow "higher = more likely OOD" (as in `laplace_cli.metrics.classification`).
AUPR-out takes the OOD rows as positives and ranks by the score; AUPR-in takes the
in-distribution rows as positives and ranks by minus the score. Average precision is the
step-wise sum Σ_t (R_t − R_{t−1}) P_t over the distinct thresholds t (tied scores form one
step), the definition of scikit-learn's `average_precision_score`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace_cli.metrics.checks import check_scores
from laplace_cli.metrics.classification import auroc, fpr_at_tpr

__all__ = ["average_precision", "aupr_in", "aupr_out", "ood_detection_metrics"]


def average_precision(scores: Tensor, positive: Tensor) -> float:
    """Average precision of ranking `positive` rows first by decreasing `scores`.

    Args:
        scores: (N,) scores, higher = more likely positive.
        positive: (N,) booleans; at least one must be true.
    """
    s = check_scores(scores, "scores")
    pos = torch.as_tensor(positive).reshape(-1).to(torch.bool).to(s.device)
    n_pos = int(pos.sum())
    if n_pos == 0:
        return float("nan")
    order = torch.argsort(s, descending=True, stable=True)
    s_sorted, pos_sorted = s[order], pos[order].to(torch.float64)
    tp = torch.cumsum(pos_sorted, 0)
    # Thresholds at each distinct score: the last row of every tie group.
    last = torch.ones_like(s_sorted, dtype=torch.bool)
    last[:-1] = s_sorted[1:] != s_sorted[:-1]
    kept = torch.arange(1, s.numel() + 1, dtype=torch.float64, device=s.device)[last]
    tp = tp[last]
    precision, recall = tp / kept, tp / n_pos
    d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((d_recall * precision).sum())


def aupr_out(scores_in: Tensor, scores_out: Tensor) -> float:
    """Average precision with the OOD rows as positives."""
    s_in, s_out = check_scores(scores_in, "scores_in"), check_scores(scores_out, "scores_out")
    s = torch.cat([s_in, s_out.to(s_in.device)])
    pos = torch.cat(
        [torch.zeros_like(s_in, dtype=torch.bool), torch.ones_like(s_out, dtype=torch.bool)]
    )
    return average_precision(s, pos)


def aupr_in(scores_in: Tensor, scores_out: Tensor) -> float:
    """Average precision with the in-distribution rows as positives (ranked by −score)."""
    s_in, s_out = check_scores(scores_in, "scores_in"), check_scores(scores_out, "scores_out")
    s = torch.cat([-s_in, -s_out.to(s_in.device)])
    pos = torch.cat(
        [torch.ones_like(s_in, dtype=torch.bool), torch.zeros_like(s_out, dtype=torch.bool)]
    )
    return average_precision(s, pos)


def ood_detection_metrics(scores_in: Tensor, scores_out: Tensor) -> dict[str, float]:
    """``{"auroc", "aupr_in", "aupr_out", "fpr95"}`` (higher score = more likely OOD)."""
    return {
        "auroc": auroc(scores_in, scores_out),
        "aupr_in": aupr_in(scores_in, scores_out),
        "aupr_out": aupr_out(scores_in, scores_out),
        "fpr95": fpr_at_tpr(scores_in, scores_out, 0.95),
    }
