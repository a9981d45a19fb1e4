"""AUPR-in / AUPR-out / AUROC / FPR@95 against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from laplace_cli.metrics.ood import aupr_in, aupr_out, average_precision, ood_detection_metrics


@pytest.mark.parametrize("ties", [False, True])
def test_against_sklearn(ties: bool) -> None:
    g = torch.Generator().manual_seed(5)
    s_in = torch.randn(300, generator=g, dtype=torch.float64)
    s_out = torch.randn(120, generator=g, dtype=torch.float64) + 1.0
    if ties:
        s_in, s_out = s_in.round(), s_out.round()
    y = np.r_[np.zeros(300), np.ones(120)]
    s = np.r_[s_in.numpy(), s_out.numpy()]
    out = ood_detection_metrics(s_in, s_out)
    assert out["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert out["aupr_out"] == pytest.approx(average_precision_score(y, s))
    assert out["aupr_in"] == pytest.approx(average_precision_score(1 - y, -s))
    fpr, tpr, _ = roc_curve(y, s)
    assert out["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)])
    assert aupr_in(s_in, s_out) == out["aupr_in"] and aupr_out(s_in, s_out) == out["aupr_out"]


def test_average_precision_perfect_and_no_positive() -> None:
    assert average_precision(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 1, 0])) == 1.0
    assert np.isnan(average_precision(torch.tensor([1.0, 2.0]), torch.tensor([0, 0])))
