"""What a full posterior costs to summarise and to tune: O(P³) factorisations, counted.

A full posterior's precision is P×P. Its log determinant for one value (the fit's summary,
`laplace marglik`) needs one Cholesky factorisation, not an eigendecomposition (≈ 15× the
flops); tuning a scalar prior uses one eigendecomposition for every step; a per-layer prior
changes the matrix, so every *distinct* point costs a factorisation, and no point is evaluated
twice. The gradient of log det is Λ⁻¹ from the same factor, equal to autograd's.
Tiny models: the counts, not the timings, are checked.
"""

from __future__ import annotations

import pytest
import torch

from laplace_cli import Laplace
from laplace_cli.posterior.full import logdet_spd
from laplace_cli.tuning import marglik as tuning_marglik
from tests.conftest import tiny_data, tiny_mlp


def _full(likelihood: str = "classification") -> Laplace:
    X, y = tiny_data(likelihood, n=24)
    la = Laplace(tiny_mlp(), likelihood, "all", "full")
    return la.fit([(X[:12], y[:12]), (X[12:], y[12:])])


class _Count:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.calls = 0
        original = getattr(torch.linalg, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.linalg, name, counted)


def test_the_summary_log_marglik_needs_no_eigendecomposition(
    float64, monkeypatch: pytest.MonkeyPatch
) -> None:
    la = _full()
    eigh = _Count(monkeypatch, "eigh")
    value = float(la.log_marginal_likelihood())
    assert eigh.calls == 0  # one Cholesky factorisation instead
    la.posterior.eig()  # once decomposed (predict, tuning), the eigenvalues serve: same value
    assert float(la.log_marginal_likelihood()) == pytest.approx(value, rel=1e-10)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_layerwise_marglik_on_full_evaluates_each_point_once(
    float64, monkeypatch: pytest.MonkeyPatch, likelihood: str
) -> None:
    la = _full(likelihood)
    points: list[tuple[float, ...]] = []
    original = tuning_marglik.log_evidence

    def recorded(la_, log_prior, log_sigma=None):
        extra = () if log_sigma is None else tuple(log_sigma.detach().tolist())
        points.append(tuple(log_prior.detach().tolist()) + extra)
        return original(la_, log_prior, log_sigma)

    monkeypatch.setattr(tuning_marglik, "log_evidence", recorded)
    eigh = _Count(monkeypatch, "eigh")
    result = la.optimize_prior_precision(method="marglik", prior_structure="layerwise")
    assert result["converged"] and result["n_steps"] >= 2
    assert len(points) == len(set(points)), "a point was factorised twice"
    assert eigh.calls == 0


def test_scalar_marglik_on_full_decomposes_once(float64, monkeypatch: pytest.MonkeyPatch) -> None:
    la = _full()
    eigh = _Count(monkeypatch, "eigh")
    cholesky = _Count(monkeypatch, "cholesky_ex")
    result = la.optimize_prior_precision(method="marglik", prior_structure="scalar")
    assert result["n_steps"] >= 2
    assert (eigh.calls, cholesky.calls) == (1, 0)


def test_logdet_gradient_is_the_inverse_as_autograd_through_cholesky(float64) -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(7, 7, generator=g)
    H = A @ A.T
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    log_prior = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    log_scale = torch.tensor(0.2, requires_grad=True)

    def matrix():
        return log_scale.exp() * H + torch.diag(log_prior.exp()[groups])

    ours = logdet_spd(matrix())
    ours_grads = torch.autograd.grad(ours, (log_prior, log_scale))
    L = torch.linalg.cholesky(matrix())
    reference = 2 * L.diagonal().log().sum()
    ref_grads = torch.autograd.grad(reference, (log_prior, log_scale))
    assert float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-12)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_marglik_steps_go_through_the_progress_wrapper(float64) -> None:
    la = _full()
    seen: list[tuple[int | None, str]] = []

    def progress(iterable, total=None, description=""):
        seen.append((total, description))
        return iterable

    result = la.optimize_prior_precision(
        method="marglik", prior_structure="layerwise", progress=progress
    )
    descriptions = [d for _, d in seen]
    assert descriptions[0].startswith("marglik: first evaluation (Cholesky factorisation of the")
    assert any(d.startswith("marglik") for d in descriptions[1:])
    # The step bar has no total: the optimiser stops when converged, long before n_steps.
    assert seen[-1][0] is None and result["n_steps"] < 1000
