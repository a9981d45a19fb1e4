"""laplace-torch's public names under `laplace_cli`, side by side with laplace-torch 0.3.

Each name is called the same way on both libraries (float64, tiny models) and must give the
same result to rtol 1e-4: the flavour classes (posterior precision in dense form, log marginal
likelihood, GLM predictive), the factory's flavour choice, the backend classes, the subnetwork
masks (same indices; random ones under the same seed), FeatureExtractor and the helpers.
Deliberate differences are asserted as such (docs/migrating.md). Skipped without laplace-torch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

laplace = pytest.importorskip("laplace")
pytest.importorskip("curvlinops")

import laplace.utils as torch_utils  # noqa: E402
from laplace import curvature as torch_curvature  # noqa: E402

import laplace_cli  # noqa: E402
from laplace_cli import curvature, utils  # noqa: E402
from laplace_cli.core.errors import BadInputError  # noqa: E402

RTOL = 1e-4


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).detach(), torch.as_tensor(b).detach()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def dense(precision) -> torch.Tensor:
    """A posterior precision in dense (P, P) form, whatever structure's form it comes in."""
    if hasattr(precision, "to_matrix"):
        return precision.to_matrix()
    if hasattr(precision, "to_dense") and not isinstance(precision, torch.Tensor):
        return precision.to_dense()
    precision = torch.as_tensor(precision)
    return torch.diag(precision) if precision.ndim == 1 else precision


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))


def make_loader(likelihood: str = "classification", n: int = 30, seed: int = 1) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = torch.randint(0, 3, (n,), generator=g) if likelihood == "classification" else x.sin()
    return DataLoader(TensorDataset(x, y), batch_size=10)


FLAVOURS = [
    ("DiagLaplace", {}),
    ("KronLaplace", {}),
    ("FullLaplace", {}),
    ("DiagLLLaplace", {}),
    ("KronLLLaplace", {}),
    ("FullLLLaplace", {}),
    ("DiagSubnetLaplace", {"subnetwork_indices": torch.tensor([0, 4, 17, 30, 41, 60, 66])}),
    ("FullSubnetLaplace", {"subnetwork_indices": torch.tensor([1, 5, 18, 33, 44, 61, 65])}),
]


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize(("name", "extra"), FLAVOURS, ids=[f[0] for f in FLAVOURS])
def test_flavour_matches_laplace_torch(name, extra, likelihood):
    model = make_model()
    loader = make_loader(likelihood)
    kw = dict(extra, prior_precision=2.0)
    if likelihood == "regression":
        kw["sigma_noise"] = 0.5
    ours = getattr(laplace_cli, name)(model, likelihood, **kw)
    theirs = getattr(laplace, name)(model, likelihood, **kw)
    assert isinstance(ours, laplace_cli.Laplace)
    ours.fit(loader)
    theirs.fit(loader)
    errs = {
        "precision": rel_err(dense(ours.posterior_precision), dense(theirs.posterior_precision))
    }
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(5))
    if likelihood == "classification":
        errs["probit"] = rel_err(ours(x, link_approx="probit"), theirs(x, link_approx="probit"))
    else:
        (m1, v1), (m2, v2) = ours(x), theirs(x)
        errs["mean"], errs["var"] = rel_err(m1, m2), rel_err(v1, v2)
    delta = torch.tensor(3.0)
    errs["lml"] = rel_err(
        ours.log_marginal_likelihood(prior_precision=delta),
        theirs.log_marginal_likelihood(prior_precision=delta),
    )
    assert all(v <= RTOL for v in errs.values()), errs


KEYS = [
    ("all", "diag"),
    ("all", "kron"),
    ("all", "full"),
    ("last_layer", "diag"),
    ("last_layer", "kron"),
    ("last_layer", "full"),
    ("subnetwork", "diag"),
    ("subnetwork", "full"),
]


@pytest.mark.parametrize(("subset", "structure"), KEYS)
def test_factory_returns_laplace_torch_flavour(subset, structure):
    model = make_model()
    kw = {"subnetwork_indices": torch.arange(5)} if subset == "subnetwork" else {}
    ours = laplace_cli.Laplace(model, "classification", subset, structure, **kw)
    theirs = laplace.Laplace(model, "classification", subset, structure, **kw)
    assert type(ours).__name__ == type(theirs).__name__
    for base in type(theirs).__mro__:
        if base.__module__.startswith("laplace.") and hasattr(laplace_cli, base.__name__):
            assert isinstance(ours, getattr(laplace_cli, base.__name__)), base.__name__
    # The flavour's module path is laplace-torch's, renamed.
    assert type(ours).__module__ == type(theirs).__module__.replace("laplace.", "laplace_cli.")


def test_default_factory_is_kron_last_layer_and_plain_laplace_still_works():
    la = laplace_cli.Laplace(make_model(), "classification", hessian_structure="kron")
    assert isinstance(la, laplace_cli.KronLaplace) and isinstance(la, laplace_cli.KronLLLaplace)
    assert la.subset_of_weights.value == "last_layer"
    assert type(laplace.Laplace(make_model(), "classification")).__name__ == "KronLLLaplace"


