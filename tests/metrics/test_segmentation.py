"""Pixel metrics of dense predictions against sklearn and per-pixel loops."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import jaccard_score

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics.segmentation import dense_rows, segmentation_metrics


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.randn(4, 3, 5, 6, generator=g, dtype=torch.float64).softmax(1)
    labels = torch.randint(0, 3, (4, 5, 6), generator=g)
    labels[1, 2:, :] = -100
    return probs, labels


def test_metrics_are_those_of_the_unmasked_pixels():
    probs, labels = data()
    m = segmentation_metrics(probs, labels)
    # Loops over the pixels, written out.
    rows, ys = [], []
    for b in range(4):
        for i in range(5):
            for j in range(6):
                if labels[b, i, j] != -100:
                    rows.append(probs[b, :, i, j])
                    ys.append(int(labels[b, i, j]))
    assert m["n_positions"] == len(ys) == 4 * 30 - 18
    nll = -sum(math.log(float(r[y])) for r, y in zip(rows, ys)) / len(ys)
    assert m["nll"] == pytest.approx(nll, rel=1e-12)
    acc = sum(int(r.argmax()) == y for r, y in zip(rows, ys)) / len(ys)
    assert m["acc"] == pytest.approx(acc)
    brier = sum(
        float(((r - torch.nn.functional.one_hot(torch.tensor(y), 3)) ** 2).sum())
        for r, y in zip(rows, ys)
    ) / len(ys)
    assert m["brier"] == pytest.approx(brier, rel=1e-12)
    # Pixel ECE: 15 equal-width bins of the top-class confidence over all pixels.
    conf = torch.stack([r.max() for r in rows])
    hit = torch.tensor([float(int(r.argmax()) == y) for r, y in zip(rows, ys)], dtype=torch.float64)
    ece = 0.0
    for k in range(15):
        lo, hi = k / 15, (k + 1) / 15
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += float(sel.sum()) / len(ys) * abs(float(conf[sel].mean() - hit[sel].mean()))
    assert m["ece"] == pytest.approx(ece, abs=1e-12)
    pred = [int(r.argmax()) for r in rows]
    present = sorted(set(pred) | set(ys))
    assert m["miou"] == pytest.approx(
        jaccard_score(ys, pred, labels=present, average="macro"), rel=1e-12
    )


def test_absent_class_is_left_out_of_mean_iou():
    probs = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    probs[:, 0] = 1.0  # predicts class 0 everywhere
    labels = torch.tensor([[[0, 0], [1, 0]]])
    # class 0: inter 3, union 4; class 1: inter 0, union 1; class 2 never occurs.
    assert segmentation_metrics(probs, labels)["miou"] == pytest.approx((0.75 + 0.0) / 2)


def test_bad_shapes_and_all_masked():
    probs, labels = data()
    with pytest.raises(BadInputError, match="batch, classes"):
        dense_rows(probs, labels[:, :, :5])
    with pytest.raises(BadInputError, match="every position is masked"):
        dense_rows(probs, torch.full_like(labels, -100))
