"""GLM functional variance and joint covariance against brute force (float64, tiny models).

The oracle for every structure × subset × model × likelihood is J Σ Jᵀ with J the per-sample
Jacobian from `tests/reference.py` (a loop over samples with `jacrev`, independent of the
library) and Σ the dense inverse of `ref.dense_precision(la)`. The memory tests check that diag
and kron never ask for a dense (B, C, P) Jacobian and chunk rows by the budget. The cases and the
oracle here are shared with `tests/laplace/test_predictive_links.py`. low-rank and subnetwork cases skip
while their modules are absent.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from laplace_cli import Laplace
from laplace_cli.core.enums import Structure, Subset
from laplace_cli.core.errors import MemoryBudgetError
from laplace_cli.laplace.approximation import SUPPORTED
from tests import reference as ref
from tests.conftest import tiny_cnn, tiny_data, tiny_mlp

N_OUT = 3
LIKELIHOODS = ["classification", "regression", "binary"]
STRUCTURES = ["diag", "kron", "full", "lowrank"]
SUBSETS = ["all", "last_layer", "subnetwork"]
MODELS = ["mlp", "cnn", "seq"]


class SeqPool(nn.Module):
    """A Linear applied to every position of (B, T, d) inputs, then mean pooling: T > 1."""

    def __init__(self, d_in: int = 3, hidden: int = 4, n_out: int = N_OUT, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(d_in, hidden)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x):
        return self.head(torch.tanh(self.embed(x)).mean(1))


def make_case(model_name: str, likelihood: str):
    """(model, X, y) for one of the tiny models; targets drawn with a fixed seed."""
    if model_name == "mlp":
        model = tiny_mlp(n_out=N_OUT)
        X, y = tiny_data(likelihood, n=8, n_out=N_OUT)
    elif model_name == "cnn":
        model = tiny_cnn(n_out=N_OUT)
        X, y = tiny_data(likelihood, n=6, n_out=N_OUT, image=True)
    else:
        model = SeqPool()
        g = torch.Generator().manual_seed(3)
        X = torch.randn(7, 5, 3, generator=g)
        _, y = tiny_data(likelihood, n=7, n_out=N_OUT, seed=4)
    return model, X, y


def loader(X, y, bs=4):
    return [(X[i : i + bs], y[i : i + bs]) for i in range(0, len(X), bs)]


def subnetwork_indices(model: nn.Module) -> torch.Tensor:
    n = sum(p.numel() for p in model.parameters())
    return torch.arange(0, n, 3)


def skip_unavailable(subset: str, structure: str) -> None:
    """Skip combinations another engineer is still writing, or that the factory refuses."""
    if structure == "lowrank":
        pytest.importorskip("laplace_cli.posterior.lowrank")
    if subset == "subnetwork":
        pytest.importorskip("laplace_cli.subsets.subnetwork")
    if Structure(structure) not in SUPPORTED[Subset(subset)]:
        pytest.skip(f"{structure} is not supported with subset {subset}")


def fit(model, X, y, likelihood, subset, structure, **kwargs) -> Laplace:
    extra = dict(kwargs)
    if subset == "subnetwork":
        extra["subnetwork_indices"] = subnetwork_indices(model)
    if structure == "lowrank":
        extra.setdefault("rank", 4)
    if likelihood == "regression":
        extra.setdefault("sigma_noise", 0.8)
    la = Laplace(model, likelihood, subset, structure, temperature=0.7, **extra)
    if structure == "lowrank":
        # Any fitted low-rank posterior is a valid test case: a short Krylov run keeps it fast.
        la.posterior.oversample, la.posterior.n_iter = 2, 1
    return la.fit(loader(X, y))


def layerwise_prior(la: Laplace, structure: str, subset: str) -> None:
    """A prior precision per parameter tensor (scalar where a structure only takes a scalar)."""
    if structure in ("lowrank",) or subset == "subnetwork":
        la.prior_precision = 1.3
    else:
        la.prior_precision = torch.linspace(0.5, 2.0, len(la.subset.groups))


def flat_param_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


_JACOBIANS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def reference_jacobians(model: nn.Module, names: list[str], X: torch.Tensor):
    """`ref.jacobians`, cached: the tiny models and inputs are rebuilt from fixed seeds."""
    key = (
        tuple((n, tuple(p.shape), float(p.detach().sum())) for n, p in model.named_parameters()),
        tuple(names),
        tuple(X.shape),
        float(X.sum()),
        X.dtype,
    )
    if key not in _JACOBIANS:
        _JACOBIANS[key] = ref.jacobians(model, names, X)
    return _JACOBIANS[key]


def brute_force(la: Laplace, model: nn.Module, X: torch.Tensor):
    """(f, J, Σ): outputs and per-sample Jacobians from the reference, Σ = Λ⁻¹ dense."""
    if la.subset_of_weights == Subset.SUBNETWORK:
        f, J = reference_jacobians(model, flat_param_names(model), X)
        J = J[:, :, subnetwork_indices(model)]
    else:
        f, J = reference_jacobians(model, la.subset.names, X)
    sigma = torch.linalg.inv(ref.dense_precision(la))
    return f, J, 0.5 * (sigma + sigma.T)


def assert_close(actual, expected, rtol=1e-5, what=""):
    """Relative to the scale of `expected`; prints the worst entries on failure."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual - expected).abs()
    if not bool((err <= rtol * scale).all()):
        idx = torch.topk(err.reshape(-1), min(3, err.numel())).indices
        raise AssertionError(
            f"{what}: max abs error {err.max():.3e} (scale {scale:.3e}); worst at {idx.tolist()}: "
            f"got {actual.reshape(-1)[idx].tolist()}, expected {expected.reshape(-1)[idx].tolist()}"
        )


