"""Checkpoint forms (docs/design.md §2): identical outputs and fingerprints, safe refusal of pickles."""

from __future__ import annotations

import pickle
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.checkpoints import (
    ModelForm,
    ModelRef,
    detect_form,
    import_callable,
    load_model,
    model_fingerprint,
    module_tree,
    require_hookable_layers,
    resolve_device,
    resolve_dtype,
)

# TorchScript is deprecated in torch 2.13 but still a supported checkpoint form here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

# The factories live in a file written per test, so both the module-style and the file-style
# factory specs are exercised without touching the working tree.
FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn


    def mlp(hidden=8, seed=0):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3))


    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(4, 4, 3, groups=2, bias=False), nn.ReLU(), nn.Flatten(),
            )
            self.head = nn.Linear(4 * 2 * 2, 3)

        def forward(self, x):
            return self.head(self.features(x))


    def cnn(seed=0):
        torch.manual_seed(seed)
        return CNN()


    def not_a_module():
        return 3
    """
)

INPUTS = {"mlp": (5, 4), "cnn": (5, 1, 8, 8)}
LAYERS = {"mlp": ["0", "2"], "cnn": ["features.0", "features.2", "head"]}
LAYER_TYPES = {
    "0": nn.Linear,
    "2": nn.Linear,
    "features.0": nn.Conv2d,
    "features.2": nn.Conv2d,
    "head": nn.Linear,
}


FORM_FILES = {
    "safetensors-module": ("{name}.safetensors", "module"),
    "state_dict-file": ("{name}_sd.pt", "file"),
    "export": ("{name}.pt2", None),
    "torchscript-script": ("{name}_script.pt", None),
    "torchscript-trace": ("{name}_trace.ts", None),
    "pickle-trusted": ("{name}_whole.pt", "trust"),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the factory file and every form of the MLP and the CNN (written once)."""
    folder = tmp_path_factory.mktemp("zoo")
    file = folder / f"tinymods_{abs(hash(str(folder))) % 10**8}.py"
    file.write_text(FACTORIES)
    for name in ("mlp", "cnn"):
        model = import_callable(f"{file}:{name}")().eval()
        x = torch.randn(*INPUTS[name], generator=torch.Generator().manual_seed(1))
        save_file(model.state_dict(), str(folder / f"{name}.safetensors"))
        torch.save(model.state_dict(), folder / f"{name}_sd.pt")
        ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
        torch.export.save(ep, folder / f"{name}.pt2")
        torch.jit.script(model).save(str(folder / f"{name}_script.pt"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.trace(model, x).save(str(folder / f"{name}_trace.ts"))
        torch.save(model, folder / f"{name}_whole.pt")
    return folder


@pytest.fixture
def factories(zoo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The factory file; the working directory is its folder (for module-style specs)."""
    monkeypatch.chdir(zoo)
    return next(zoo.glob("tinymods_*.py"))


def _all_forms(name: str, file: Path, folder: Path) -> tuple[nn.Module, torch.Tensor, dict]:
    """The reference model, an input, and load arguments for every form of `name`."""
    model = import_callable(f"{file}:{name}")().eval()
    x = torch.randn(*INPUTS[name], generator=torch.Generator().manual_seed(1))
    forms = {}
    for form_id, (pattern, how) in FORM_FILES.items():
        kwargs: dict = {}
        if how == "module":
            kwargs["factory"] = f"{file.stem}:{name}"
        elif how == "file":
            kwargs["factory"] = f"{file.name}:{name}"
        elif how == "trust":
            kwargs["trust_checkpoint"] = True
        forms[form_id] = (pattern.format(name=name), kwargs)
    return model, x, forms


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_every_form_same_outputs_and_fingerprint(factories: Path, zoo: Path, name: str):
    model, x, forms = _all_forms(name, factories, zoo)
    expected_fp = model_fingerprint(model)
    with torch.no_grad():
        ref = model(x)
        x_other = torch.randn(2, *INPUTS[name][1:])  # another batch size
        ref_other = model(x_other)
    seen_forms = set()
    for form_id, (file, kwargs) in forms.items():
        loaded, mref = load_model(zoo / file, **kwargs)
        seen_forms.add(mref.form)
        assert not loaded.training, form_id
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), ref, rtol=0, atol=0, msg=form_id)
            if form_id != "torchscript-trace":  # a trace may bake in shapes
                torch.testing.assert_close(loaded(x_other), ref_other, rtol=0, atol=0, msg=form_id)
        assert mref.fingerprint == expected_fp, form_id
        assert model_fingerprint(loaded) == expected_fp, form_id
    assert seen_forms == ({f.value for f in ModelForm} - {"hf"})


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_export_restores_real_layers_and_hooks_fire(factories: Path, zoo: Path, name: str):
    model, x, _ = _all_forms(name, factories, zoo)
    loaded, ref = load_model(zoo / f"{name}.pt2")
    assert ref.form == "export" and ref.factory is None
    layers = {n: m for n, m in loaded.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert list(layers) == LAYERS[name]
    for n, m in layers.items():
        assert type(m) is LAYER_TYPES[n]
    # Same names and order as the original module: the engine flattens in parameters() order.
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in model.named_parameters()]
    # The swapped layers hold the loaded parameters themselves.
    params = dict(loaded.named_parameters())
    for n, m in layers.items():
        assert m.weight is params[f"{n}.weight"]
    if name == "cnn":
        conv = layers["features.0"]
        assert (conv.stride, conv.padding, conv.groups) == ((2, 2), (1, 1), 1)
        assert layers["features.2"].groups == 2 and layers["features.2"].bias is None

    seen: dict[str, tuple] = {}
    grads: dict[str, tuple] = {}
    for n, m in layers.items():
        m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, tuple(i[0].shape)))
        m.register_full_backward_hook(
            lambda mod, gi, go, n=n: grads.__setitem__(n, tuple(go[0].shape))
        )
    loaded(x.requires_grad_()).sum().backward()
    assert set(seen) == set(grads) == set(LAYERS[name])
    last = LAYERS[name][-1]
    assert seen[last][0] == len(x)

    tree = {row.name: row for row in module_tree(loaded)}
    assert all(tree[n].hookable for n in LAYERS[name])
    act = "1" if name == "mlp" else "features.1"
    assert not tree[act].hookable and tree[act].loaded_class == "InterpreterModule"
    assert tree[act].type_name.endswith(("Tanh", "ReLU"))
    require_hookable_layers(loaded, ref, "--structure kron")  # no error


def test_torchscript_reports_layers_and_needs_another_form(factories: Path, zoo: Path):
    loaded, ref = load_model(zoo / "mlp_script.pt")
    assert ref.form == "torchscript"
    tree = {row.name: row for row in module_tree(loaded)}
    assert tree["0"].type_name == "Linear" and not tree["0"].hookable
    with pytest.raises(BadInputError, match=r"kron needs real nn.Linear.*--model-factory.*\.pt2"):
        require_hookable_layers(loaded, ref, "--structure kron")


def test_detect_form(factories: Path, zoo: Path):
    expected = {
        "mlp.safetensors": ModelForm.SAFETENSORS,
        "mlp_sd.pt": ModelForm.STATE_DICT,
        "mlp.pt2": ModelForm.EXPORT,
        "mlp_script.pt": ModelForm.TORCHSCRIPT,  # detected by content, not by suffix
        "mlp_whole.pt": ModelForm.PICKLE,
    }
    for file, form in expected.items():
        assert detect_form(zoo / file) == form, file


class _CreatesFile:
    """Unpickling this calls open(path, "w"): it would create the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("container", ["raw-pickle", "torch-save", "in-state-dict"])
def test_malicious_pickle_refused_without_running(factories: Path, tmp_path: Path, container: str):
    marker = tmp_path / "pwned.txt"
    ckpt = tmp_path / "evil.pt"
    if container == "raw-pickle":
        ckpt.write_bytes(pickle.dumps(_CreatesFile(marker)))
    elif container == "torch-save":
        torch.save(_CreatesFile(marker), ckpt)
    else:
        torch.save({"0.weight": torch.zeros(8, 4), "0.bias": _CreatesFile(marker)}, ckpt)
    with pytest.raises(BadInputError, match=r"--trust-checkpoint") as info:
        load_model(ckpt, factory=f"{factories.stem}:mlp")
    assert str(ckpt) in str(info.value)
    assert not marker.exists()
    assert detect_form(ckpt) == ModelForm.PICKLE
    assert not marker.exists()


def test_trusted_pickle_must_be_a_module(tmp_path: Path):
    ckpt = tmp_path / "list.pt"
    torch.save([nn.Linear(2, 2)], ckpt)
    with pytest.raises(BadInputError, match="expected a torch.nn.Module"):
        load_model(ckpt, trust_checkpoint=True)


def test_architecture_mismatch_lists_keys_and_shapes(factories: Path, zoo: Path):
    with pytest.raises(BadInputError) as info:
        load_model(zoo / "cnn.safetensors", factory=f"{factories.stem}:mlp")
    msg = str(info.value)
    assert "another architecture" in msg
    assert "missing keys: 0.weight, 0.bias, 2.weight, 2.bias" in msg
    assert "unexpected keys: features.0.bias, features.0.weight" in msg

    with pytest.raises(
        BadInputError, match=r"shape mismatches: 0.weight: checkpoint \(8, 4\) vs model \(16, 4\)"
    ):
        load_model(
            zoo / "mlp_sd.pt", factory=f"{factories.stem}:mlp", factory_kwargs={"hidden": 16}
        )


def test_factory_kwargs_json_and_dict(factories: Path, tmp_path: Path):
    torch.manual_seed(0)
    model = import_callable(f"{factories}:mlp")(hidden=16, seed=3)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    for kwargs in ({"hidden": 16, "seed": 3}, '{"hidden": 16, "seed": 3}'):
        loaded, ref = load_model(
            tmp_path / "w.safetensors", factory=f"{factories.stem}:mlp", factory_kwargs=kwargs
        )
        assert ref.kwargs == {"hidden": 16, "seed": 3}
        assert ref.factory == f"{factories.stem}:mlp"
        assert ref.fingerprint == model_fingerprint(model)
    assert ModelRef.from_dict(ref.to_dict()) == ref


@pytest.mark.parametrize(
    ("factory", "kwargs", "pattern"),
    [
        ("nosuchpkg.mod:mlp", None, r"cannot import module 'nosuchpkg.mod'"),
        ("{stem}:mpl", None, r"has no attribute 'mpl'; did you mean 'mlp'\?"),
        ("{stem}:not_a_module", None, r"returned int, expected a torch.nn.Module"),
        ("{stem}:mlp", {"hiden": 3}, r"failed with kwargs.*TypeError"),
        ("{stem}:mlp", "{not json", r"--model-kwargs: invalid JSON"),
        ("missing_file.py:mlp", None, r"file not found"),
        ("no_colon", None, r"expected 'pkg.module:function'"),
    ],
    ids=["no-module", "typo", "not-module", "bad-kwargs", "bad-json", "no-file", "no-colon"],
)
def test_factory_errors(factories: Path, zoo: Path, factory: str, kwargs, pattern: str):
    with pytest.raises(BadInputError, match=pattern):
        load_model(
            zoo / "mlp.safetensors",
            factory=factory.format(stem=factories.stem),
            factory_kwargs=kwargs,
        )


def test_weights_without_factory_and_factory_with_archive(factories: Path, zoo: Path):
    for file in ("mlp.safetensors", "mlp_sd.pt"):
        with pytest.raises(BadInputError, match=r"weights only.*--model-factory"):
            load_model(zoo / file)
    with pytest.raises(BadInputError, match=r"self-contained export archive"):
        load_model(zoo / "mlp.pt2", factory=f"{factories.stem}:mlp")


def test_not_a_state_dict(tmp_path: Path):
    ckpt = tmp_path / "train_ckpt.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, ckpt)
    with pytest.raises(
        BadInputError, match=r"expected a state dict.*'epoch' holds int.*'state_dict'"
    ):
        load_model(ckpt, factory="x:y")


def test_missing_unreadable_unknown_files(tmp_path: Path):
    with pytest.raises(BadInputError, match=r"nope\.pt: checkpoint file not found"):
        load_model(tmp_path / "nope.pt")
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"hello, not a model")
    with pytest.raises(BadInputError, match=r"model\.bin: unknown checkpoint format"):
        load_model(junk)
    bad_zip = tmp_path / "broken.pt2"
    bad_zip.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(BadInputError, match=r"broken\.pt2"):
        load_model(bad_zip)
    with pytest.raises(BadInputError, match=r"not a file"):
        load_model(tmp_path)


def test_static_batch_export_refused(factories: Path, tmp_path: Path):
    model = import_callable(f"{factories}:mlp")().eval()
    torch.export.save(torch.export.export(model, (torch.randn(5, 4),)), tmp_path / "static.pt2")
    with pytest.raises(BadInputError, match=r"fixed batch size.*Dim.AUTO"):
        load_model(tmp_path / "static.pt2")


@pytest.mark.parametrize("form", ["mlp.pt2", "mlp_script.pt", "mlp.safetensors"])
def test_dtype_conversion_keeps_stored_fingerprint(factories: Path, zoo: Path, form: str):
    model, x, forms = _all_forms("mlp", factories, zoo)
    kwargs = next(kw for f, kw in forms.values() if f == form)
    loaded, ref = load_model(zoo / form, dtype="float64", **kwargs)
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x.double()), model(x).double(), rtol=1e-6, atol=1e-6)
    assert ref.fingerprint == model_fingerprint(model)  # taken before conversion
    assert model_fingerprint(loaded) != ref.fingerprint  # the bytes differ now


