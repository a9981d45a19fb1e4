"""jacobian_products against the dense Jacobian built by dense_from_factors."""

import pytest
import torch

from laplace_cli.subsets import jacobian_products
from laplace_cli.subsets.base import DenseFactor, LayerFactor, dense_from_factors


def _factors(batch, n_out, t=1, dense=False, seed=0, d_in=5):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    facs = [
        LayerFactor(r(batch, t, d_in), r(batch, n_out, t, 4)),  # weight 4×d_in
        LayerFactor(None, r(batch, n_out, 1, 4)),  # its bias
        LayerFactor(r(batch, 1, 3), r(batch, n_out, 1, 7)),  # weight 7×3, no bias
    ]
    if dense:
        facs.append(DenseFactor(r(batch, n_out, 6)))
    return facs


@pytest.mark.parametrize("n_out,k", [(10, 10), (10, 1), (1, 1), (3, 2)])
@pytest.mark.parametrize("t,dense", [(1, False), (3, False), (1, True)])
def test_gram_equals_dense(n_out, k, t, dense):
    facs = _factors(9, n_out, t, dense)
    W = torch.randn(9, n_out, k, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    J = dense_from_factors(facs)
    m = torch.einsum("bck,bcp->bkp", W, J).reshape(-1, J.shape[-1])
    torch.testing.assert_close(jacobian_products.gram(W, facs), m.T @ m, rtol=1e-12, atol=1e-12)


def test_factored_gram_path_is_taken_for_many_outputs():
    parts = jacobian_products._all_outer(_factors(9, 10))
    assert parts is not None and jacobian_products._factored_gram_cheaper(parts, 10)
    assert not jacobian_products._factored_gram_cheaper(
        jacobian_products._all_outer(_factors(9, 1)), 1
    )


@pytest.mark.parametrize("n_out", [1, 4, 10])
@pytest.mark.parametrize("t,dense", [(1, False), (2, False), (1, True)])
@pytest.mark.parametrize("cap", [None, 30])
def test_matmul_equals_dense(n_out, t, dense, cap):
    facs = _factors(6, n_out, t, dense, seed=2)
    J = dense_from_factors(facs)
    V = torch.randn(
        J.shape[-1], 11, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    out = jacobian_products.matmul(facs, V, max_elements=cap)
    torch.testing.assert_close(out, J @ V, rtol=1e-12, atol=1e-12)


def _no_dense(*args, **kwargs):
    raise AssertionError("the dense Jacobian was built")


def test_factored_paths_never_build_the_dense_jacobian(monkeypatch):
    """With ten outputs and wide inputs both products take the factored path (C× fewer flops)."""
    facs = _factors(5, 10, d_in=40, seed=4)
    J = dense_from_factors(facs)
    W = torch.randn(5, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    V = torch.randn(J.shape[-1], 7, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    m = torch.einsum("bck,bcp->bkp", W, J).reshape(-1, J.shape[-1])
    monkeypatch.setattr(jacobian_products, "dense_from_factors", _no_dense)
    torch.testing.assert_close(jacobian_products.gram(W, facs), m.T @ m, rtol=1e-12, atol=1e-12)
    for cap in (None, 50):
        out = jacobian_products.matmul(facs, V, max_elements=cap)
        torch.testing.assert_close(out, J @ V, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("identity", [True, False])
def test_matmul_with_a_shared_output_jacobian(identity, monkeypatch):
    """A last layer: weight and bias share one G, the same for every example (stride 0)."""
    g = torch.Generator().manual_seed(7)
    n_out, batch, d = 6, 5, 30
    G0 = torch.eye(n_out, dtype=torch.float64)
    if not identity:
        G0 = torch.randn(n_out, n_out, dtype=torch.float64, generator=g)
    G = G0.reshape(1, n_out, 1, n_out).expand(batch, n_out, 1, n_out)
    phi = torch.randn(batch, 1, d, dtype=torch.float64, generator=g)
    facs = [LayerFactor(phi, G), LayerFactor(None, G)]
    J = dense_from_factors(facs)
    V = torch.randn(J.shape[-1], 9, dtype=torch.float64, generator=g)
    monkeypatch.setattr(jacobian_products, "dense_from_factors", _no_dense)
    assert len(jacobian_products._same_output_jacobian(jacobian_products._all_outer(facs))) == 1
    torch.testing.assert_close(jacobian_products.matmul(facs, V), J @ V, rtol=1e-12, atol=1e-12)
