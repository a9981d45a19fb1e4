"""Tests of temperature scaling and its regression analogue (variance scaling)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from laplace_cli.core.errors import BadInputError
from laplace_cli.metrics import classification as M
from laplace_cli.metrics.temperature import (
    apply_temperature,
    apply_variance_scale,
    fit_temperature,
    fit_variance_scale,
    temperature_nll,
)

SEED = 0


def calibrated_logits(seed: int, n: int, c: int, scale: float = 2.0):
    """Logits of a calibrated model and labels drawn from its softmax."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    labels = torch.multinomial(z.softmax(dim=1), 1, generator=g).squeeze(1)
    return z, labels


def numpy_nll(z: np.ndarray, y: np.ndarray, temps: np.ndarray) -> np.ndarray:
    """Mean NLL of softmax(z / T) for every T in ``temps``: (T,)."""
    scaled = z[None, :, :] / temps[:, None, None]  # (T, N, C)
    top = scaled.max(axis=2, keepdims=True)
    lse = np.log(np.exp(scaled - top).sum(axis=2)) + top[..., 0]
    true = np.take_along_axis(scaled, y[None, :, None].repeat(len(temps), 0), axis=2)[..., 0]
    return (lse - true).mean(axis=1)


def grid_minimiser(z: np.ndarray, y: np.ndarray) -> float:
    """Brute-force minimiser of the NLL over T by three rounds of refined log-spaced grids."""
    lo, hi = math.log(0.05), math.log(20.0)
    for _ in range(3):
        grid = np.exp(np.linspace(lo, hi, 1001))
        k = int(np.argmin(numpy_nll(z, y, grid)))
        lo, hi = math.log(grid[max(k - 2, 0)]), math.log(grid[min(k + 2, len(grid) - 1)])
    return float(grid[k])


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5], ids=lambda t: f"T{t}")
def test_recovers_known_temperature(true_t: float) -> None:
    z, labels = calibrated_logits(SEED, 10_000, 5)
    # A model whose logits are the calibrated ones times T needs temperature T.
    fitted = fit_temperature(z * true_t, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    # Dividing by it makes the model calibrated again.
    probs = apply_temperature(z * true_t, fitted).softmax(dim=1)
    assert M.ece(probs, labels) < 0.03


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_agrees_with_brute_force_grid(seed: int) -> None:
    z, labels = calibrated_logits(seed, 400, 4, scale=3.0)
    z = z * (0.4 + seed * 0.7)  # miscalibrate by different amounts
    fitted = fit_temperature(z, labels)
    reference = grid_minimiser(z.numpy(), labels.numpy())
    assert fitted == pytest.approx(reference, abs=1e-4)
    # The fitted value is at least as good as the best grid point and a stationary point.
    at = float(numpy_nll(z.numpy(), labels.numpy(), np.array([fitted]))[0])
    best = float(numpy_nll(z.numpy(), labels.numpy(), np.array([reference]))[0])
    assert at <= best + 1e-12
    assert temperature_nll(z, labels, fitted) == pytest.approx(at, rel=1e-12)
    h = 1e-5 * fitted
    slope = (temperature_nll(z, labels, fitted + h) - temperature_nll(z, labels, fitted - h)) / (
        2 * h
    )
    assert abs(slope) < 1e-6


def test_deterministic_and_float32() -> None:
    z, labels = calibrated_logits(SEED, 1000, 3)
    first = fit_temperature(z * 1.7, labels)
    assert fit_temperature(z * 1.7, labels) == first
    assert fit_temperature((z * 1.7).float(), labels) == pytest.approx(first, rel=1e-5)


def test_optimum_outside_bounds_returns_the_bound() -> None:
    z, _ = calibrated_logits(SEED, 200, 3)
    right = z.argmax(dim=1)
    wrong = z.argmin(dim=1)
    # Every label is the argmax: NLL keeps falling as T → 0.
    assert fit_temperature(z, right) == 1e-2
    assert fit_temperature(z, right, bounds=(0.1, 10.0)) == 0.1
    # Every label is the argmin: the best positive temperature is as hot as allowed.
    assert fit_temperature(z, wrong) == 1e2


def test_constant_logits_give_temperature_one() -> None:
    assert fit_temperature(torch.zeros(10, 3), torch.arange(10) % 3) == 1.0


def test_temperature_nll_matches_metrics_nll() -> None:
    z, labels = calibrated_logits(SEED, 100, 4)
    expected = M.nll((z / 1.3).softmax(dim=1), labels)
    assert temperature_nll(z, labels, 1.3) == pytest.approx(expected, rel=1e-10)


def test_apply_temperature() -> None:
    z = torch.tensor([[1.0, 2.0]], dtype=torch.float32)
    out = apply_temperature(z, 2.0)
    assert out.dtype == torch.float32 and torch.equal(out, torch.tensor([[0.5, 1.0]]))
    for bad in (0.0, -1.0, float("nan"), float("inf"), "hot"):
        with pytest.raises(BadInputError, match="temperature: expected a positive"):
            apply_temperature(z, bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"logits": torch.zeros(4), "labels": torch.zeros(4, dtype=torch.long)},
            "shape \\(N, C\\)",
        ),
        ({"logits": torch.zeros(2, 3), "labels": torch.tensor([0, 3])}, "labels in \\[0, 2\\]"),
        ({"logits": torch.full((2, 3), float("nan")), "labels": torch.tensor([0, 1])}, "finite"),
        (
            {"logits": torch.zeros(2, 3), "labels": torch.tensor([0, 1]), "bounds": (2.0, 1.0)},
            "T_min < T_max",
        ),
        (
            {"logits": torch.zeros(2, 3), "labels": torch.tensor([0, 1]), "max_iter": 0},
            "max_iter: expected a positive integer",
        ),
    ],
    ids=["1d-logits", "label-range", "nan", "bounds", "max_iter"],
)
def test_fit_temperature_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        fit_temperature(**kwargs)