def test_fingerprint_details():
    a = nn.Sequential(nn.Linear(2, 2))
    b = nn.Sequential(nn.Linear(2, 2))
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    assert len(model_fingerprint(a)) == 64
    with torch.no_grad():
        b[0].bias[0] += 1e-7
    assert model_fingerprint(a) != model_fingerprint(b)
    # Layout does not matter, dtype does.
    c = nn.Sequential(nn.Linear(2, 2))
    c.load_state_dict(a.state_dict())
    c[0].weight = nn.Parameter(a[0].weight.detach().t().contiguous().t())
    assert model_fingerprint(c) == model_fingerprint(a)
    assert model_fingerprint(a.to(torch.float64)) != model_fingerprint(b.to(torch.float64))
    d = nn.Module()
    d.scale = nn.Parameter(torch.tensor(2.0, dtype=torch.bfloat16))  # 0-d and bfloat16
    assert len(model_fingerprint(d)) == 64


def test_resolve_device_and_dtype(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(BadInputError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(BadInputError, match="expected auto, cpu"):
        resolve_device("gpu0")
    assert resolve_dtype("float64") is torch.float64
    assert resolve_dtype(None) is None
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(BadInputError, match="expected float32, float64, bfloat16 or float16"):
        resolve_dtype("half")
    with pytest.raises(BadInputError, match="expected float32, float64, bfloat16 or float16"):
        resolve_dtype(torch.int8)


class _Unusual(nn.Module):
    """A shared Linear called twice, a top-level parameter, BatchNorm, a reflect-padded conv."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.a = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.c = nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.a(self.a(x)) * self.scale)
        return self.head(self.c(h.reshape(-1, 1, 2, 2)).flatten(1))


def test_export_swaps_only_exact_layers(tmp_path: Path):
    torch.manual_seed(0)
    model = _Unusual().eval()
    x = torch.randn(5, 4)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(ep, tmp_path / "u.pt2")
    loaded, ref = load_model(tmp_path / "u.pt2")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    tree = {row.name: row for row in module_tree(loaded)}
    assert tree["a"].hookable and tree["head"].hookable
    # A reflect-padded conv is a pad + conv graph, not one nn.Conv2d call: left as a graph.
    assert not tree["c"].hookable and tree["c"].type_name.endswith("Conv2d")
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert ref.fingerprint == model_fingerprint(model)


def test_export_falls_back_to_flat_module(zoo: Path, monkeypatch: pytest.MonkeyPatch):
    def fail(ep):
        raise RuntimeError("cannot unflatten")

    monkeypatch.setattr(torch.export, "unflatten", fail)
    model, x, _ = _all_forms("cnn", next(zoo.glob("tinymods_*.py")), zoo)
    loaded, ref = load_model(zoo / "cnn.pt2")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert ref.fingerprint == model_fingerprint(model)
    with pytest.raises(BadInputError, match=r"cnn\.pt2 \(export form\): last-layer needs real"):
        require_hookable_layers(loaded, ref, "last-layer")
