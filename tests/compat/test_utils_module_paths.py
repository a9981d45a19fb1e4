"""laplace-torch's `laplace.utils` helpers and `laplace.curvature.<library>` module paths under
`laplace_cli`, side by side with laplace-torch 0.3 where it is installed (float64, rtol 1e-4).

Names: kron, block_diag, invsqrt_precision, diagonal_add_scalar, symeig, normal_samples,
SoDSampler, RunningNLLMetric, FeatureReduction, Kron / KronDecomposed (refused with
NotImplementedError), the modules laplace_cli.curvature.{backpack,asdl,asdfghjkl,curvlinops}
and the Asdfghjkl* backend names.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch.nn import functional as F

from laplace_cli import curvature, utils
from laplace_cli.core.errors import BadInputError
from laplace_cli.utils.feature_extractor import FeatureExtractor, FeatureReduction

try:
    import laplace.utils as torch_utils
except Exception:  # laplace-torch not installed: the checks against it are skipped
    torch_utils = None

needs_lt = pytest.mark.skipif(torch_utils is None, reason="laplace-torch not installed")
RTOL = 1e-4


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _spd(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3 * n, generator=g)
    return X @ X.T + 0.1 * torch.eye(n)


def test_kron_and_block_diag():
    a, b = torch.randn(2, 3), torch.randn(4, 5)
    assert torch.allclose(utils.kron(a, b), torch.kron(a, b))
    blocks = [torch.randn(2, 2), torch.randn(3, 3)]
    M = utils.block_diag(blocks)
    assert M.shape == (5, 5)
    assert torch.equal(M[:2, :2], blocks[0]) and torch.equal(M[2:, 2:], blocks[1])
    assert torch.count_nonzero(M[:2, 2:]) == 0
    with pytest.raises(BadInputError):
        utils.kron(torch.randn(3), b)


def test_invsqrt_precision_is_the_scale_of_the_covariance():
    M = _spd(6)
    L = utils.invsqrt_precision(M)
    assert torch.allclose(L, L.tril())
    assert torch.allclose(L @ L.T, torch.linalg.inv(M), rtol=RTOL, atol=1e-10)


def test_diagonal_add_scalar_and_symeig():
    M = torch.randn(5, 5)
    assert torch.allclose(utils.diagonal_add_scalar(M, 1.5), M + 1.5 * torch.eye(5))
    X = torch.randn(30, 4)
    low_rank = X @ X.T
    vals, vecs = utils.symeig(low_rank)
    assert torch.all(vals >= 0)
    assert torch.allclose(vecs @ torch.diag(vals) @ vecs.T, low_rank, atol=1e-8)


def test_normal_samples_shapes_and_errors():
    mean = torch.randn(4, 2)
    g = torch.Generator().manual_seed(0)
    assert utils.normal_samples(mean, torch.ones(4, 2), 7, generator=g).shape == (7, 4, 2)
    cov = torch.eye(2).expand(4, 2, 2).clone()
    assert utils.normal_samples(mean, cov, 7, generator=g).shape == (7, 4, 2)
    with pytest.raises(BadInputError):
        utils.normal_samples(mean, torch.ones(3), 7)


def test_running_nll_metric_matches_offline_nll():
    metric = utils.RunningNLLMetric(ignore_index=-1)
    probs = torch.softmax(torch.randn(6, 5, 3), -1)
    targets = torch.randint(3, (6, 5))
    targets[0, :2] = -1
    metric.update(probs[:3], targets[:3])
    metric.update(probs[3:], targets[3:])
    offline = F.nll_loss(probs.log().reshape(-1, 3), targets.reshape(-1), ignore_index=-1)
    assert math.isclose(metric.compute().item(), offline.item(), rel_tol=1e-10)
    metric.reset()
    metric.update(probs[:1], targets[:1])
    assert metric.n_valid_labels.item() == 3


def test_feature_reduction_enum_is_accepted():
    assert [fr.value for fr in FeatureReduction] == ["pick_first", "pick_last", "average"]
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    fe = FeatureExtractor(model, feature_reduction=FeatureReduction.AVERAGE)
    assert fe.feature_reduction == "average"
    with pytest.raises(BadInputError):
        FeatureExtractor(model, feature_reduction="max")


def test_kron_matrix_classes_at_laplace_torch_paths():
    # The classes themselves are checked in tests/compat/test_kron_matrix.py.
    from laplace_cli.posterior.kron_matrix import Kron, KronDecomposed
    from laplace_cli.utils import matrix

    assert utils.Kron is matrix.Kron is Kron
    assert utils.KronDecomposed is matrix.KronDecomposed is KronDecomposed


def test_sod_sampler_draws_distinct_indices():
    s = utils.SoDSampler(20, 5, seed=1)
    idx = list(s)
    assert len(s) == 5 and len(set(int(i) for i in idx)) == 5


@pytest.mark.parametrize(
    ("module", "prefix", "hessian"),
    [
        ("backpack", "BackPack", False),
        ("asdl", "Asdl", True),
        ("asdfghjkl", "Asdfghjkl", True),
        ("curvlinops", "Curvlinops", True),
    ],
)
def test_curvature_module_paths_reexport_the_backend_names(module, prefix, hessian):
    mod = importlib.import_module(f"laplace_cli.curvature.{module}")
    names = ["Interface", "GGN", "EF"] + (["Hessian"] if hessian else [])
    for suffix in names:
        cls = getattr(mod, prefix + suffix)
        assert cls is getattr(curvature, prefix + suffix)
        assert issubclass(cls, curvature.CurvatureInterface)
    assert mod.__dict__[prefix + "GGN"].curvature == "ggn"
    assert mod.__dict__[prefix + "EF"].curvature == "ef"


@needs_lt
def test_helpers_match_laplace_torch():
    a, b = torch.randn(3, 2), torch.randn(2, 4)
    assert torch.allclose(utils.kron(a, b), torch_utils.kron(a, b), rtol=RTOL)
    blocks = [torch.randn(2, 2), torch.randn(3, 3)]
    assert torch.equal(utils.block_diag(blocks), torch_utils.block_diag(blocks))
    M = _spd(5, seed=3)
    assert torch.allclose(
        utils.invsqrt_precision(M), torch_utils.invsqrt_precision(M), rtol=RTOL, atol=1e-10
    )
    assert torch.allclose(
        utils.diagonal_add_scalar(M, 0.7), torch_utils.diagonal_add_scalar(M, 0.7)
    )
    for ours, theirs in zip(utils.symeig(M), torch_utils.symeig(M)):
        assert torch.allclose(ours, theirs, rtol=RTOL, atol=1e-10)
    mean, var = torch.randn(4, 3), torch.rand(4, 3) + 0.1
    ours = utils.normal_samples(mean, var, 5, generator=torch.Generator().manual_seed(2))
    theirs = torch_utils.normal_samples(mean, var, 5, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(ours, theirs, rtol=RTOL)
    assert torch.equal(
        torch.stack(list(utils.SoDSampler(30, 6, seed=4))),
        torch.stack(list(torch_utils.SoDSampler(30, 6, seed=4))),
    )
    assert [fr.value for fr in FeatureReduction] == [
        fr.value for fr in torch_utils.feature_extractor.FeatureReduction
    ]


@needs_lt
def test_running_nll_metric_matches_laplace_torch():
    pytest.importorskip("torchmetrics")
    probs = torch.softmax(torch.randn(4, 3, 5), -1)
    targets = torch.randint(5, (4, 3))
    ours, theirs = utils.RunningNLLMetric(), torch_utils.RunningNLLMetric()
    for i in range(0, 4, 2):
        ours.update(probs[i : i + 2], targets[i : i + 2])
        theirs.update(probs[i : i + 2], targets[i : i + 2])
    assert math.isclose(ours.compute().item(), theirs.compute().item(), rel_tol=RTOL)


@pytest.mark.parametrize("name", ["sigma_noise", "prior_precision", "prior_mean"])
def test_flavours_refuse_string_hyperparameters_with_value_error(name):
    from laplace_cli import DiagLaplace, KronLLLaplace

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    for flavour in (DiagLaplace, KronLLLaplace):
        with pytest.raises(ValueError, match=name):
            flavour(model, "regression", **{name: "1.2"})


def test_dict_batch_without_its_key_raises_key_error_too():
    from laplace_cli.core.batches import split_batch

    batch = {"x": torch.ones(2, 3), "y": torch.zeros(2)}
    for kwargs in ({"x_key": "x"}, {"x_key": "nope", "y_key": "y"}):
        with pytest.raises(KeyError) as info:
            split_batch(batch, **kwargs)
        assert isinstance(info.value, BadInputError)
        assert "dict batch has no" in str(info.value) and not str(info.value).startswith("'")
