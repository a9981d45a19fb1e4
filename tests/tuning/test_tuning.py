"""Tuning: cached grid search against exhaustive evaluation, marglik against scans and FD.

Every reference here is independent of `laplace_cli.tuning.api`: the grid search is checked by setting
`la.prior_precision` and calling `la(...)` afresh at each grid value with the NLL written out by
hand; marglik by scanning `la.log_marginal_likelihood` on a fine grid; its gradients by central
finite differences; the cache by `la.functional_variance`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from laplace_cli import Laplace
from laplace_cli.core.errors import BadInputError, MemoryBudgetError
from laplace_cli.metrics import classification as metrics
from laplace_cli.tuning.api import TuningWarning, grid_losses, log_evidence
from laplace_cli.tuning.cache import PredictiveCache
from tests.conftest import tiny_cnn, tiny_data, tiny_mlp

ROOT = Path(__file__).resolve().parents[2]
GRID = torch.logspace(-4, 4, 21, dtype=torch.float64)
LOG_2PI = math.log(2 * math.pi)


def loader(X, y, bs=16):
    return [(X[i : i + bs], y[i : i + bs]) for i in range(0, len(X), bs)]


def assert_close(actual, expected, rtol, what=""):
    """Relative to the scale of `expected`; prints the worst entries on failure."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    scale = expected.abs().max().clamp_min(1e-30)
    err = (actual - expected).abs()
    if not bool((err <= rtol * scale).all()):
        idx = torch.topk(err.reshape(-1), min(3, err.numel())).indices
        raise AssertionError(
            f"{what}: max abs error {err.max():.3e} (scale {scale:.3e}); worst at {idx.tolist()}: "
            f"got {actual.reshape(-1)[idx].tolist()}, expected {expected.reshape(-1)[idx].tolist()}"
        )


@functools.cache
def trained(likelihood: str, seed: int = 0):
    """A small MLP trained on a teacher problem; validation inputs are spread wider than the
    training inputs, so that the best prior precision lies inside the grid (not at MAP).

    Cached across tests (they only read it); every caller runs under the float64 fixture."""
    assert torch.get_default_dtype() == torch.float64
    g = torch.Generator().manual_seed(seed)
    n_train, n_val = 80, 40
    X = torch.randn(n_train + n_val, 3, generator=g)
    X[n_train:] *= 1.6 if likelihood == "classification" else 1.15
    W = torch.randn(3, 4, generator=g)
    if likelihood == "classification":
        y = torch.multinomial(torch.softmax(2 * X @ W, -1), 1, generator=g).squeeze(1)
    elif likelihood == "binary":
        y = (torch.rand(n_train + n_val, 4, generator=g) < torch.sigmoid(2 * X @ W)).double()
    else:
        y = torch.sin(X @ W) + 0.3 * torch.randn(n_train + n_val, 4, generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.03, weight_decay=1e-2)
    Xt, yt = X[:n_train], y[:n_train]
    for _ in range(100):
        opt.zero_grad()
        f = model(Xt)
        if likelihood == "classification":
            loss = nn.functional.cross_entropy(f, yt)
        elif likelihood == "binary":
            loss = nn.functional.binary_cross_entropy_with_logits(f, yt)
        else:
            loss = ((f - yt) ** 2).mean()
        loss.backward()
        opt.step()
    return model, (Xt, yt), (X[n_train:], y[n_train:])


def exhaustive_nll(la, Xv, yv, values, link_approx="probit", seed=0, n_samples=100):
    """Validation NLL at each prior value by a fresh `la(...)` call (no state kept).

    Probabilities are clamped at the machine epsilon before the log, as `metrics.nll` (and
    scikit-learn's log_loss) define it."""
    eps = torch.finfo(torch.float64).eps
    out = []
    for v in values:
        la.prior_precision = float(v)
        gen = torch.Generator().manual_seed(seed)
        if la.likelihood.value == "regression":
            mean, f_var = la(Xv, pred_type="glm")
            var = torch.diagonal(f_var, dim1=-2, dim2=-1) + la.sigma_noise**2
            out.append(float((0.5 * (LOG_2PI + var.log() + (yv - mean) ** 2 / var)).mean()))
        elif la.likelihood.value == "classification":
            p = la(Xv, link_approx=link_approx, n_samples=n_samples, generator=gen)
            out.append(float(-p[torch.arange(len(yv)), yv].clamp_min(eps).log().mean()))
        else:
            p = la(Xv, link_approx=link_approx, n_samples=n_samples, generator=gen)
            nll = yv * p.clamp_min(eps).log() + (1 - yv) * (1 - p).clamp_min(eps).log()
            out.append(float(-nll.mean()))
    return torch.tensor(out, dtype=torch.float64)


