"""`pipeline.doctor` / `metrics.diagnostics`: each check finds its problem on a posterior built to
have it, each measure matches a direct computation, and a tuned sample posterior has no finding."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from laplace_cli.laplace.approximation import Laplace
from laplace_cli.metrics import diagnostics
from laplace_cli.pipeline import doctor
from laplace_cli.pipeline.evaluation import SplitOutputs

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"

pytestmark = pytest.mark.usefixtures("one_thread")


def _factory(name: str):
    spec = importlib.util.spec_from_file_location("sample_models_models", SAMPLES / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def _model(name: str) -> torch.nn.Module:
    model = _factory(name)()
    model.load_state_dict(load_file(str(SAMPLES / name / "model.safetensors")))
    return model.eval()


def _loader(name: str, split: str, classification: bool = True) -> DataLoader:
    d = np.load(SAMPLES / name / f"{split}.npz")
    y = torch.as_tensor(d["y"])
    y = y.long() if classification else y.float().reshape(len(y), -1)
    return DataLoader(TensorDataset(torch.as_tensor(d["x"]).float(), y), batch_size=256)


def _fitted(model: torch.nn.Module, likelihood: str = "classification", **kw) -> Laplace:
    name = "digits_mlp" if likelihood == "classification" else "diabetes_mlp"
    la = Laplace(
        model,
        likelihood,
        subset_of_weights=kw.pop("subset", "all"),
        hessian_structure=kw.pop("structure", "kron"),
        **kw,
    )
    la.fit(_loader(name, "train", likelihood == "classification"))
    return la


@pytest.fixture(scope="module")
def digits_tuned() -> Laplace:
    la = _fitted(_model("digits_mlp"))
    la.optimize_prior_precision(method="gridsearch", val_loader=_loader("digits_mlp", "val"))
    return la


def _by_check(findings):
    return {f.check: f for f in findings}


# --- no findings on tuned sample posteriors ---------------------------------------------------
def test_tuned_digits_mlp_has_no_finding(digits_tuned):
    found = doctor.diagnose(digits_tuned, str(SAMPLES / "digits_mlp" / "data.yaml"))
    assert {f.check for f in found} == {
        "prior_grid_edge",
        "constant_variance",
        "under_confidence",
        "glm_nn_disagreement",
        "marglik_vs_grid",
        "map_not_minimum",
        "curvature_one_layer",
    }
    assert [f for f in found if f.severity not in ("ok", "skipped")] == []
    assert all(f.severity == "ok" for f in found)  # every check applies to this posterior


def test_tuned_diabetes_mlp_has_no_finding():
    la = _fitted(_model("diabetes_mlp"), "regression")
    # `laplace tune`'s default for regression: marglik over the prior and σ together (a grid
    # search at σ = 1 runs into its edge: σ is then wrong, as tune itself warns)
    la.optimize_prior_precision(method="marglik", tune_sigma_noise=True)
    found = doctor.diagnose(la, str(SAMPLES / "diabetes_mlp" / "data.yaml"))
    assert doctor.worst(found) in ("ok", "skipped")


# --- prior precision at the edge of its grid ------------------------------------------------
def test_grid_edge_found_on_a_grid_whose_best_point_is_its_edge():
    la = _fitted(_model("digits_mlp"))
    # digits_mlp's best prior is ~200 (see the test above): a grid 1e-4..1e-1 ends below it
    la.optimize_prior_precision(
        method="gridsearch",
        val_loader=_loader("digits_mlp", "val"),
        log_prior_prec_min=-4,
        log_prior_prec_max=-1,
        grid_size=7,
    )
    curve = la.tuning["curve"]
    best = min(curve, key=lambda p: p[-1])[0]  # direct: the grid's argmin is its largest point
    assert best == pytest.approx(max(p[0] for p in curve))
    f = doctor.check_grid_edge(la.tuning)
    assert f.severity == "warning" and "--grid-max" in f.action
    assert f.measured["prior_precision"] == pytest.approx(best, rel=1e-5)


def test_grid_edge_position_against_a_loop():
    grid = [10.0**k for k in range(-4, 5)]
    for i, g in enumerate(grid):
        expected = "low" if i == 0 else "high" if i == len(grid) - 1 else None
        assert diagnostics.grid_edge_position(grid, g * 1.01) == expected
    assert doctor.check_grid_edge({"method": "marglik"}).severity == "skipped"


# --- near-constant variance -------------------------------------------------------------------
def test_coefficient_of_variation_against_numpy():
    v = torch.rand(50, 3, generator=torch.Generator().manual_seed(0)) + 0.1
    s = v.sum(1).numpy()
    assert diagnostics.coefficient_of_variation(v) == pytest.approx(s.std() / s.mean(), rel=1e-6)


def test_constant_variance_found_on_a_bias_only_posterior():
    # A posterior over the output bias alone: J = I for every input, so the GLM variance is
    # exactly the same everywhere (the prior's and the bias curvature's, not the input's).
    model = _model("digits_mlp")
    idx = torch.arange(
        sum(p.numel() for p in model.parameters()) - 10, sum(p.numel() for p in model.parameters())
    )
    la = Laplace(
        model,
        "classification",
        subset_of_weights="subnetwork",
        hessian_structure="full",
        subnetwork_indices=idx,
    )
    la.fit(_loader("digits_mlp", "train"))
    from laplace_cli.pipeline.evaluation import collect_outputs
    from laplace_cli.pipeline.predict_stage import PredictOptions

    out = collect_outputs(la, _loader("digits_mlp", "val"), PredictOptions(n_samples=0))
    f = doctor.check_variance(out)
    assert f.severity == "warning"
    assert f.measured["cv"] == pytest.approx(
        float(out.var.sum(1).std(unbiased=False) / out.var.sum(1).mean()), abs=1e-9
    )


# --- under-confidence and GLM vs NN -----------------------------------------------------------
@pytest.fixture(scope="module")
def digits_wide() -> Laplace:
    la = _fitted(_model("digits_mlp"))
    la.prior_precision = 1e-6  # far too wide a posterior
    return la


def test_under_confidence_found_with_a_prior_of_1e_6(digits_wide):
    from laplace_cli.pipeline.evaluation import collect_outputs
    from laplace_cli.pipeline.predict_stage import PredictOptions

    out = collect_outputs(digits_wide, _loader("digits_mlp", "val"), PredictOptions(n_samples=0))
    f = doctor.check_under_confidence(out)
    assert f.severity == "warning"
    # direct: NLL and the under-confident share of the ECE by a loop over 15 equal-width bins
    p, y = out.probs.double(), out.targets.long()
    pm = torch.softmax(out.f_map.double(), -1)
    nll = lambda q: float(-torch.log(q[torch.arange(len(y)), y]).mean())  # noqa: E731
    conf, pred = p.max(1)
    under = total = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        m = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if m.any():
            gap = float((pred[m] == y[m]).double().mean() - conf[m].mean()) * int(m.sum())
            total += abs(gap)
            under += max(gap, 0.0)
    assert f.measured["nll_laplace"] == pytest.approx(nll(p), rel=1e-6)
    assert f.measured["nll_map"] == pytest.approx(nll(pm), rel=1e-6)
    assert f.measured["under_share"] == pytest.approx(under / total, rel=1e-9)
    assert f.measured["nll_laplace"] > f.measured["nll_map"] and under / total > 0.5


def test_glm_nn_disagreement_found_with_a_prior_of_1e_6(digits_wide):
    from laplace_cli.pipeline.evaluation import collect_outputs
    from laplace_cli.pipeline.predict_stage import PredictOptions

    loader = _loader("digits_mlp", "val")
    glm = collect_outputs(digits_wide, loader, PredictOptions(pred_type="glm", n_samples=0))
    nn = collect_outputs(
        digits_wide, loader, PredictOptions(pred_type="nn", link_approx="mc", n_samples=20)
    )
    f = doctor.check_glm_vs_nn(glm, nn)
    assert f.severity == "warning"
    direct = float(np.mean(0.5 * np.abs(glm.probs.numpy() - nn.probs.numpy()).sum(1)))
    assert f.measured["mean_tv"] == pytest.approx(direct, rel=1e-6)


def test_glm_nn_agree_and_confidence_ok_when_tuned(digits_tuned):
    f = doctor.check_glm_vs_nn(
        *(
            SplitOutputs(torch.zeros(2, 2), torch.zeros(2), probs=torch.tensor([[0.5, 0.5]] * 2))
            for _ in range(2)
        )
    )
    assert f.severity == "ok" and f.measured["mean_tv"] == 0.0


# --- marglik vs grid search -------------------------------------------------------------------
def test_marglik_vs_grid_found_when_priors_are_decades_apart(digits_tuned):
    la = _fitted(_model("digits_mlp"))
    la.optimize_prior_precision(method="marglik")
    marglik = float(la.prior_precision)
    # direct: the grid argmax agrees with the optimiser's marglik to the grid's step (¼ decade)
    assert abs(math.log10(doctor.marglik_argmax(la)) - math.log10(marglik)) <= 0.25
    la.tuning = {"method": "gridsearch"}
    la.prior_precision = marglik * 1e5  # as if a grid search had picked 5 decades higher
    f = doctor.check_marglik_vs_grid(la, None)
    assert f.severity == "warning"
    assert f.measured["decades"] == pytest.approx(5.0, abs=0.26)
    ok = doctor.check_marglik_vs_grid(digits_tuned, None)
    assert ok.severity == "ok"


# --- a MAP that is not a minimum --------------------------------------------------------------
def test_map_not_minimum_found_on_a_perturbed_map():
    model = _model("digits_mlp")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    la = _fitted(model)
    train = _loader("digits_mlp", "train")
    f = doctor.check_map(la, train)
    assert f.severity == "warning"
    # direct: full-batch autograd of the mean cross-entropy
    x, y = train.dataset.tensors
    params = list(model.parameters())
    loss = torch.nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    g = math.sqrt(sum(float(t.pow(2).sum()) for t in grads))
    p = math.sqrt(sum(float(t.detach().pow(2).sum()) for t in params))
    assert f.measured["grad_to_param_norm"] == pytest.approx(g / p, rel=1e-4)
    assert doctor.check_map(_fitted(_model("digits_mlp")), train).severity == "ok"


# --- curvature held by one layer --------------------------------------------------------------
def test_curvature_one_layer_found_and_shares_match_the_dense_curvature():
    torch.manual_seed(0)
    # the output layer's weights ×10 (and the first layer's ×0.1): the first layer's Jacobian
    # goes through W₂, so its curvature grows ∝ |W₂|² while the output layer's stays ∝ |h|² ≤ 1
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    with torch.no_grad():
        model[2].weight.mul_(10.0)
        model[0].weight.mul_(0.1)
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="full")
    la.fit(DataLoader(TensorDataset(x, y), batch_size=20))
    f = doctor.check_layers(la)
    assert f.severity == "warning" and f.measured["top_layer"] == "0"
    diag = la.posterior.curvature_dense().diag().double()
    first = float(diag[: 4 * 6 + 6].sum() / diag.sum())
    assert f.measured["shares"]["0"] == pytest.approx(first, rel=1e-6)
    assert f.measured["shares"]["2"] == pytest.approx(1 - first, rel=1e-6)


def test_trace_shares_against_a_loop():
    d = torch.arange(1.0, 11.0)
    assert diagnostics.trace_shares(d, [3, 7]) == pytest.approx([6 / 55, 49 / 55])


def test_grid_argmin_matches_tune_and_leaves_the_posterior_as_it_was(digits_tuned):
    before = (float(digits_tuned.prior_precision), dict(digits_tuned.tuning))
    grid = doctor.grid_argmin(digits_tuned, _loader("digits_mlp", "val"))
    # tune's grid (100 points over 1e-4..1e4) and this one (¼ decade steps) agree to a step
    assert abs(math.log10(grid) - math.log10(before[0])) <= 0.25
    assert (float(digits_tuned.prior_precision), dict(digits_tuned.tuning)) == before


def test_worst_ranks_skipped_below_ok():
    F = doctor.Finding
    assert doctor.worst([F("a", "ok"), F("b", "skipped")]) == "ok"
    assert doctor.worst([F("a", "skipped")]) == "skipped"
    assert doctor.worst([F("a", "skipped"), F("b", "warning")]) == "warning"
    assert doctor.worst([]) == "ok"
    assert not doctor.fails("ok", "warning") and doctor.fails("error", "warning")