# ---------------------------------------------------------------------------------------------
# Regression: variance scaling
# ---------------------------------------------------------------------------------------------


def test_variance_scale_recovers_known_scale_and_minimises_nll() -> None:
    g = torch.Generator().manual_seed(SEED)
    mean = torch.randn(5000, 2, generator=g, dtype=torch.float64)
    var = torch.rand(5000, 2, generator=g, dtype=torch.float64) + 0.1
    true_s = 3.0
    y = mean + (true_s * var).sqrt() * torch.randn(5000, 2, generator=g, dtype=torch.float64)
    s = fit_variance_scale(mean, var, y)
    assert s == pytest.approx(true_s, rel=0.05)
    # The closed form is the exact minimiser: compare with a brute-force grid (numpy NLL).
    m, v, t = mean.numpy(), var.numpy(), y.numpy()
    grid = np.linspace(0.9 * s, 1.1 * s, 2001)
    nlls = [np.mean(0.5 * (np.log(2 * np.pi * k * v) + (t - m) ** 2 / (k * v))) for k in grid]
    assert s == pytest.approx(grid[int(np.argmin(nlls))], abs=grid[1] - grid[0])
    assert M.gaussian_nll(mean, apply_variance_scale(var, s), y) <= min(nlls) + 1e-12
    # And the scaled predictive covers at the nominal level.
    assert M.coverage(mean, apply_variance_scale(var, s), y, 0.9) == pytest.approx(0.9, abs=0.015)


def test_variance_scale_rejects_zero_residuals() -> None:
    mean = torch.ones(3, 1)
    with pytest.raises(BadInputError, match="every residual y - mean is 0"):
        fit_variance_scale(mean, torch.ones(3, 1), mean.clone())
    with pytest.raises(BadInputError, match="scale: expected a positive"):
        apply_variance_scale(torch.ones(3), 0.0)