def test_flavour_positional_signature_is_laplace_torch_s():
    # laplace-torch's order: model, likelihood, sigma_noise, prior_precision, prior_mean, ...
    ours = laplace_cli.DiagLaplace(make_model(), "regression", 0.5, 2.0)
    assert float(ours.sigma_noise) == 0.5 and float(ours.prior_precision) == 2.0
    sub = laplace_cli.FullSubnetLaplace(make_model(), "regression", torch.arange(4), 0.5)
    assert sub.n_params_subnet == 4 and float(sub.sigma_noise) == 0.5


def test_function_space_and_refused_options_are_clear():
    model = make_model()
    # function-space Laplace exists (tests/laplace/test_functional_laplace.py); ELLA/VaLLA do not
    assert isinstance(
        laplace_cli.Laplace(model, "classification", "all", "gp"), laplace_cli.FunctionalLaplace
    )
    assert isinstance(
        laplace_cli.FunctionalLLLaplace(model, "classification", n_subset=10),
        laplace_cli.BaseFunctionalLaplace,
    )
    for call in (lambda: laplace_cli.ELLA(model, "classification"),):
        with pytest.raises(NotImplementedError, match="ELLA"):
            call()
    with pytest.raises(BadInputError, match="damping"):
        laplace_cli.KronLaplace(model, "classification", damping=True)
    with pytest.raises(NotImplementedError, match="abstract"):
        laplace_cli.ParametricLaplace(model, "classification")
    for hessian in (curvature.AsdlHessian, curvature.CurvlinopsHessian):
        # the exact Hessian: kron is created and refused at fit, as in laplace-torch
        la = laplace_cli.KronLaplace(model, "classification", backend=hessian)
        with pytest.raises(BadInputError, match="'ggn'"):
            la.fit([(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))])
    with pytest.raises(BadInputError, match="asdl_fisher_kwargs"):
        laplace_cli.DiagLaplace(model, "classification", asdl_fisher_kwargs={"n_mc_samples": 3})
    with pytest.raises(BadInputError, match="not understood"):
        laplace_cli.DiagLaplace(model, "classification", backend_kwargs={"foo": 1})


@pytest.mark.parametrize(
    ("name", "curv"),
    [
        ("CurvlinopsGGN", "ggn"),
        ("CurvlinopsEF", "ef"),
        ("AsdlGGN", "ggn"),
        ("AsdlEF", "ef"),
        ("BackPackGGN", "ggn"),
        ("BackPackEF", "ef"),
    ],
)
def test_backend_classes_select_the_same_curvature(name, curv):
    """Same backend class on both: the same posterior precision (diag over all weights)."""
    model = make_model()
    loader = make_loader()
    ours = laplace_cli.DiagLaplace(model, "classification", backend=getattr(curvature, name))
    assert ours.curvature.value == curv
    theirs = laplace.DiagLaplace(model, "classification", backend=getattr(torch_curvature, name))
    ours.fit(loader)
    theirs.fit(loader)
    assert rel_err(dense(ours.posterior_precision), dense(theirs.posterior_precision)) <= RTOL


def test_backend_stochastic_selects_mc_fisher():
    la = laplace_cli.Laplace(
        make_model(),
        "classification",
        "all",
        "diag",
        backend=curvature.CurvlinopsGGN,
        backend_kwargs={"stochastic": True, "num_samples": 5},
    )
    assert la.curvature.value == "mc_fisher" and la.n_mc_samples == 5
    # an instance is a backend object (tests/compat/test_backend_objects.py), not a selector
    with pytest.raises(BadInputError, match="class, not an instance"):
        laplace_cli.Laplace(
            make_model(),
            "classification",
            "all",
            "diag",
            backend=curvature.CurvlinopsGGN(make_model(), "classification"),
        )


# --- subnetwork masks --------------------------------------------------------------------


def _select_both(name: str, *args, loader=None, **kwargs):
    model = make_model()
    ours = getattr(utils, name)(model, *args, **kwargs).select(loader)
    theirs = getattr(torch_utils, name)(model, *args, **kwargs).select(loader)
    return ours, theirs


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("LargestMagnitudeSubnetMask", (20,)),
        ("ParamNameSubnetMask", (["2.weight", "4.bias"],)),
        ("ModuleNameSubnetMask", (["0", "4"],)),
        ("LastLayerSubnetMask", ()),
    ],
)
def test_deterministic_masks_match(name, args):
    ours, theirs = _select_both(name, *args, loader=make_loader())
    assert ours.dtype == torch.int64 and torch.equal(ours, theirs)


def test_random_mask_matches_under_the_same_seed():
    torch.manual_seed(3)
    ours = utils.RandomSubnetMask(make_model(), 25)
    theirs = torch_utils.RandomSubnetMask(make_model(), 25)
    torch.manual_seed(11)
    a = ours.select()
    torch.manual_seed(11)
    b = theirs.select()
    assert torch.equal(a, b) and ours.n_params_subnet == 25
    with pytest.raises(ValueError, match="already selected"):
        ours.select()