# --- functional variance and joint covariance ---------------------------------------------------


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("subset", SUBSETS)
@pytest.mark.parametrize("model_name", MODELS)
def test_functional_variance_matches_brute_force(
    float64, model_name, subset, structure, likelihood
):
    skip_unavailable(subset, structure)
    model, X, y = make_case(model_name, likelihood)
    la = fit(model, X, y, likelihood, subset, structure)
    layerwise_prior(la, structure, subset)
    f, J, sigma = brute_force(la, model, X)
    expected = torch.einsum("bcp,pq,bdq->bcd", J, sigma, J)
    f_mu, f_var = la.functional_variance(X)
    assert_close(f_mu, f, what="f_mu")
    assert_close(f_var, expected, what="J Σ Jᵀ")


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("subset", SUBSETS)
@pytest.mark.parametrize("model_name", MODELS)
def test_joint_covariance_matches_brute_force_and_marginals(float64, model_name, subset, structure):
    skip_unavailable(subset, structure)
    model, X, y = make_case(model_name, "regression")
    la = fit(model, X, y, "regression", subset, structure)
    layerwise_prior(la, structure, subset)
    f, J, sigma = brute_force(la, model, X)
    Jf = J.reshape(-1, J.shape[-1])  # (B·C, P)
    f_flat, cov = la(X, pred_type="glm", joint=True)
    assert_close(f_flat, f.reshape(-1), what="joint mean")
    assert_close(cov, Jf @ sigma @ Jf.T, what="joint covariance")
    _, marginal = la(X, pred_type="glm")
    n, c = f.shape
    blocks = cov.reshape(n, c, n, c).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (B, C, C)
    assert_close(blocks, marginal, what="diagonal blocks vs marginal")
    assert_close(cov, cov.T, rtol=1e-12, what="symmetry")


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_diagonal_output_is_the_diagonal(float64, structure):
    model, X, y = make_case("mlp", "regression")
    la = fit(model, X, y, "regression", "all", structure)
    _, f_var = la(X)
    _, f_diag = la(X, diagonal_output=True)
    assert f_diag.shape == (len(X), N_OUT)
    assert_close(f_diag, f_var.diagonal(dim1=-2, dim2=-1), rtol=1e-12, what="diagonal_output")