def fit(likelihood, structure, subset, model, train, **kw):
    kw.setdefault("sigma_noise", 0.4 if likelihood == "regression" else 1.0)
    return Laplace(model, likelihood, subset, structure, **kw).fit(loader(*train))


# --------------------------------------------------------------------------------------------
# The cache equals the posterior's own functional variance
# --------------------------------------------------------------------------------------------


def layernorm_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 4))


MODELS = {
    "mlp": (tiny_mlp, False),
    "cnn": (lambda: tiny_cnn(n_out=4), True),  # Conv2d: weight sharing, T > 1
    "layernorm": (layernorm_mlp, False),  # parameters of other modules: dense blocks
}


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_cached_functional_variance_matches_posterior(
    float64, structure, subset, model_name, likelihood
):
    make, image = MODELS[model_name]
    model = make()
    X, y = tiny_data(likelihood, n=10, n_out=4, image=image)
    la = Laplace(
        model,
        likelihood,
        subset,
        structure,
        temperature=0.7,
        sigma_noise=0.6 if likelihood == "regression" else 1.0,
    ).fit(loader(X, y, 4))
    Xv, _ = tiny_data(likelihood, n=7, n_out=4, seed=5, image=image)
    cache = PredictiveCache(la, [Xv[:3], Xv[3:]])  # two batches, joined
    g = torch.Generator().manual_seed(3)
    priors = [torch.tensor([0.3]), torch.rand(len(la.subset.groups), generator=g) + 0.2]
    if structure != "kron":
        priors.append(torch.rand(la.n_params, generator=g) + 0.2)
    for prior in priors:
        la.prior_precision = prior
        expected = la.functional_variance(Xv)[1]
        got = cache.functional_variance(prior, la.curvature_scale())
        assert_close(got, expected, 1e-8, f"{structure}/{subset}/{prior.numel()} values")
        diag = cache.variance_diag(prior.reshape(1, -1), la.curvature_scale())[0]
        assert_close(diag, expected.diagonal(dim1=-2, dim2=-1), 1e-8, "variance_diag")
    # many grid points at once equal the points one by one
    grid = torch.tensor([0.01, 1.0, 100.0])
    batched = cache.variance_diag(grid, la.curvature_scale())
    for k, v in enumerate(grid):
        la.prior_precision = v
        expected = la.functional_variance(Xv)[1].diagonal(dim1=-2, dim2=-1)
        assert_close(batched[k], expected, 1e-8, f"grid point {float(v)}")


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_cache_with_a_posterior_as_prior(float64, structure):
    # Λ = s·H + s'·H' + diag(δ): the cache reads the data part from the posterior itself.
    model, (X, y), (Xv, _) = trained("classification")
    first = Laplace(model, "classification", "all", structure).fit(loader(X[:40], y[:40]))
    la = Laplace(model, "classification", "all", structure, prior=first).fit(loader(X[40:], y[40:]))
    cache = PredictiveCache(la, [Xv])
    for prior in (torch.tensor([0.5]), torch.rand(len(la.subset.groups)) + 0.2):
        la.prior_precision = prior
        expected = la.functional_variance(Xv)[1]
        assert_close(
            cache.functional_variance(prior, la.curvature_scale()), expected, 1e-8, structure
        )


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_per_output_noise_cache_gridsearch_and_marglik(float64, structure):
    model, train, (Xv, yv) = trained("regression")
    sigma = [0.3, 0.4, 0.5, 0.6]
    la = fit("regression", structure, "all", model, train, sigma_noise=sigma)
    cache = PredictiveCache(la, [Xv])
    for prior in (torch.tensor([0.5]), torch.rand(len(la.subset.groups)) + 0.2):
        la.prior_precision = prior
        expected = la.functional_variance(Xv)[1]
        assert_close(
            cache.functional_variance(prior, la.curvature_scale()), expected, 1e-8, structure
        )
    result = la.optimize_prior_precision(method="gridsearch", val_loader=loader(Xv, yv), grid=GRID)
    reference = exhaustive_nll(la, Xv, yv, GRID)
    assert result["prior_precision"] == [float(GRID[int(reference.argmin())])]
    assert_close(torch.tensor([r[1] for r in result["curve"]]), reference, 1e-9, "curve")
    result = la.optimize_prior_precision(method="marglik", tune_sigma_noise=True)
    assert result["converged"] and len(result["sigma_noise"]) == 4
    log_sigma = la.sigma_noise.log().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_evidence(la, la.prior_precision.log(), log_sigma), log_sigma)
    assert float(grad.abs().max()) / la.n_data < 1e-5  # a stationary point in every σ_k