def test_largest_variance_diag_laplace_mask_matches():
    model, loader = make_model(), make_loader()
    ours = utils.LargestVarianceDiagLaplaceSubnetMask(
        model, 15, laplace_cli.DiagLaplace(model, "classification")
    ).select(loader)
    theirs = torch_utils.LargestVarianceDiagLaplaceSubnetMask(
        model, 15, laplace.DiagLaplace(model, "classification")
    ).select(loader)
    assert torch.equal(ours, theirs)


def test_swag_variances_and_mask_match():
    model, loader = make_model(), make_loader()
    crit = nn.CrossEntropyLoss()
    kw = dict(n_snapshots_total=4, snapshot_freq=1, lr=0.05)
    ours = utils.fit_diagonal_swag_var(model, loader, crit, **kw)
    theirs = torch_utils.fit_diagonal_swag_var(model, loader, crit, **kw)
    assert rel_err(ours, theirs) <= RTOL
    a, b = _select_both("LargestVarianceSWAGSubnetMask", 12, loader=loader, swag_n_snapshots=4)
    assert torch.equal(a, b)


def test_cli_selector_and_mask_pick_the_same_indices():
    from laplace_cli.masks.selectors import parse_subnetwork, select_subnetwork

    model = make_model()
    for text, mask in (
        ("largest_magnitude:20", utils.LargestMagnitudeSubnetMask(model, 20)),
        ("param:2.weight,4.bias", utils.ParamNameSubnetMask(model, ["2.weight", "4.bias"])),
        ("last_layer", utils.LastLayerSubnetMask(model)),
    ):
        assert torch.equal(select_subnetwork(parse_subnetwork(text), model), mask.select())


def test_mask_errors():
    model = make_model()
    with pytest.raises(ValueError, match="larger than model"):
        utils.LargestMagnitudeSubnetMask(model, 10_000)
    with pytest.raises(AttributeError, match="select"):
        _ = utils.RandomSubnetMask(model, 3).indices
    with pytest.raises(ValueError, match="has children"):
        utils.ModuleNameSubnetMask(nn.Sequential(model), ["0"]).select()
    with pytest.raises(ValueError, match="train loader"):
        utils.LargestVarianceSWAGSubnetMask(model, 3).select()


# --- FeatureExtractor and helpers ------------------------------------------------------------


@pytest.mark.parametrize("last_layer_name", [None, "4"])
def test_feature_extractor_matches(last_layer_name):
    model = make_model()
    x = torch.randn(5, 3)
    ours = utils.FeatureExtractor(model, last_layer_name=last_layer_name)
    theirs = torch_utils.FeatureExtractor(model, last_layer_name=last_layer_name)
    (o1, f1), (o2, f2) = ours.forward_with_features(x), theirs.forward_with_features(x)
    assert rel_err(o1, o2) == 0 and rel_err(f1, f2) == 0
    assert ours._last_layer_name == theirs._last_layer_name == "4"


def test_helpers_match():
    model = make_model()
    for prior in (torch.tensor([2.0]), torch.arange(1.0, 7.0), torch.rand(67) + 0.1):
        assert torch.equal(
            utils.expand_prior_precision(prior, model),
            torch_utils.expand_prior_precision(prior, model),
        )
    assert utils.parameters_per_layer(model) == [
        int(n) for n in torch_utils.parameters_per_layer(model)
    ]
    for structure in ("scalar", "layerwise", "diag"):
        a = utils.fix_prior_prec_structure(
            2.0, structure, 6, 67, torch.device("cpu"), torch.float64
        )
        b = torch_utils.fix_prior_prec_structure(
            2.0, structure, 6, 67, torch.device("cpu"), torch.float64
        )
        assert torch.equal(a, b)
    probs = torch.softmax(torch.randn(8, 3), -1)
    y = torch.randint(0, 3, (8,))
    assert torch.equal(utils.get_nll(probs, y), torch_utils.get_nll(probs, y))


def test_validate_matches():
    model, loader = make_model(), make_loader()
    ours = laplace_cli.DiagLLLaplace(model, "classification").fit(loader)
    theirs = laplace.DiagLLLaplace(model, "classification")
    theirs.fit(loader)
    a = utils.validate(ours, loader, utils.get_nll, pred_type="glm", link_approx="probit")
    b = torch_utils.validate(
        theirs, loader, torch_utils.get_nll, pred_type="glm", link_approx="probit"
    )
    assert abs(a - b) <= RTOL * abs(b)


def test_largest_magnitude_ties_resolve_as_laplace_torch():
    """Zero biases tie at |θ| = 0: both rank with argsort(descending=True), same picks."""
    model = make_model()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.bias.zero_()
    n_nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    ours = utils.LargestMagnitudeSubnetMask(model, n_nonzero + 5).select()
    theirs = torch_utils.LargestMagnitudeSubnetMask(model, n_nonzero + 5).select()
    assert torch.equal(ours, theirs)
