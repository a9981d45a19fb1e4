"""Subnetwork Laplace against the all-weights posterior and dense sub-blocks (float64, tiny models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from laplace_cli import Laplace
from laplace_cli.masks import largest_variance_indices
from laplace_cli.subsets.subnetwork import (
    Subnetwork,
    indices_by_module_name,
    indices_by_param_name,
    largest_magnitude_indices,
    random_indices,
)
from tests import reference as ref
from tests.conftest import tiny_cnn, tiny_data, tiny_mlp
from tests.laplace.test_reference import assert_close, loader

LIKELIHOODS = ["classification", "regression", "binary"]


def all_names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("structure", ["diag", "full"])
def test_all_indices_equal_all_weights(float64, likelihood, structure):
    model = tiny_mlp()
    X, y = tiny_data(likelihood)
    la_all = Laplace(model, likelihood, "all", structure, prior_precision=0.8).fit(loader(X, y))
    la_sub = Laplace(
        model,
        likelihood,
        "subnetwork",
        structure,
        subnetwork_indices=torch.arange(la_all.n_params),
        prior_precision=0.8,
    ).fit(loader(X, y))
    assert la_sub.subset.names == la_all.subset.names
    assert_close(la_sub.mean, la_all.mean)
    assert_close(la_sub.posterior.curvature_dense(), la_all.posterior.curvature_dense())
    assert_close(la_sub.log_marginal_likelihood(), la_all.log_marginal_likelihood(), rtol=1e-10)
    _, v_sub = la_sub.functional_variance(X)
    _, v_all = la_all.functional_variance(X)
    assert_close(v_sub, v_all, what="functional variance")


@pytest.mark.parametrize("curvature", ["ggn", "ef"])
@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_subset_equals_dense_sub_block(float64, curvature, model_name):
    if model_name == "mlp":
        model = tiny_mlp()
        X, y = tiny_data("classification")
    else:
        model = tiny_cnn()
        X, y = tiny_data("classification", n=6, n_out=3, image=True)
    names = all_names(model)
    dense = (ref.ggn if curvature == "ggn" else ref.empirical_fisher)(
        model, names, X, y, "classification"
    )
    idx = random_indices(model, 17, torch.Generator().manual_seed(4))
    full = Laplace(
        model, "classification", "subnetwork", "full", subnetwork_indices=idx, curvature=curvature
    ).fit(loader(X, y, bs=4))
    diag = Laplace(
        model, "classification", "subnetwork", "diag", subnetwork_indices=idx, curvature=curvature
    ).fit(loader(X, y, bs=4))
    assert_close(full.posterior.curvature_dense(), dense[idx][:, idx], what="full sub-block")
    assert_close(diag.posterior.h, dense.diagonal()[idx], what="diag sub-block")
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert_close(full.mean_subnet, theta[idx])
    assert_close(full.mean, theta)  # over all parameters, as laplace-torch
    # The GLM predictive of the subnetwork: J_S Λ_S⁻¹ J_Sᵀ with the selected Jacobian columns.
    _, J = ref.jacobians(model, names, X)
    cov = torch.linalg.inv(dense[idx][:, idx] + torch.eye(len(idx)))
    _, f_var = full.functional_variance(X)
    assert_close(f_var, torch.einsum("ncp,pq,ndq->ncd", J[:, :, idx], cov, J[:, :, idx]))


class NormNet(nn.Module):
    """Linear → LayerNorm → tanh → Linear, plus a bare scale tensor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(3, 5)
        self.norm = nn.LayerNorm(5)
        self.fc2 = nn.Linear(5, 2)
        self.scale = nn.Parameter(torch.tensor([1.5, 0.5]))
        with torch.no_grad():
            self.norm.weight.add_(torch.randn(5) * 0.3)
            self.norm.bias.add_(torch.randn(5) * 0.3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.norm(self.fc1(x)))) * self.scale


def test_only_touched_tensors_are_differentiated(float64, monkeypatch):
    """Selected Linear entries use layer factors; only touched non-Linear tensors get autodiff."""
    model = NormNet()
    X, y = tiny_data("classification", n_out=2)
    differentiated: list[list[str]] = []
    original = Subnetwork._dense_selected

    def spy(self, x, names):
        differentiated.append(list(names))
        return original(self, x, names)

    monkeypatch.setattr(Subnetwork, "_dense_selected", spy)
    names = all_names(model)
    dense = ref.ggn(model, names, X, y, "classification")
    linear_only = torch.cat(
        [indices_by_param_name(model, "fc1.weight")[::4], indices_by_param_name(model, "fc2.bias")]
    )
    la = Laplace(model, "classification", "subnetwork", "full", subnetwork_indices=linear_only).fit(
        loader(X, y)
    )
    assert differentiated == []
    assert_close(la.posterior.curvature_dense(), dense[linear_only][:, linear_only])

    mixed = torch.cat([linear_only, indices_by_param_name(model, ["norm.weight", "scale"])[1:4]])
    la = Laplace(model, "classification", "subnetwork", "full", subnetwork_indices=mixed).fit(
        loader(X, y)
    )
    idx = la.subset.indices
    assert differentiated and all(sorted(d) == ["norm.weight", "scale"] for d in differentiated)
    assert_close(la.posterior.curvature_dense(), dense[idx][:, idx])