def test_cache_keeps_last_layer_jacobian_shared(float64):
    model = tiny_mlp()
    X, y = tiny_data("classification", n=20)
    la = Laplace(model, "classification", "last_layer", "kron").fit(loader(X, y, 5))
    cache = PredictiveCache(la, [X[:8], X[8:]])
    # G = I for every sample: the rank-one block keeps u once, (1, C, d_out), not (N, C, d_out)
    assert cache.blocks[0].u.shape[0] == 1
    assert cache.blocks[0].bias is not None  # the bias folded into the weight's block


def test_cache_refuses_over_budget(float64):
    model = tiny_mlp()
    X, y = tiny_data("classification", n=20)
    la = Laplace(model, "classification", "all", "full").fit(loader(X, y, 5))
    # Jacobian rows still fit (one row needs 4·C·P·8 = 5.5 KiB of a quarter of the budget), but
    # the cache holds N × C × P values and their squares, 20 × 4 × 44 × 16 bytes = 55 KiB.
    la.max_memory = 32 * 1024
    with pytest.raises(MemoryBudgetError, match="grid-search cache"):
        PredictiveCache(la, [X])


# --------------------------------------------------------------------------------------------
# Grid search = exhaustive, independent evaluation
# --------------------------------------------------------------------------------------------

INTERIOR = {
    # (likelihood, structure, subset) whose best grid value is not on the edge: there the
    # comparison tests the selection, not only the edge case.
    ("classification", s, sub)
    for s in ("kron", "diag", "full")
    for sub in ("all", "last_layer")
} | {("regression", s, "all") for s in ("kron", "diag", "full")}


