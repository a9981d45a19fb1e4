"""Binary / multi-label ECE and temperature scaling against direct references."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import minimize_scalar

from laplace_cli.metrics.binary import apply_binary_temperature, binary_ece, fit_binary_temperature


def _loop_ece(p: list[float], y: list[int], n_bins: int) -> float:
    bins: dict[int, list[tuple[float, float]]] = {}
    for pi, yi in zip(p, y, strict=True):
        conf = max(pi, 1 - pi)
        correct = float((pi > 0.5) == bool(yi)) if pi != 0.5 else float(yi == 0)
        b = min(n_bins - 1, max(0, int(-(-conf * n_bins // 1)) - 1))  # (lo, hi] bins
        bins.setdefault(b, []).append((conf, correct))
    n = len(p)
    return sum(
        len(v) / n * abs(sum(c for c, _ in v) / len(v) - sum(a for _, a in v) / len(v))
        for v in bins.values()
    )


def test_binary_ece_per_label_matches_loop() -> None:
    g = torch.Generator().manual_seed(6)
    p = torch.rand(400, 3, generator=g, dtype=torch.float64)
    y = (torch.rand(400, 3, generator=g, dtype=torch.float64) < p**2).long()  # over-confident
    mean, per = binary_ece(p, y, 10)
    ref = [_loop_ece(p[:, k].tolist(), y[:, k].tolist(), 10) for k in range(3)]
    assert per == pytest.approx(ref)
    assert mean == pytest.approx(sum(ref) / 3)


def _bce(z: torch.Tensor, y: torch.Tensor, t: float) -> float:
    return float(torch.nn.functional.binary_cross_entropy_with_logits(z / t, y.double()))


def test_temperatures_minimise_bce_as_scipy_does() -> None:
    g = torch.Generator().manual_seed(7)
    z = 3 * torch.randn(500, 2, generator=g, dtype=torch.float64)
    # label 0 follows sigmoid(z / 2) (T = 2), label 1 follows sigmoid(z / 0.5) (T = 0.5)
    y = torch.stack(
        [
            torch.rand(500, generator=g) < torch.sigmoid(z[:, 0] / 2),
            torch.rand(500, generator=g) < torch.sigmoid(z[:, 1] / 0.5),
        ],
        1,
    ).long()

    def best(zz: torch.Tensor, yy: torch.Tensor) -> float:  # scipy's bounded Brent on log T
        res = minimize_scalar(
            lambda lt: _bce(zz, yy, math.exp(lt)), bounds=(-4, 4), method="bounded",
            options={"xatol": 1e-8},
        )  # fmt: skip
        return math.exp(res.x)

    per = fit_binary_temperature(z, y, per_label=True)
    for k in range(2):
        assert float(per[k]) == pytest.approx(best(z[:, k], y[:, k]), rel=1e-4)
    assert float(per[0]) == pytest.approx(2.0, rel=0.3) and float(per[1]) == pytest.approx(
        0.5, rel=0.3
    )
    shared = fit_binary_temperature(z, y)
    assert float(shared[0]) == pytest.approx(best(z, y), rel=1e-4)
    p = apply_binary_temperature(z, per)
    assert torch.allclose(p[:, 1], torch.sigmoid(z[:, 1] / per[1]))
