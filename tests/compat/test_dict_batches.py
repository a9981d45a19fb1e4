"""Dict batches both ways: a model taking the whole mapping (laplace-torch's convention) and a
Hugging Face style model taking keyword tensors; `batches.passes_mapping` is the one rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from laplace_cli import Laplace
from laplace_cli.core.batches import passes_mapping
from laplace_cli.core.errors import BadInputError

from .behaviour_helpers import close, data, loader, mlp, needs_laplace_torch


class MappingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, data):
        return self.net(data["input_ids"] * data["scale"])


class KeywordModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, input_ids, scale=None):
        return self.net(input_ids * scale)


class OneKeyword(nn.Module):
    """One positional parameter named like a batch key: keywords (today's behaviour)."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, input_ids):
        return self.net(input_ids)


class StarArgs(nn.Module):
    """A wrapper that only forwards *args/**kwargs (as PEFT's PeftModel): looked through."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_base_model(self):
        return self.inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def _batches(X, y, scale):
    return [
        {"input_ids": X[i : i + 8], "scale": scale[i : i + 8], "labels": y[i : i + 8]}
        for i in range(0, len(X), 8)
    ]


def test_the_rule():
    batch = {"input_ids": torch.zeros(1), "scale": torch.zeros(1)}
    assert passes_mapping(MappingModel(), batch)
    assert not passes_mapping(KeywordModel(), batch)
    assert not passes_mapping(OneKeyword(), {"input_ids": torch.zeros(1)})
    assert passes_mapping(StarArgs(MappingModel()), batch)
    assert not passes_mapping(StarArgs(KeywordModel()), batch)


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("model_cls", [MappingModel, KeywordModel])
def test_both_conventions_give_the_tensor_posterior(model_cls, structure):
    X, y = data()
    scale = torch.full((len(X), 1), 0.5, dtype=torch.float64)
    model = model_cls()
    la = Laplace(model, "classification", "all", structure).fit(_batches(X, y, scale))
    plain = Laplace(model.net, "classification", "all", structure).fit(loader(X * 0.5, y))
    close(la.posterior_precision, plain.posterior_precision, rtol=1e-10)
    x = {"input_ids": X[:4], "scale": scale[:4]}
    close(la(x), plain(X[:4] * 0.5), rtol=1e-10)
    close(
        la(
            x,
            pred_type="nn",
            link_approx="mc",
            n_samples=3,
            generator=torch.Generator().manual_seed(0),
        ),
        plain(
            X[:4] * 0.5,
            pred_type="nn",
            link_approx="mc",
            n_samples=3,
            generator=torch.Generator().manual_seed(0),
        ),
        rtol=1e-10,
    )


def test_subnetwork_and_last_layer_take_the_mapping():
    X, y = data()
    scale = torch.full((len(X), 1), 0.5, dtype=torch.float64)
    model = MappingModel()
    idx = torch.tensor([0, 3, 20, 37])
    sub = Laplace(model, "classification", "subnetwork", "full", subnetwork_indices=idx)
    sub.fit(_batches(X, y, scale))
    ref = Laplace(model.net, "classification", "subnetwork", "full", subnetwork_indices=idx)
    ref.fit(loader(X * 0.5, y))
    close(sub.posterior_precision, ref.posterior_precision, rtol=1e-10)
    ll = Laplace(model, "classification", "last_layer", "kron").fit(_batches(X, y, scale))
    ll_ref = Laplace(model.net, "classification", "last_layer", "kron").fit(loader(X * 0.5, y))
    close(ll.posterior_precision, ll_ref.posterior_precision, rtol=1e-10)


@needs_laplace_torch
def test_mapping_model_matches_laplace_torch():
    from laplace import Laplace as TorchLaplace

    X, y = data()
    scale = torch.full((len(X), 1), 0.5, dtype=torch.float64)

    class Loader(list):
        dataset = list(range(len(X)))

    batches = _batches(X, y, scale)
    model = MappingModel()
    ours = Laplace(model, "classification", "all", "diag", prior_precision=2.0).fit(batches)
    theirs = TorchLaplace(model, "classification", "all", "diag", prior_precision=2.0)
    theirs.fit(Loader(batches))
    close(ours.posterior_precision, theirs.posterior_precision)
    x = {"input_ids": X[:4], "scale": scale[:4]}
    close(ours(x), theirs(x, pred_type="glm", link_approx="probit"))


def test_model_kwargs_reach_the_model():
    """`la(x, **model_kwargs)`: passed to every model call of the prediction (nn)."""

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x, scale: float = 1.0):
            return self.net(x * scale)

    X, y = data()
    model = Scaled()
    la = Laplace(model, "classification", "all", "diag").fit(loader(X, y))
    plain = Laplace(model.net, "classification", "all", "diag").fit(loader(X, y))
    kw = dict(pred_type="nn", link_approx="mc", n_samples=4)
    got = la(X[:4] * 2, generator=torch.Generator().manual_seed(0), scale=0.5, **kw)
    want = plain(X[:4], generator=torch.Generator().manual_seed(0), **kw)
    close(got, want, rtol=1e-10)
    # the non-tensor keyword also reaches the GLM predictive's Jacobians
    close(la(X[:4] * 2, scale=0.5), plain(X[:4]), rtol=1e-10)
    close(la.predictive(X[:4] * 2, "glm", "probit", 10, scale=0.5), plain(X[:4]), rtol=1e-10)
    # and is gone after the call
    close(la(X[:4]), plain(X[:4]), rtol=1e-10)
    with pytest.raises(BadInputError, match="dict batch"):
        la(X[:4], scale=torch.ones(4, 1))