@pytest.mark.parametrize("structure", ["kron", "diag", "full"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("likelihood", ["classification", "regression", "binary"])
def test_gridsearch_selects_what_exhaustive_evaluation_selects(
    float64, likelihood, structure, subset
):
    model, train, (Xv, yv) = trained(likelihood)
    la = fit(likelihood, structure, subset, model, train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)
        result = la.optimize_prior_precision(
            method="gridsearch", val_loader=loader(Xv, yv, 16), grid=GRID
        )
    chosen = la.prior_precision.clone()
    reference = exhaustive_nll(la, Xv, yv, GRID)
    best = int(reference.argmin())
    assert result["prior_precision"] == [float(GRID[best])]
    assert float(chosen) == float(GRID[best])
    curve = torch.tensor([row[1] for row in result["curve"]])
    assert_close(curve, reference, 1e-9, "curve vs exhaustive")
    assert result["on_edge"] == (best in (0, len(GRID) - 1))
    if (likelihood, structure, subset) in INTERIOR:
        assert not result["on_edge"], "the test problem should have an interior optimum"
    # the reference's bug: all grid points must not score the same
    assert curve.max() - curve.min() > 1e-3


@pytest.mark.parametrize("link_approx", ["bridge", "bridge_norm", "mc"])
def test_gridsearch_other_links_match_exhaustive(float64, link_approx):
    model, train, (Xv, yv) = trained("classification")
    la = fit("classification", "kron", "all", model, train)
    grid = GRID[::4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)
        result = la.optimize_prior_precision(
            method="gridsearch",
            val_loader=loader(Xv, yv, 16),
            grid=grid,
            link_approx=link_approx,
            n_samples=50,
            seed=7,
        )
    reference = exhaustive_nll(la, Xv, yv, grid, link_approx, seed=7, n_samples=50)
    curve = torch.tensor([row[1] for row in result["curve"]])
    assert_close(curve, reference, 1e-9, link_approx)
    assert result["prior_precision"] == [float(grid[int(reference.argmin())])]
    assert result["link_approx"] == link_approx and la.tuning["link_approx"] == link_approx


@pytest.mark.parametrize("loss", ["brier", "ece"])
def test_gridsearch_other_losses_match_metrics(float64, loss):
    model, train, (Xv, yv) = trained("classification")
    la = fit("classification", "diag", "all", model, train)
    grid = GRID[::5]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)  # ece may well prefer an edge
        result = la.optimize_prior_precision(
            method="gridsearch", val_loader=loader(Xv, yv), grid=grid, loss=loss
        )
    fn = getattr(metrics, loss)
    reference = []
    for v in grid:
        la.prior_precision = v
        reference.append(fn(la(Xv), yv))
    curve = [row[1] for row in result["curve"]]
    assert_close(torch.tensor(curve), torch.tensor(reference), 1e-9, loss)
    assert result["prior_precision"] == [float(grid[int(np.argmin(reference))])]


def test_gridsearch_custom_loss_and_temperature_grid(float64):
    model, train, (Xv, yv) = trained("classification")
    la = fit("classification", "kron", "all", model, train)
    calls = []

    def neg_acc_plus_nll(probs, y):
        calls.append(1)
        return float(
            -(probs.argmax(-1) == y).double().mean() - probs[torch.arange(len(y)), y].log().mean()
        )

    grid, temps = GRID[::8], torch.tensor([0.5, 1.0, 2.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TuningWarning)
        result = la.optimize_prior_precision(
            method="gridsearch",
            val_loader=loader(Xv, yv),
            grid=grid,
            temperature_grid=temps,
            loss=neg_acc_plus_nll,
        )
    edge = [w for w in caught if "edge of the grid" in str(w.message)]
    assert len(edge) == int(result["on_edge"])
    assert len(calls) == len(grid) * len(temps) + 1  # and once for the MAP it is compared with
    chosen = (float(la.prior_precision), la.temperature)
    reference = {}
    for v in grid:
        for t in temps:
            la.prior_precision, la.temperature = v, float(t)
            reference[(float(v), float(t))] = neg_acc_plus_nll(la(Xv), yv)
    for p, t, value in result["curve"]:
        assert value == pytest.approx(reference[(p, t)], rel=1e-9)
    best = min(reference, key=reference.get)
    assert (result["prior_precision"][0], result["temperature"]) == best
    assert chosen == best
    assert result["tuned"] == ["prior_precision", "temperature"]
    assert result["loss"] == "neg_acc_plus_nll"


def test_gridsearch_without_cache_gives_the_same_curve(float64):
    model, train, (Xv, yv) = trained("regression")
    la = fit("regression", "full", "all", model, train)
    kw = {"method": "gridsearch", "val_loader": loader(Xv, yv), "grid": GRID[::4]}
    cached = la.optimize_prior_precision(**kw)
    direct = la.optimize_prior_precision(**kw, use_cache=False)
    assert cached["cached"] and not direct["cached"]
    assert_close(
        torch.tensor([r[1] for r in cached["curve"]]),
        torch.tensor([r[1] for r in direct["curve"]]),
        1e-10,
        "cache vs la(...)",
    )


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_gridsearch_nn_predictive_scores_by_calling_la(float64, likelihood):
    # pred_type "nn" samples networks: no cache; every grid point calls la(...) with the same
    # seed, so with one validation batch the draws are those of an independent call.
    model, train, (Xv, yv) = trained(likelihood)
    la = fit(likelihood, "diag", "last_layer", model, train)
    grid = GRID[::5]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)
        result = la.optimize_prior_precision(
            method="gridsearch",
            val_loader=[(Xv, yv)],
            grid=grid,
            pred_type="nn",
            n_samples=20,
            seed=3,
        )
    assert not result["cached"] and result["pred_type"] == "nn"
    eps = torch.finfo(torch.float64).eps
    reference = []
    for v in grid:
        la.prior_precision = v
        gen = torch.Generator().manual_seed(3)
        if likelihood == "regression":
            mean, var = la(Xv, pred_type="nn", n_samples=20, generator=gen, diagonal_output=True)
            var = var + la.sigma_noise**2
            reference.append(float((0.5 * (LOG_2PI + var.log() + (yv - mean) ** 2 / var)).mean()))
        else:
            p = la(Xv, pred_type="nn", link_approx="mc", n_samples=20, generator=gen)
            reference.append(float(-p[torch.arange(len(yv)), yv].clamp_min(eps).log().mean()))
    curve = torch.tensor([row[1] for row in result["curve"]])
    assert_close(curve, torch.tensor(reference), 1e-12, "nn")
    assert result["prior_precision"] == [float(grid[int(np.argmin(reference))])]


def test_gridsearch_edge_warns_and_refine(float64):
    model, train, (Xv, yv) = trained("classification")
    la = fit("classification", "kron", "all", model, train)
    reference = exhaustive_nll(la, Xv, yv, GRID)
    best = float(GRID[int(reference.argmin())])
    low = torch.logspace(-4, math.log10(best) - 1, 5)  # entirely below the optimum
    with pytest.warns(TuningWarning, match="edge of the grid") as caught:
        result = la.optimize_prior_precision(
            method="gridsearch", val_loader=loader(Xv, yv), grid=low
        )
    assert caught[0].filename == __file__  # attributed to the caller, not to the library
    assert result["on_edge"] and result["prior_precision"] == [float(low[-1])]

    coarse = torch.logspace(-4, 4, 5)  # a factor 100 apart
    plain = la.optimize_prior_precision(method="gridsearch", val_loader=loader(Xv, yv), grid=coarse)
    refined = la.optimize_prior_precision(
        method="gridsearch", val_loader=loader(Xv, yv), grid=coarse, refine=4
    )
    p0 = plain["prior_precision"][0]
    p1 = refined["prior_precision"][0]
    i = int((coarse == p0).nonzero())
    assert coarse[max(i - 1, 0)] <= p1 <= coarse[min(i + 1, len(coarse) - 1)]
    loss = dict((r[0], r[1]) for r in refined["curve"])
    assert loss[p1] <= loss[p0] and refined["refined"] == (p1 != p0)
    assert not plain["on_edge"] and len(refined["curve"]) == len(coarse) + 2 * 4
    assert float(exhaustive_nll(la, Xv, yv, [p1])[0]) == pytest.approx(loss[p1], rel=1e-9)


def test_regression_mse_cannot_choose(float64):
    model, train, (Xv, yv) = trained("regression")
    la = fit("regression", "kron", "all", model, train)
    with pytest.warns(TuningWarning, match="cannot choose"):
        result = la.optimize_prior_precision(
            method="gridsearch", val_loader=loader(Xv, yv), grid=GRID[::8], loss="mse"
        )
    values = {row[1] for row in result["curve"]}
    assert len(values) == 1  # the mean does not depend on the prior
    assert not result["on_edge"]  # a constant has no optimum, on the edge or elsewhere
    with torch.no_grad():
        assert values.pop() == pytest.approx(float(((model(Xv) - yv) ** 2).mean()), rel=1e-12)


def test_tuning_record_is_json_and_drives_defaults(float64):
    model, train, (Xv, yv) = trained("classification")
    la = fit("classification", "kron", "all", model, train)
    result = la.optimize_prior_precision(
        method="gridsearch", val_loader=loader(Xv, yv), grid=GRID[::4], link_approx="bridge"
    )
    assert la.tuning is result
    back = json.loads(json.dumps(result, allow_nan=False))
    for key in ("method", "prior_structure", "prior_precision", "sigma_noise", "temperature"):
        assert key in back
    assert back["pred_type"] == "glm" and back["link_approx"] == "bridge" and back["loss"] == "nll"
    assert back["n_steps"] == len(GRID[::4]) and back["converged"] is True
    # a later grid search without link_approx uses what was recorded
    again = la.optimize_prior_precision(
        method="gridsearch", val_loader=loader(Xv, yv), grid=GRID[::4]
    )
    assert again["link_approx"] == "bridge"


@pytest.mark.parametrize("method", ["gridsearch", "marglik"])
def test_tuning_survives_the_posterior_file(float64, tmp_path, method):
    from laplace_cli.io.checkpoints import model_fingerprint
    from laplace_cli.io.posterior_file import read_posterior, write_posterior
    from laplace_cli.laplace.rebuild import laplace_from_state
    from laplace_cli.laplace.serialization import laplace_state

    model, train, (Xv, yv) = trained("regression")
    la = fit("regression", "kron", "all", model, train)
    kw = {"val_loader": loader(Xv, yv), "grid": GRID[::4]} if method == "gridsearch" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)
        la.optimize_prior_precision(method=method, **kw)
    ref = {"path": "model.pt", "form": "state_dict", "factory": "m:f", "kwargs": {}}
    tensors, meta = laplace_state(la, model_ref=ref, fingerprint=model_fingerprint(model))
    write_posterior(tmp_path / "post.st", tensors, meta)
    pf = read_posterior(tmp_path / "post.st")
    back = laplace_from_state(model, pf.tensors, pf.metadata)
    assert back.tuning == la.tuning
    assert torch.equal(back.prior_precision, la.prior_precision)
    assert torch.equal(back.sigma_noise, la.sigma_noise)
    if method == "gridsearch":
        assert str(pf.metadata["pred_type"]) == "glm"


