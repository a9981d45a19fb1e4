"""`Kron` / `KronDecomposed` (laplace_cli.utils) against dense algebra and laplace-torch 0.3.

Every operation is checked against the dense block-diagonal matrix built by hand, and side by
side with laplace-torch's classes (rtol 1e-4, float64; skipped when laplace-torch is absent).
`KronLaplace.H` / `.H_facs` / `.posterior_precision` are compared with laplace-torch's after the
same fit, and with this project's dense posterior precision.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import laplace_cli
from laplace_cli.curvature import CurvlinopsGGN
from laplace_cli.utils import Kron, KronDecomposed

RTOL = 1e-4
SIZES = [[5, 3], [5], [2, 5], [2]]  # Linear(3, 5) -> Linear(5, 2): weight, bias, weight, bias
P = 5 * 3 + 5 + 2 * 5 + 2


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def psd(n: int, g: torch.Generator) -> torch.Tensor:
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    return M @ M.T + 0.5 * torch.eye(n, dtype=torch.float64)


def factors(seed: int = 0) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[psd(n, g) for n in sizes] for sizes in SIZES]


def dense(kfacs: list[list[torch.Tensor]]) -> torch.Tensor:
    """Independent reference: the block-diagonal matrix of the Kronecker products."""
    blocks = [F[0] if len(F) == 1 else torch.kron(F[0], F[1]) for F in kfacs]
    return torch.block_diag(*blocks)


def mat_power(M: torch.Tensor, e: float) -> torch.Tensor:
    lam, Q = torch.linalg.eigh(M)
    return (Q * lam**e) @ Q.T


def test_kron_operations_match_dense_algebra() -> None:
    kf = factors()
    K, D = Kron(kf), dense(kf)
    assert len(K) == 4
    assert rel_err(K.to_matrix(), D) <= 1e-12
    assert rel_err(K.diag(), D.diagonal()) <= 1e-12
    assert rel_err(K.logdet(), torch.logdet(D)) <= 1e-10
    assert rel_err((K * 1.7).to_matrix(), 1.7 * D) <= 1e-12
    assert rel_err((2.0 * K).to_matrix(), 2.0 * D) <= 1e-12
    # Kron + Kron adds factor by factor (laplace-torch's definition, not the dense sum).
    kf2 = factors(1)
    S = K + Kron(kf2)
    assert (
        rel_err(S.to_matrix(), dense([[a + b for a, b in zip(F, G)] for F, G in zip(kf, kf2)]))
        <= 1e-12
    )
    W = torch.randn(4, 2, P, dtype=torch.float64)
    assert rel_err(K.bmm(W), W @ D) <= 1e-12
    assert rel_err(K.bmm(W[:, 0]), W[:, 0] @ D) <= 1e-12
    assert rel_err(K.bmm(W[0, 0]), W[0, 0] @ D) <= 1e-12
    with pytest.raises(ValueError):
        K.bmm(W, exponent=2)
    with pytest.raises(ValueError):
        K + 1.0
    with pytest.raises(ValueError):
        K * torch.ones(2)


def test_kron_decomposed_operations_match_dense_algebra() -> None:
    kf = factors(2)
    D = dense(kf)
    KD = Kron(kf).decompose()
    assert rel_err(KD.to_matrix(), D) <= 1e-10
    assert rel_err(KD.logdet(), torch.logdet(D)) <= 1e-10
    # one delta per block: the prior is added on the diagonal of each block
    deltas = torch.tensor([0.3, 1.1, 2.0, 0.7], dtype=torch.float64)
    Dd = D + torch.diag(torch.repeat_interleave(deltas, torch.tensor([15, 5, 10, 2])))
    KDd = KD * 0.8 + deltas
    Dd = 0.8 * D + (Dd - D)
    assert rel_err(KDd.to_matrix(), Dd) <= 1e-10
    assert rel_err(KDd.logdet(), torch.logdet(Dd)) <= 1e-10
    for e in (1.0, -1.0, -0.5):
        assert rel_err(KDd.to_matrix(exponent=e), mat_power(Dd, e)) <= 1e-9
        assert rel_err(KDd.diag(exponent=e), mat_power(Dd, e).diagonal()) <= 1e-9
    W = torch.randn(3, 2, P, dtype=torch.float64)
    assert rel_err(KDd.bmm(W, exponent=-0.5), W @ mat_power(Dd, -0.5)) <= 1e-9
    assert rel_err(KDd.inv_square_form(W), W @ torch.linalg.inv(Dd) @ W.transpose(1, 2)) <= 1e-9
    assert rel_err((KD + torch.tensor(2.5)).to_matrix(), D + 2.5 * torch.eye(P)) <= 1e-10
    with pytest.raises(ValueError):
        KD + torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError):
        KD + 1.0


def test_diagonal_block_without_eigenvectors() -> None:
    # A non-layer parameter's block: eigenvectors None stands for the identity.
    lam = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    KD = KronDecomposed([[None]], [[lam]]) + torch.tensor(0.5, dtype=torch.float64)
    assert rel_err(KD.to_matrix(exponent=-1), torch.diag(1 / (lam + 0.5))) <= 1e-14
    assert rel_err(KD.diag(), lam + 0.5) <= 1e-14
    w = torch.randn(3, dtype=torch.float64)
    assert rel_err(KD.bmm(w, exponent=1), w * (lam + 0.5)) <= 1e-14


def test_init_from_model_shapes() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.Conv1d(5, 4, 2))
    K = Kron.init_from_model(model, "cpu", torch.float64)
    shapes = [[tuple(f.shape) for f in F] for F in K.kfacs]
    assert shapes == [[(5, 5), (3, 3)], [(5, 5)], [(4, 4), (10, 10)], [(4, 4)]]
    assert all(float(f.abs().sum()) == 0 and f.dtype == torch.float64 for F in K.kfacs for f in F)


lt_matrix = pytest.importorskip("laplace.utils.matrix")


def test_side_by_side_with_laplace_torch_classes() -> None:
    kf = factors(3)
    ours, theirs = Kron(kf), lt_matrix.Kron([[f.clone() for f in F] for F in kf])
    W = torch.randn(3, 2, P, dtype=torch.float64)
    assert rel_err(ours.bmm(W), theirs.bmm(W)) <= RTOL
    assert rel_err(ours.logdet(), theirs.logdet()) <= RTOL
    assert rel_err(ours.diag(), theirs.diag()) <= RTOL
    assert rel_err((ours * 3.0).to_matrix(), (theirs * 3.0).to_matrix()) <= RTOL
    delta = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    od, td = ours.decompose() * 2.0 + delta, theirs.decompose() * 2.0 + delta
    assert rel_err(od.logdet(), td.logdet()) <= RTOL
    for e in (1.0, -1.0, -0.5):
        assert rel_err(od.bmm(W, exponent=e), td.bmm(W, exponent=e)) <= RTOL
        assert rel_err(od.to_matrix(e), td.to_matrix(e)) <= RTOL
        assert rel_err(od.diag(e), td.diag(e)) <= RTOL
    assert rel_err(od.inv_square_form(W), td.inv_square_form(W)) <= RTOL
    # damped K-FAC (√δ into each factor), laplace-torch's damping=True. laplace-torch's `+` and
    # `*` drop `damping` (a defect: its KronLaplace(damping=True) precision is undamped); here
    # they keep it, so compare with laplace-torch's object built with the deltas directly.
    od = Kron(kf).decompose(damping=True) + delta
    assert od.damping
    base = lt_matrix.Kron(kf).decompose()
    td = lt_matrix.KronDecomposed(base.eigenvectors, base.eigenvalues, delta, damping=True)
    assert rel_err(od.logdet(), td.logdet()) <= RTOL
    assert rel_err(od.to_matrix(-1), td.to_matrix(-1)) <= RTOL


def regression_setup() -> tuple[nn.Module, DataLoader]:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    X = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randn(20, 2, dtype=torch.float64)
    return model, DataLoader(TensorDataset(X, y), batch_size=6)


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_kron_laplace_forms_match_laplace_torch(subset: str) -> None:
    import laplace

    model, loader = regression_setup()
    kw = dict(subset_of_weights=subset, hessian_structure="kron", sigma_noise=0.4)
    ours = laplace_cli.Laplace(model, "regression", prior_precision=0.7, **kw)
    theirs = laplace.Laplace(model, "regression", prior_precision=0.7, **kw)
    if subset == "all":  # before fit: the zero Kron shaped like the model's parameters
        assert isinstance(ours.H, Kron)
        assert all(float(f.abs().sum()) == 0 for F in ours.H.kfacs for f in F)
        assert [[f.shape for f in F] for F in ours.H.kfacs] == [
            [f.shape for f in F] for F in theirs.H.kfacs
        ]
    ours.fit(loader)
    theirs.fit(loader)
    assert isinstance(ours.H, KronDecomposed) and isinstance(ours.H_facs, Kron)
    assert isinstance(ours.posterior_precision, KronDecomposed)
    assert rel_err(ours.H.to_matrix(), theirs.H.to_matrix()) <= RTOL
    assert rel_err(ours.H_facs.to_matrix(), theirs.H_facs.to_matrix()) <= RTOL
    P_ours = ours.posterior_precision.to_matrix()
    assert rel_err(P_ours, theirs.posterior_precision.to_matrix()) <= RTOL
    # the view is the engine's own posterior precision
    dense_engine = ours.posterior.dense_precision(ours.prior_precision, ours.curvature_scale())
    assert rel_err(P_ours, dense_engine) <= 1e-10
    assert rel_err(ours.posterior_precision.logdet(), ours.log_det_posterior_precision) <= 1e-10
    # a per-tensor prior reaches the view block by block
    n = len(ours.posterior_precision)
    ours.prior_precision = torch.linspace(0.5, 2.0, n, dtype=torch.float64)
    theirs.prior_precision = torch.linspace(0.5, 2.0, n, dtype=torch.float64)
    assert (
        rel_err(ours.posterior_precision.to_matrix(), theirs.posterior_precision.to_matrix())
        <= RTOL
    )


def test_backend_kron_matches_laplace_torch() -> None:
    from laplace.curvature import CurvlinopsGGN as TheirGGN

    model, loader = regression_setup()
    X, y = next(iter(loader))
    loss, K = CurvlinopsGGN(model, "regression").kron(X, y, N=len(X))
    loss_t, K_t = TheirGGN(model, "regression").kron(X, y, N=len(X))
    assert isinstance(K, Kron)
    assert rel_err(K.to_matrix(), K_t.to_matrix()) <= RTOL
    assert rel_err(loss, loss_t) <= RTOL