def test_frozen_parameters_are_excluded(float64):
    model = tiny_mlp()
    model[0].weight.requires_grad_(False)  # e.g. a frozen base weight under LoRA
    X, y = tiny_data("classification")
    names = all_names(model)
    assert "0.weight" not in names
    dense = ref.ggn(model, names, X, y, "classification")
    P = dense.shape[0]
    la = Laplace(
        model, "classification", "subnetwork", "full", subnetwork_indices=torch.arange(P)
    ).fit(loader(X, y))
    assert la.subset.names == names
    assert_close(la.posterior.curvature_dense(), dense)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match=r"must lie in \[0, 29\)"):
        Subnetwork(model, [P])
    with pytest.raises(ValueError, match="is frozen"):
        indices_by_param_name(model, "0.weight")


def test_mask_helpers(float64):
    model = tiny_mlp()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    top = largest_magnitude_indices(model, 6)
    assert set(top.tolist()) == set(torch.argsort(theta.abs(), descending=True)[:6].tolist())
    assert torch.equal(top, torch.sort(top).values)

    r1 = random_indices(model, 10, torch.Generator().manual_seed(3))
    r2 = random_indices(model, 10, torch.Generator().manual_seed(3))
    assert torch.equal(r1, r2) and torch.unique(r1).numel() == 10
    assert not torch.equal(r1, random_indices(model, 10, torch.Generator().manual_seed(4)))

    # tiny_mlp: 0.weight (15), 0.bias (5), 2.weight (20), 2.bias (4)
    assert torch.equal(indices_by_param_name(model, "2.weight"), torch.arange(20, 40))
    assert torch.equal(
        indices_by_param_name(model, ["0.bias", "2.bias"]),
        torch.cat([torch.arange(15, 20), torch.arange(40, 44)]),
    )
    assert torch.equal(indices_by_module_name(model, "2"), torch.arange(20, 44))
    with pytest.raises(ValueError, match="does not exist"):
        indices_by_param_name(model, "3.weight")
    with pytest.raises(ValueError, match="no trainable parameters"):
        indices_by_module_name(model, "1")  # the Tanh
    with pytest.raises(ValueError, match=r"in \[1, 44\]"):
        largest_magnitude_indices(model, 45)


def test_largest_variance_mask(float64):
    model = tiny_mlp()
    X, y = tiny_data("classification")
    la_diag = Laplace(model, "classification", "all", "diag", prior_precision=0.5).fit(loader(X, y))
    idx = largest_variance_indices(la_diag, 8)
    variance = 1.0 / (la_diag.posterior.h + 0.5)
    assert set(idx.tolist()) == set(torch.argsort(variance, descending=True)[:8].tolist())
    la = Laplace(model, "classification", "subnetwork", "full", subnetwork_indices=idx)
    la.fit(loader(X, y))
    dense = ref.ggn(model, all_names(model), X, y, "classification")
    assert_close(la.posterior.curvature_dense(), dense[idx][:, idx])
    full = Laplace(model, "classification", "all", "full").fit(loader(X, y))
    with pytest.raises(ValueError, match="hessian_structure='diag'"):
        largest_variance_indices(full, 3)


def test_subnetwork_validation(float64):
    model = tiny_mlp()
    with pytest.raises(ValueError, match="repeats indices"):
        Subnetwork(model, [1, 2, 2])
    with pytest.raises(ValueError, match="is empty"):
        Subnetwork(model, [])
    with pytest.raises(ValueError, match="integer indices"):
        Subnetwork(model, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="needs subnetwork_indices"):
        Laplace(model, "classification", "subnetwork", "full")
    with pytest.raises(ValueError, match="not available with subset 'subnetwork'"):
        Laplace(model, "classification", "subnetwork", "kron", subnetwork_indices=[0, 1])
    # Unsorted indices are sorted: the posterior's parameter order is the model's.
    sub = Subnetwork(model, [40, 3, 17])
    assert sub.indices.tolist() == [3, 17, 40]
    assert [g.name for g in sub.groups] == ["0.weight", "0.bias", "2.bias"]


def test_subnetwork_samples_and_nn_predictive(float64):
    """Weight samples only move the selected entries; forward_with puts them in place."""
    model = tiny_mlp()
    X, y = tiny_data("classification")
    idx = torch.tensor([2, 16, 25, 41])
    la = Laplace(model, "classification", "subnetwork", "full", subnetwork_indices=idx)
    la.fit(loader(X, y))
    theta = la._sample_subset(3, generator=torch.Generator().manual_seed(0))
    assert theta.shape == (3, 4)
    whole = la.sample(3, generator=torch.Generator().manual_seed(0))  # all parameters
    assert whole.shape == (3, sum(p.numel() for p in model.parameters()))
    assert torch.equal(whole[:, idx], theta)
    full_theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    full_theta[idx] = theta[0]
    params = ref.unflat(full_theta, ref.subset_params(model, all_names(model)))
    expected = torch.func.functional_call(model, params, (X,))
    assert_close(la.subset.forward_with(X, theta[0]), expected)