# --------------------------------------------------------------------------------------------
# Marginal likelihood
# --------------------------------------------------------------------------------------------


def scan_argmax(fn, lo=-4.0, hi=4.0):
    """argmax of fn(v) over a coarse log grid, then a fine one (0.1% steps) around it."""
    coarse = torch.logspace(lo, hi, 161)
    values = torch.tensor([float(fn(v)) for v in coarse])
    i = int(values.argmax())
    assert 0 < i < len(coarse) - 1, "the scan's optimum must be inside its range"
    fine = torch.logspace(math.log10(coarse[i - 1]), math.log10(coarse[i + 1]), 201)
    values = torch.tensor([float(fn(v)) for v in fine])
    return float(fine[int(values.argmax())])


@pytest.mark.parametrize("structure", ["kron", "diag", "full"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_marglik_scalar_matches_fine_scan(float64, likelihood, structure):
    model, train, _ = trained(likelihood)
    la = fit(likelihood, structure, "all", model, train)
    result = la.optimize_prior_precision(method="marglik", tune_sigma_noise=False)
    assert result["converged"]
    delta = result["prior_precision"][0]
    best = scan_argmax(lambda v: la.log_marginal_likelihood(torch.tensor([v])))
    assert delta == pytest.approx(best, rel=0.01)
    assert result["log_evidence"] == pytest.approx(float(la.log_marginal_likelihood()), rel=1e-12)
    assert result["tuned"] == ["prior_precision"] and result["sigma_noise"] == [
        float(la.sigma_noise)
    ]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_marglik_joint_prior_and_noise_matches_scans(float64, optimizer):
    model, train, _ = trained("regression")
    la = fit("regression", "kron", "all", model, train)
    result = la.optimize_prior_precision(
        method="marglik", optimizer=optimizer, tune_sigma_noise=True
    )
    assert result["converged"] and result["tuned"] == ["prior_precision", "sigma_noise"]
    delta, sigma = result["prior_precision"][0], result["sigma_noise"][0]
    # a joint optimum is a maximum along each coordinate
    best_delta = scan_argmax(
        lambda v: la.log_marginal_likelihood(torch.tensor([v]), torch.tensor([sigma]))
    )
    best_sigma = scan_argmax(
        lambda v: la.log_marginal_likelihood(torch.tensor([delta]), torch.tensor([v])), -2, 2
    )
    assert delta == pytest.approx(best_delta, rel=0.01)
    assert sigma == pytest.approx(best_sigma, rel=0.01)


def test_marglik_sigma_on_its_own(float64):
    model, train, _ = trained("regression")
    la = fit("regression", "diag", "all", model, train, prior_precision=3.0)
    result = la.optimize_prior_precision(method="marglik", tune_prior=False, tune_sigma_noise=True)
    assert result["tuned"] == ["sigma_noise"] and result["prior_precision"] == [3.0]
    best = scan_argmax(
        lambda v: la.log_marginal_likelihood(torch.tensor([3.0]), torch.tensor([v])), -2, 2
    )
    assert result["sigma_noise"][0] == pytest.approx(best, rel=0.01)


@pytest.mark.parametrize(
    "structure,prior_structure",
    [("kron", "layerwise"), ("diag", "layerwise"), ("diag", "diag"), ("full", "layerwise")],
)
def test_marglik_richer_priors_raise_the_evidence(float64, structure, prior_structure):
    model, train, _ = trained("classification")
    la = fit("classification", structure, "all", model, train)
    scalar = la.optimize_prior_precision(method="marglik")["log_evidence"]
    result = la.optimize_prior_precision(method="marglik", prior_structure=prior_structure)
    assert result["converged"]
    n = {"layerwise": len(la.subset.groups), "diag": la.n_params}[prior_structure]
    assert len(result["prior_precision"]) == n == la.prior_precision.numel()
    # the scalar optimum is one point of the richer family, so the evidence can only rise
    assert result["log_evidence"] >= scalar - 1e-9
    # and the result is a stationary point: the gradient in log space vanishes
    log_prior = la.prior_precision.log().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_evidence(la, log_prior), log_prior)
    assert float(grad.abs().max()) / la.n_data < 1e-5


@pytest.mark.parametrize(
    "structure,n_prior",
    [("kron", "scalar"), ("kron", "layerwise"), ("diag", "diag"), ("full", "diag")],
)
def test_log_evidence_gradients_match_finite_differences(float64, structure, n_prior):
    model, train, _ = trained("regression")
    la = fit("regression", structure, "all", model, train)
    k = {"scalar": 1, "layerwise": len(la.subset.groups), "diag": la.n_params}[n_prior]
    g = torch.Generator().manual_seed(0)
    log_prior = (torch.rand(k, generator=g) * 2 - 1).requires_grad_(True)
    log_sigma = torch.tensor([-0.5], requires_grad=True)
    value = log_evidence(la, log_prior, log_sigma)
    g_prior, g_sigma = torch.autograd.grad(value, (log_prior, log_sigma))
    h = 1e-5
    fd = []
    for i in range(min(k, 12)):  # per-parameter priors: the first 12 coordinates
        e = torch.zeros(k)
        e[i] = h
        with torch.no_grad():
            plus = log_evidence(la, log_prior + e, log_sigma)
            minus = log_evidence(la, log_prior - e, log_sigma)
        fd.append(float((plus - minus) / (2 * h)))
    assert_close(g_prior[: len(fd)], torch.tensor(fd), 1e-6, "d/d log δ")
    with torch.no_grad():
        plus = log_evidence(la, log_prior, log_sigma + h)
        minus = log_evidence(la, log_prior, log_sigma - h)
    assert float(g_sigma) == pytest.approx(float((plus - minus) / (2 * h)), rel=1e-6)


def test_marglik_reports_steps_and_does_not_run_a_fixed_count(float64):
    model, train, _ = trained("classification")
    la = fit("classification", "kron", "all", model, train)
    result = la.optimize_prior_precision(method="marglik", n_steps=500)
    assert result["converged"] and result["n_steps"] < 100
    with pytest.warns(TuningWarning, match="did not converge"):
        short = la.optimize_prior_precision(
            method="marglik", n_steps=1, init_prior_prec=1e3, optimizer="adam", lr=1e-3
        )
    assert not short["converged"] and short["n_steps"] == 1


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_bad_options_are_refused(float64):
    model, train, (Xv, yv) = trained("regression")
    kron = fit("regression", "kron", "all", model, train)
    with pytest.raises(BadInputError, match="prior_structure 'diag'.*kron"):
        kron.optimize_prior_precision(method="marglik", prior_structure="diag")
    with pytest.raises(BadInputError, match="val_loader"):
        kron.optimize_prior_precision(method="gridsearch")
    with pytest.raises(BadInputError, match="scalar prior"):
        kron.optimize_prior_precision(
            method="gridsearch", val_loader=loader(Xv, yv), prior_structure="layerwise"
        )
    with pytest.raises(BadInputError, match="loss: expected one of nll, mse"):
        kron.optimize_prior_precision(method="gridsearch", val_loader=loader(Xv, yv), loss="ece")
    with pytest.raises(BadInputError, match="temperature is tuned by gridsearch"):
        kron.optimize_prior_precision(method="marglik", temperature_grid=[1.0, 2.0])
    with pytest.raises(BadInputError, match="grid: expected positive"):
        kron.optimize_prior_precision(
            method="gridsearch", val_loader=loader(Xv, yv), grid=[0.0, 1.0]
        )
    with pytest.raises(BadInputError, match="method"):
        kron.optimize_prior_precision(method="newton")
    clf, ctrain, _ = trained("classification")
    la = fit("classification", "kron", "all", clf, ctrain)
    with pytest.raises(BadInputError, match="regression only"):
        la.optimize_prior_precision(method="marglik", tune_sigma_noise=True)


def test_grid_losses_batched_equal_metrics(float64):
    model, train, (Xv, yv) = trained("classification")
    la = fit("classification", "kron", "all", model, train)
    cache = PredictiveCache.from_loader(la, loader(Xv, yv))
    grid = GRID[::10]
    for loss in ("nll", "brier"):
        batched = grid_losses(la, cache, grid, loss=loss)
        for v, value in zip(grid, batched):
            la.prior_precision = v
            assert float(value) == pytest.approx(getattr(metrics, loss)(la(Xv), yv), rel=1e-12)


# --------------------------------------------------------------------------------------------
# Sample models: tuned Laplace beats MAP on validation NLL
# --------------------------------------------------------------------------------------------


def load_sample(name: str):
    spec = importlib.util.spec_from_file_location(
        "_tuning_samples", ROOT / "sample_models" / "models.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = getattr(module, name)()
    model.load_state_dict(load_file(str(ROOT / "sample_models" / name / "model.safetensors")))
    model = model.double()
    data = {}
    for split in ("train", "val"):
        arrays = np.load(ROOT / "sample_models" / name / f"{split}.npz")
        data[split] = (torch.from_numpy(arrays["x"]).double(), torch.from_numpy(arrays["y"]))
    return model, data


@pytest.mark.parametrize(
    "name,likelihood,subset,structure",
    [
        ("digits_mlp", "classification", "all", "kron"),
        ("digits_cnn", "classification", "last_layer", "kron"),
        ("diabetes_mlp", "regression", "all", "full"),
    ],
)
def test_sample_models_tuned_laplace_beats_map(float64, name, likelihood, subset, structure):
    model, data = load_sample(name)
    la = Laplace(model, likelihood, subset, structure).fit(loader(*data["train"], 256))
    Xv, yv = data["val"]
    val = loader(Xv, yv, 256)
    with torch.no_grad():
        f = model(Xv)
    if likelihood == "regression":
        yv = yv.double().reshape(f.shape)
        la.optimize_prior_precision(method="marglik", tune_sigma_noise=True)  # σ, δ by evidence
        sigma = float(la.sigma_noise)
        with torch.no_grad():
            train_rmse = float(
                ((model(data["train"][0]) - data["train"][1].double()) ** 2).mean().sqrt()
            )

        def gauss_nll(var):
            return float((0.5 * (LOG_2PI + torch.log(var) + (yv - f) ** 2 / var)).mean())

        maps = {
            "MAP, tuned sigma": gauss_nll(torch.full_like(f, sigma**2)),
            "MAP, sigma = train RMSE": gauss_nll(torch.full_like(f, train_rmse**2)),
        }
    else:
        maps = {"MAP": float(nn.functional.cross_entropy(f, yv))}
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningWarning)  # the optimum must be inside the grid
        result = la.optimize_prior_precision(method="gridsearch", val_loader=val)
    tuned = min(row[1] for row in result["curve"])
    # independent check of the tuned value
    if likelihood == "regression":
        mean, f_var = la(Xv)
        var = torch.diagonal(f_var, dim1=-2, dim2=-1) + la.sigma_noise**2
        direct = float((0.5 * (LOG_2PI + var.log() + (yv - mean) ** 2 / var)).mean())
    else:
        direct = float(-la(Xv)[torch.arange(len(yv)), yv].log().mean())
    assert direct == pytest.approx(tuned, rel=1e-9)
    print(
        f"\n{name} ({structure}, {subset}): val NLL Laplace {tuned:.4f} at prior precision "
        f"{result['prior_precision'][0]:.4g}; " + "; ".join(f"{k} {v:.4f}" for k, v in maps.items())
    )
    for what, value in maps.items():
        assert tuned < value, f"{name}: tuned Laplace {tuned:.5f} is not below {what} {value:.5f}"