def test_empty_batch(float64):
    model, X, y = make_case("mlp", "classification")
    la = fit(model, X, y, "classification", "all", "kron")
    f_mu, f_var = la.functional_variance(X[:0])
    assert f_mu.shape == (0, N_OUT) and f_var.shape == (0, N_OUT, N_OUT)


# --- memory: no dense Jacobians for kron / diag, rows chunked by the budget ---------------------


@pytest.mark.parametrize("structure", ["diag", "kron"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("model_name", MODELS)
def test_kron_diag_never_build_dense_jacobians(float64, monkeypatch, model_name, subset, structure):
    model, X, y = make_case(model_name, "classification")
    la = fit(model, X, y, "classification", subset, structure)
    expected = la.functional_variance(X)[1]

    def refuse(*args, **kwargs):
        raise AssertionError("a dense (B, C, P) Jacobian was requested")

    monkeypatch.setattr(la.subset, "jacobians", refuse)
    seen: list[int] = []
    factors = la.subset.factors

    def spy(x):
        seen.append(x.shape[0])
        return factors(x)

    monkeypatch.setattr(la.subset, "factors", spy)
    la.joint_functional_covariance(X[:3])
    seen.clear()
    per_row, _ = la._factor_row_bytes[next(iter(la._factor_row_bytes))]
    # A budget of two rows: the batch must be processed in chunks of at most 2.
    la.max_memory = 4 * (2 * per_row + per_row // 2)
    _, chunked = la.functional_variance(X)
    assert max(seen) == 2 and sum(seen) == len(X), seen
    assert_close(chunked, expected, rtol=1e-12, what="chunked vs one batch")
    la(X, link_approx="mc", n_samples=3, generator=torch.Generator().manual_seed(0))
    la.uncertainty(X, n_samples=3, generator=torch.Generator().manual_seed(0))


def test_factor_bytes_do_not_scale_with_parameters_times_outputs(float64):
    """For an MLP (T = 1) the structured path holds layer inputs and output Jacobians only:
    per row Σ_layers (d_in + C·d_out), far below the C·P of one dense Jacobian row."""
    from laplace_cli.posterior.predictive import factor_bytes

    model = nn.Sequential(
        nn.Linear(50, 60), nn.Tanh(), nn.Linear(60, 70), nn.Tanh(), nn.Linear(70, 10)
    )
    X = torch.randn(4, 50)
    la = Laplace(model, "classification", "all", "kron")
    _, factors = la.subset.factors(X)
    per_row = factor_bytes(factors) / 4 / 8
    # Inputs d_in and output Jacobians C·d_out per layer; the last layer's G is the identity
    # cotangent, stored once (C² values) for the whole batch, not per row.
    expected = (50 + 10 * 60) + (60 + 10 * 70) + (70 + 10 * 10 / 4)
    assert per_row == expected
    assert per_row < 0.05 * 10 * la.n_params


def test_chunk_rows_follow_the_activations_and_the_budget():
    from laplace_cli.posterior.predictive import CHUNK_FLOOR_BYTES, factor_chunk_rows

    mib = 1024**2
    # Factors 10× the activations per row (C = 10): chunks hold 2× the batch's activations.
    assert factor_chunk_rows(1024, 10 * mib, mib, budget=10**12) == 204
    # Tiny rows: the floor keeps the whole batch together.
    assert factor_chunk_rows(256, 1000, 100, budget=10**12) == CHUNK_FLOOR_BYTES // 1000 > 256
    # The budget caps the chunk, and a chunk is never empty.
    assert factor_chunk_rows(1024, 10 * mib, mib, budget=30 * mib) == 3
    assert factor_chunk_rows(8, 10 * mib, mib, budget=1) == 1


def test_joint_covariance_refuses_a_batch_over_budget(float64):
    model, X, y = make_case("mlp", "regression")
    la = fit(model, X, y, "regression", "all", "kron")
    la.max_memory = 1000
    with pytest.raises(MemoryBudgetError, match="smaller batch"):
        la(X, joint=True)
