"""`FeatureExtractor.state_dict()` holds the model's keys only (the last layer is not
registered a second time), and laplace-torch's older checkpoints, which also held the last
layer under `last_layer.`, load when that alias equals the model's entry and are refused
(strict) when it differs; side by side with laplace-torch 0.3."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from laplace_cli.utils import FeatureExtractor

lt_utils = pytest.importorskip("laplace.utils")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))


@pytest.mark.parametrize("name", [None, "2"])
def test_keys_as_laplace_torchs(name):
    model = _model()
    ours = FeatureExtractor(model, last_layer_name=name)
    theirs = lt_utils.FeatureExtractor(model, last_layer_name=name)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.forward_with_features(torch.randn(4, 2))  # finds the layer: keys unchanged
    assert list(ours.state_dict()) == [k for k, _ in model.named_parameters(prefix="model")]
    assert ours.last_layer is model[2]


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("name", [None, "2"])
@pytest.mark.parametrize("lib", ["ours", "theirs"])
def test_legacy_alias(nested, name, lib):
    model = _model()
    cls = FeatureExtractor if lib == "ours" else lt_utils.FeatureExtractor
    extractor = cls(model, last_layer_name=name)
    wrapper = nn.Sequential(extractor) if nested else extractor
    prefix = "0." if nested else ""
    expected = {k: v.clone() for k, v in wrapper.state_dict().items()}
    legacy = dict(expected)
    for pname in ("weight", "bias"):
        legacy[f"{prefix}last_layer.{pname}"] = expected[f"{prefix}model.2.{pname}"].clone()
    with torch.no_grad():
        model[2].weight.zero_()
    wrapper.load_state_dict(legacy, strict=True)
    for key, value in expected.items():
        torch.testing.assert_close(wrapper.state_dict()[key], value, rtol=0, atol=0)
    conflicting = dict(legacy)
    conflicting[f"{prefix}last_layer.weight"] = legacy[f"{prefix}last_layer.weight"] + 1
    with pytest.raises(RuntimeError, match="last_layer.weight"):
        wrapper.load_state_dict(conflicting, strict=True)
    # an alias without its model entry is not guessed into place either
    orphan = {k: v for k, v in legacy.items() if k != f"{prefix}model.2.bias"}
    with pytest.raises(RuntimeError, match="model.2.bias"):
        wrapper.load_state_dict(orphan, strict=True)
