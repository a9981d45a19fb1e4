"""Adding a structure touches the structure table and one new module only.

The "new module" is this test: an isotropic posterior, Λ = (s·mean(diag H) + δ)·I, defined
here, registered with `posterior.table.register_structure`, fitted through
`Laplace(..., hessian_structure="iso")` on a tiny float64 MLP and checked against a dense
reference built from torch.autograd Jacobians (docs/design.md §5); then unregistered.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call, jacrev

from laplace_cli import Laplace
from laplace_cli.core.errors import BadInputError, MemoryBudgetError
from laplace_cli.posterior.base import Posterior, scale_curvature
from laplace_cli.posterior.memory import structure_bytes
from laplace_cli.posterior.table import (
    STRUCTURES,
    StructureSpec,
    register_structure,
    structure_spec,
    unregister_structure,
)
from laplace_cli.subsets.base import AllWeights
from tests.conftest import tiny_data, tiny_mlp


# --- the one new module: an isotropic posterior -----------------------------------------------
class IsoPosterior(Posterior):
    """Λ = λ·I with λ = s·mean(diag H) + δ (δ a scalar); H's diagonal is summed from dense J."""

    structure = "iso"  # type: ignore[assignment]
    needs_dense_jacobian = True

    def __init__(self, groups, dtype, device) -> None:
        super().__init__(groups, dtype, device)
        self.reset()

    def reset(self) -> None:
        self.h = torch.zeros(self.n_params, dtype=self.dtype, device=self.device)

    def accumulate(self, W, factors, J) -> None:
        m = torch.einsum("bck,bcp->bkp", W, J)
        self.h += (m**2).sum((0, 1))

    def _lam(self, prior, scale):
        if prior.numel() != 1:
            raise BadInputError("iso: the prior precision must be a scalar")
        return scale_curvature(self.h.mean(), scale, None) + prior.reshape(())

    def log_det(self, prior, scale):
        return self.n_params * torch.log(self._lam(prior, scale))

    def dense_precision(self, prior, scale):
        eye = torch.eye(self.n_params, dtype=self.dtype, device=self.device)
        return self._lam(prior, scale) * eye

    def diag_precision(self, prior, scale):
        return self._lam(prior, scale).expand(self.n_params)

    def functional_variance(self, prior, scale, factors=None, J=None):
        return torch.einsum("bcp,bdp->bcd", J, J) / self._lam(prior, scale)

    def sample(self, n, prior, scale, generator):
        eps = torch.randn(n, self.n_params, dtype=self.dtype, generator=generator)
        return eps / self._lam(prior, scale).sqrt()

    def state(self):
        return {"iso.curvature": self.h}

    def load_state(self, tensors):
        self.h = tensors["iso.curvature"].to(dtype=self.dtype, device=self.device).clone()


def _iso_bytes(groups, itemsize, rank=None):
    return sum(g.numel for g in groups) * itemsize


ISO = StructureSpec(
    name="iso",
    build=lambda groups, dtype, device, **_: IsoPosterior(groups, dtype, device),
    subsets=frozenset({"all", "last_layer"}),
    memory=_iso_bytes,
    memory_advice="use subset_of_weights=last_layer",
    state_keys="iso.",
)


@pytest.fixture
def iso():
    register_structure(ISO)
    try:
        yield ISO
    finally:
        unregister_structure("iso")


# --- the dense reference ------------------------------------------------------------------------
def _jacobians(model, X):
    """J (N, C, P) in `model.parameters()` order, and the outputs (N, C)."""
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}

    def f(*flat):
        return functional_call(model, dict(zip(names, flat)), (X,))

    jac = jacrev(f, argnums=tuple(range(len(names))))(*params.values())
    n, c = X.shape[0], jac[0].shape[1]
    J = torch.cat([j.reshape(n, c, -1) for j in jac], dim=2)
    return J, f(*params.values()).detach()


def test_a_registered_structure_fits_through_laplace_against_a_dense_reference(float64, iso):
    X, y = tiny_data("regression", n=10)
    model = tiny_mlp()
    sigma, delta = 0.7, 0.3
    la = Laplace(model, "regression", "all", "iso", sigma_noise=sigma, prior_precision=delta).fit(
        [(X[:6], y[:6]), (X[6:], y[6:])]
    )
    assert type(la.posterior) is IsoPosterior
    assert la.hessian_structure == "iso" and la.hessian_structure.value == "iso"

    J, f = _jacobians(model, X)
    P = J.shape[2]
    s = 1.0 / sigma**2
    H = torch.einsum("ncp,ncq->pq", J, J)  # regression GGN: Σ Jᵀ J
    lam = s * H.diagonal().mean() + delta
    precision = lam * torch.eye(P)
    torch.testing.assert_close(la.posterior_precision, precision, rtol=1e-10, atol=1e-12)

    # log p(D) ≈ log p(D|θ*) − ½ (log det Λ − log det P₀ + δ‖θ*‖²), Gaussian likelihood.
    r = y.reshape(f.shape) - f
    log_lik = (-0.5 * r**2 / sigma**2 - 0.5 * math.log(2 * math.pi * sigma**2)).sum()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    lml = log_lik - 0.5 * (P * torch.log(lam) - P * math.log(delta) + delta * theta @ theta)
    torch.testing.assert_close(la.log_marginal_likelihood(), lml, rtol=1e-10, atol=1e-10)

    f_mu, f_var = la(X[:4], pred_type="glm")
    torch.testing.assert_close(f_mu, f[:4], rtol=1e-10, atol=1e-10)
    var_ref = torch.einsum("ncp,ndp->ncd", J[:4], J[:4]) / lam
    torch.testing.assert_close(f_var, var_ref, rtol=1e-10, atol=1e-12)


def test_the_table_answers_for_a_registered_structure(float64, iso):
    groups = AllWeights(tiny_mlp()).groups
    assert structure_spec("iso") is ISO
    assert structure_bytes("iso", groups, 8) == sum(g.numel for g in groups) * 8
    with pytest.raises(MemoryBudgetError, match="^iso needs .*; use subset_of_weights=last_layer"):
        Laplace(tiny_mlp(), "regression", "all", "iso", max_memory=16)
    with pytest.raises(
        BadInputError, match="all: diag, full, iso, kron, lowrank; .*subnetwork: diag, full$"
    ):
        Laplace(tiny_mlp(), "regression", "subnetwork", "iso", subnetwork_indices=[0, 1])
    with pytest.raises(BadInputError, match="already registered"):
        register_structure(ISO)


def test_unregistered_names_are_refused_and_builtins_stay():
    assert "iso" not in STRUCTURES
    with pytest.raises(BadInputError, match="expected one of diag, kron, full, lowrank, got 'iso'"):
        Laplace(tiny_mlp(), "regression", "all", "iso")
    with pytest.raises(BadInputError, match="built in"):
        unregister_structure("kron")
    assert {s: spec.tuning_cache for s, spec in STRUCTURES.items()} == {
        "diag": True,
        "kron": True,
        "full": True,
        "lowrank": False,
    }
    assert [s for s, spec in STRUCTURES.items() if spec.needs_loader] == ["lowrank"]
