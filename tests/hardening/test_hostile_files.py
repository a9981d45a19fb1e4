"""Hostile files: pickles that run code, absurd safetensors headers, YAML bombs, symlinks,
posteriors that name code to run. Each is refused with exit 2 and nothing runs.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hardening_support import Workspace, case, features, invoke
from safetensors.torch import save_file
from typer.testing import CliRunner

from laplace_cli.io.posterior_file import read_posterior, write_posterior


class _CreatesFile:
    """Unpickling this calls `open(path, "w")`: code from the file runs iff the marker exists."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# --- pickles -----------------------------------------------------------------------------------


@case(
    "hostile",
    "model `.pt` whose pickle would run code (torch.save, raw pickle, inside a state dict)",
    2,
    "evil.pt: not a state dict of tensors but a pickle that would import or run code (...),"
    " refused without running it; if you trust this file pass --trust-checkpoint, ...",
    "the code did not run (its marker file does not exist)",
)
@pytest.mark.parametrize("container", ["torch-save", "raw-pickle", "inside-state-dict"])
def test_code_pickle_as_model_is_refused_and_nothing_runs(
    runner: CliRunner, ws: Workspace, container: str
) -> None:
    marker, ckpt = ws / "pwned.txt", ws / "evil.pt"
    if container == "torch-save":
        torch.save(_CreatesFile(marker), ckpt)
    elif container == "raw-pickle":
        ckpt.write_bytes(pickle.dumps(_CreatesFile(marker)))
    else:
        torch.save({"0.weight": torch.zeros(6, 4), "0.bias": _CreatesFile(marker)}, ckpt)
    invoke(
        runner,
        ws.fit_args(ws / "data.yaml", model="evil.pt"),
        2,
        f"{ckpt}: not a state dict of tensors but a pickle that would import or run code",
        "refused without running it",
        "--trust-checkpoint",
    )
    assert not marker.exists()


@case(
    "hostile",
    "the same with `--trust-checkpoint`",
    2,
    "unpickled a TextIOWrapper, expected a torch.nn.Module",
    "the code *did* run: the flag is the only gate",
)
def test_trust_checkpoint_is_the_only_gate(runner: CliRunner, ws: Workspace) -> None:
    """With --trust-checkpoint the same file does run (that is what the flag says)."""
    marker = ws / "pwned.txt"
    torch.save(_CreatesFile(marker), ws / "evil.pt")
    args = ["fit", str(ws / "evil.pt"), "-d", str(ws / "data.yaml"), "-o", str(ws / "p.st")]
    invoke(runner, [*args, "--trust-checkpoint"], 2, "expected a torch.nn.Module")
    assert marker.exists()


@case(
    "hostile",
    "whole pickled `nn.Module`",
    2,
    "whole.pt: not a state dict of tensors but a pickle ... refused without running it",
)
@case("hostile", "the same with `--trust-checkpoint`", 0, "", "the posterior is written")
def test_whole_pickled_module_needs_trust(runner: CliRunner, ws: Workspace) -> None:
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), ws / "whole.pt")
    args = ["fit", str(ws / "whole.pt"), "-d", str(ws / "data.yaml"), "-o", str(ws / "p.st"), "-q"]
    invoke(runner, args, 2, "refused without running it")
    invoke(runner, [*args, "--trust-checkpoint"], 0)
    assert (ws / "p.st").is_file()


@case(
    "hostile",
    "data `.pt` with pickled objects",
    2,
    "evil_data.pt: holds pickled objects, not only tensors; data files are read with"
    " weights_only=True and never run code",
    "nothing ran",
)
def test_code_pickle_as_data_is_refused(runner: CliRunner, ws: Workspace) -> None:
    marker = ws / "pwned.txt"
    torch.save({"x": _CreatesFile(marker), "y": torch.zeros(3)}, ws / "evil_data.pt")
    data = ws.spec("evil.yaml", "splits:\n  train: {path: evil_data.pt, x: x, y: y}\n")
    invoke(runner, ws.fit_args(data), 2, "evil_data.pt: holds pickled objects, not only tensors")
    assert not marker.exists()


@case(
    "hostile",
    "`.npz` with object arrays",
    2,
    "obj.npz: unreadable .npz (Object arrays cannot be loaded when allow_pickle=False)",
)
def test_npz_with_object_arrays_is_refused(runner: CliRunner, ws: Workspace) -> None:
    ws.npz("obj.npz", x=np.array([object()] * 3), y=np.zeros(3))
    data = ws.spec("obj.yaml", "splits:\n  train: {path: obj.npz, x: x, y: y}\n")
    invoke(runner, ws.fit_args(data), 2, "obj.npz: unreadable .npz", "allow_pickle=False")


@case(
    "hostile",
    "IDX file whose header declares 2³¹ × 2³¹ × 2²⁰ bytes (read before anything is allocated)",
    2,
    "huge.idx: IDX header declares shape (2147483648, 2147483648, 1048576) (...), more than"
    " the 17179869184 bytes accepted; a corrupt or hostile header",
)
def test_idx_header_declaring_exabytes_is_refused(runner: CliRunner, ws: Workspace) -> None:
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**31, 2**31, 2**20)
    (ws.root / "huge.idx").write_bytes(header + bytes(64))
    data = ws.spec("huge.yaml", "splits:\n  train: {path: huge.idx}\n")
    invoke(runner, ws.fit_args(data), 2, "huge.idx: IDX header declares shape", "hostile header")


@case(
    "hostile",
    'posterior naming `subprocess:call` with `{"args": ["touch", ...]}` as the model factory',
    2,
    "the posterior names the model factory 'subprocess:call', which is installed code"
    " (...subprocess.py); a posterior file may only name your own code. If this is the right"
    " factory, say so: --model CHECKPOINT --model-factory subprocess:call",
    "nothing ran",
)
def test_posterior_cannot_name_installed_code_to_run(
    runner: CliRunner, fitted: Workspace, tmp_path: Path
) -> None:
    """A posterior's model reference names a factory and kwargs; `subprocess:call` with
    `{"args": [...]}` would run a command on `laplace predict`. Refused before importing."""
    marker = tmp_path / "pwned.txt"
    pf = read_posterior(fitted / "post_full.st")
    meta = dict(pf.metadata)
    meta["model"] = {
        "path": str(fitted / "mlp.safetensors"),
        "form": "safetensors",
        "factory": "subprocess:call",
        "kwargs": {"args": ["touch", str(marker)]},
    }
    hostile = tmp_path / "hostile.st"
    write_posterior(hostile, pf.tensors, meta)
    args = ["predict", "-p", str(hostile), "--data", str(fitted / "data.yaml")]
    invoke(
        runner,
        args,
        2,
        "the posterior names the model factory 'subprocess:call', which is installed code",
        "--model CHECKPOINT --model-factory subprocess:call",
    )
    assert not marker.exists()


@case(
    "hostile",
    "posterior naming `os:system`, `builtins:exec`, `shutil:rmtree`, `torch:save`, `numpy:save`",
    2,
    "the posterior names the model factory ...",
)
@pytest.mark.parametrize(
    "factory", ["os:system", "builtins:exec", "shutil:rmtree", "torch:save", "numpy:save"]
)
def test_posterior_factory_from_the_installation_is_refused(
    runner: CliRunner, fitted: Workspace, tmp_path: Path, factory: str
) -> None:
    pf = read_posterior(fitted / "post_full.st")
    meta = dict(pf.metadata)
    meta["model"] = {"path": str(fitted / "mlp.safetensors"), "form": "safetensors"}
    meta["model"].update(factory=factory, kwargs={})
    hostile = tmp_path / "hostile.st"
    write_posterior(hostile, pf.tensors, meta)
    invoke(
        runner, ["marglik", str(hostile)], 2, f"the posterior names the model factory {factory!r}"
    )


@case(
    "hostile",
    "posterior naming the user's own factory file (control)",
    0,
    "",
    "`marglik` loads it",
)
def test_posterior_naming_the_users_own_factory_still_loads(
    runner: CliRunner, fitted: Workspace
) -> None:
    # The control: the posterior fitted with factories.py:mlp (the user's file) reloads.
    invoke(runner, ["marglik", str(fitted / "post_full.st")], 0)


@case(
    "hostile",
    "posterior naming a module of the user's project (`pkg.nets:mlp`, regular or namespace"
    " package)",
    0,
    "",
    "fit and `marglik` both run",
)
@pytest.mark.parametrize("package", ["namespace", "regular"])
def test_posterior_naming_a_module_of_the_users_project_loads(
    runner: CliRunner, ws: Workspace, monkeypatch: pytest.MonkeyPatch, package: str
) -> None:
    # Module-style factories of the project (working directory on the import path) are the
    # user's own code, including packages without __init__.py (namespace packages).
    pkg = ws / f"userpkg_{package}"
    pkg.mkdir()
    if package == "regular":
        (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text((ws / "factories.py").read_text())
    monkeypatch.chdir(ws.root)
    args = ws.fit_args(ws / "data.yaml", ws / "mod.st", structure="diag")
    args[args.index("--model-factory") + 1] = f"userpkg_{package}.nets:mlp"
    invoke(runner, args, 0)
    invoke(runner, ["marglik", str(ws / "mod.st")], 0)


# --- safetensors headers ------------------------------------------------------------------------


def _rewrite_header(src: Path, dst: Path, edit) -> None:
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    edit(header[name])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])


def _absurd_variant(src: Path, dst: Path, kind: str) -> None:
    if kind == "header-length":
        dst.write_bytes(struct.pack("<Q", 2**62) + src.read_bytes()[8:])
    elif kind == "offsets":
        _rewrite_header(src, dst, lambda e: e.update(data_offsets=[0, 2**60]))
    elif kind == "shape":
        _rewrite_header(src, dst, lambda e: e.update(shape=[2**40, 2**40]))
    else:  # pragma: no cover
        raise AssertionError(kind)


_ABSURD = [
    ("header-length", "header length 4611686018427387904 is absurd"),
    ("offsets", "data_offsets [0, 1152921504606846976] lie outside"),
    ("shape", "of shape [1099511627776, 1099511627776] needs"),
]


@pytest.fixture
def no_tensor_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if safetensors is asked to load anything: refusals come from the header."""
    import safetensors.torch

    def forbidden(*args, **kwargs):
        raise AssertionError("safetensors.torch.load_file was reached")

    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)


@case(
    "hostile",
    "model `.safetensors` with header length 2⁶²",
    2,
    "absurd.safetensors: header length 4611686018427387904 is absurd (limit 100000000 bytes)",
    "refused from the header alone: `safetensors.torch.load_file` is never called",
)
@case(
    "hostile",
    "model `.safetensors` with offsets [0, 2⁶⁰]",
    2,
    "absurd.safetensors: tensor '0.bias': data_offsets [0, 1152921504606846976] lie outside the"
    " 204-byte data section",
    "the same",
)
@case(
    "hostile",
    "model `.safetensors` with shape [2⁴⁰, 2⁴⁰]",
    2,
    "absurd.safetensors: tensor '0.bias': F32 of shape [1099511627776, 1099511627776] needs ..."
    " bytes, its byte range holds 24",
    "the same",
)
@pytest.mark.parametrize(("kind", "message"), _ABSURD, ids=[k for k, _ in _ABSURD])
def test_absurd_model_safetensors_refused_before_allocating(
    runner: CliRunner, ws: Workspace, no_tensor_loading: None, kind: str, message: str
) -> None:
    _absurd_variant(ws / "mlp.safetensors", ws / "absurd.safetensors", kind)
    args = ws.fit_args(ws / "data.yaml", model="absurd.safetensors")
    invoke(runner, args, 2, f"{ws / 'absurd.safetensors'}: ", message)


@case(
    "hostile",
    "posterior with header length 2⁶² (inspect)",
    2,
    "absurd.st: header length 4611686018427387904 is absurd",
    "`load_file` never called",
)
@case(
    "hostile",
    "posterior with offsets [0, 2⁶⁰] (inspect)",
    2,
    "absurd.st: tensor ... data_offsets [0, 1152921504606846976] lie outside",
    "`load_file` never called",
)
@case(
    "hostile",
    "posterior with shape [2⁴⁰, 2⁴⁰] (inspect)",
    2,
    "absurd.st: tensor ... of shape [1099511627776, 1099511627776] needs",
    "`load_file` never called",
)
@pytest.mark.parametrize(("kind", "message"), _ABSURD, ids=[k for k, _ in _ABSURD])
def test_absurd_posterior_refused_before_allocating(
    runner: CliRunner, fitted: Workspace, no_tensor_loading: None, tmp_path: Path, kind, message
) -> None:
    post = tmp_path / "absurd.st"
    _absurd_variant(fitted / "post_full.st", post, kind)
    invoke(runner, ["inspect", str(post)], 2, f"{post}: ", message)


@case(
    "hostile",
    "safetensors *data split* with the same three (safetensors' own checks)",
    2,
    "absurd_data.safetensors: unreadable safetensors file (...)",
)
@pytest.mark.parametrize("kind", ["header-length", "offsets", "shape"])
def test_absurd_safetensors_data_split(runner: CliRunner, ws: Workspace, kind: str) -> None:
    save_file({"x": torch.zeros(20, 4), "y": torch.zeros(20, dtype=torch.long)}, str(ws / "d.st"))
    _absurd_variant(ws / "d.st", ws / "absurd_data.safetensors", kind)
    data = ws.spec("ds.yaml", "splits:\n  train: {path: absurd_data.safetensors, x: x, y: y}\n")
    invoke(runner, ws.fit_args(data), 2, "absurd_data.safetensors: unreadable safetensors file")


# --- YAML bombs ---------------------------------------------------------------------------------

_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_LAUGHS + "task: *i\nsplits: *i\n", "YAML aliases expand to more than 100,000 values"),
        ("a: &a [*a]\nsplits: {train: {path: x.npz}}\n", "YAML alias refers to itself"),
        ("splits: " + "[" * 600 + "]" * 600 + "\n", "nested too deeply"),
    ],
    ids=["billion-laughs", "recursive-alias", "deep-nesting"],
)
@case(
    "hostile",
    "YAML 'billion laughs' (9 levels of 9 aliases)",
    2,
    "bomb.yaml: YAML aliases expand to more than 100,000 values; refused (a 'billion laughs'"
    " file?)",
    "in milliseconds (it used to hang printing the value)",
)
@case("hostile", "YAML alias that refers to itself", 2, "bomb.yaml: YAML alias refers to itself")
@case("hostile", "YAML nested 600 deep", 2, "bomb.yaml: invalid YAML: nested too deeply")
def test_yaml_bombs_are_refused_quickly(
    runner: CliRunner, ws: Workspace, text: str, message: str
) -> None:
    data = ws.spec("bomb.yaml", text)
    invoke(runner, ws.fit_args(data), 2, f"{data}", message)


@case(
    "hostile",
    "YAML `!!python/object/apply:os.system`",
    2,
    "tag.yaml:1:9: invalid YAML: could not determine a constructor for the tag ...",
    "nothing ran (safe loader)",
)
def test_yaml_python_tags_are_not_constructed(runner: CliRunner, ws: Workspace) -> None:
    marker = ws / "pwned.txt"
    data = ws.spec("tag.yaml", f"splits: !!python/object/apply:os.system ['touch {marker}']\n")
    invoke(runner, ws.fit_args(data), 2, "tag.yaml:1:9: invalid YAML: could not determine")
    assert not marker.exists()


# --- symlinks and paths that leave the spec's folder (docs/hardening.md, "Paths") --------------


@pytest.fixture
def linked(ws: Workspace) -> Workspace:
    """proj/data.yaml with splits through a symlink out of proj/, `..`, dangling, a loop."""
    outside = ws / "outside"
    outside.mkdir()
    ws.npz("outside/elsewhere.npz", x=features(), y=np.arange(20) % 3)
    proj = ws / "proj"
    proj.mkdir()
    os.symlink(outside / "elsewhere.npz", proj / "link.npz")
    os.symlink("nowhere.npz", proj / "dangling.npz")
    os.symlink("loop.npz", proj / "loop.npz")
    ws.spec(
        "proj/data.yaml",
        """\
        splits:
          link: {path: link.npz, x: x, y: y}
          up: {path: ../outside/elsewhere.npz, x: x, y: y}
          dangling: {path: dangling.npz, x: x, y: y}
          loop: {path: loop.npz, x: x, y: y}
        """,
    )
    return ws


@case(
    "hostile",
    "split path through a symlink out of the spec's folder, or `../elsewhere.npz`",
    0,
    "",
    "followed (see the policy below)",
)
@pytest.mark.parametrize("split", ["link", "up"])
def test_paths_out_of_the_spec_folder_are_followed(
    runner: CliRunner, linked: Workspace, split: str
) -> None:
    # `fit` checks every split of its spec first: the followed paths in a spec of their own.
    good = linked.spec(
        "proj/good.yaml",
        "splits:\n  link: {path: link.npz, x: x, y: y}\n"
        "  up: {path: ../outside/elsewhere.npz, x: x, y: y}\n",
    )
    invoke(runner, linked.fit_args(good, extra=("--split", split)), 0)


@case(
    "hostile",
    "a dangling symlink or a symlink loop as a split's file",
    2,
    "data.yaml: splits. ... .path: file not found",
)
@pytest.mark.parametrize("split", ["dangling", "loop"])
def test_broken_symlinks_are_missing_files(
    runner: CliRunner, linked: Workspace, split: str
) -> None:
    args = linked.fit_args(linked / "proj/data.yaml", extra=("--split", split))
    invoke(runner, args, 2, f"proj/data.yaml: splits.{split}.path: file not found")


@case(
    "hostile",
    "`fit -o out.st` where out.st is a symlink",
    0,
    "",
    "the link is replaced by a complete posterior; its target is not written to",
)
def test_output_onto_a_symlink_replaces_the_link_not_its_target(
    runner: CliRunner, ws: Workspace
) -> None:
    target = ws / "target.st"
    target.write_bytes(b"keep me")
    os.symlink(target, ws / "out.st")
    invoke(runner, ws.fit_args(ws / "data.yaml", ws / "out.st"), 0)
    assert target.read_bytes() == b"keep me"
    assert not (ws / "out.st").is_symlink()
    read_posterior(ws / "out.st")  # a complete posterior where the link was


def test_deep_yaml_is_refused_under_a_raised_recursion_limit(tmp_path):
    """The depth limit holds whatever the interpreter's recursion limit (a test or a host
    program may raise it, and PyYAML's composer then parses 600 levels)."""
    import sys

    from laplace_cli.core.errors import BadInputError
    from laplace_cli.io.safe_yaml import load_yaml

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20_000))
    try:
        path = tmp_path / "deep.yaml"
        path.write_text("splits: " + "[" * 600 + "]" * 600 + "\n")
        with pytest.raises(BadInputError, match="nested too deeply"):
            load_yaml(path)
        path.write_text("a: " + "[" * 50 + "1" + "]" * 50 + "\n")
        assert load_yaml(path)["a"] is not None  # ordinary nesting still loads
    finally:
        sys.setrecursionlimit(old)


@pytest.mark.parametrize("key", ["data", "model"])
def test_a_home_of_no_user_is_refused_naming_the_recipe(tmp_path, key):
    """`~0` names the home directory of a user "0" that does not exist: pathlib raises a bare
    RuntimeError there (found by the recipe fuzzer); the recipe is refused, naming itself."""
    from laplace_cli.core.errors import BadInputError
    from laplace_cli.core.paths import user_path
    from laplace_cli.pipeline.recipes import load_recipe

    recipe = tmp_path / "recipe.yaml"
    text = {
        "data": "model: {path: m.pt}\ndata: ~0\n",
        "model": "model: {path: ~0/m.pt}\ndata: d.yaml\n",
    }
    recipe.write_text(text[key])
    with pytest.raises(BadInputError) as err:
        load_recipe(recipe)
    assert str(err.value).startswith(str(recipe)) and "~0" in str(err.value)
    with pytest.raises(BadInputError, match="cannot expand"):
        user_path("~0/x")
    assert user_path("~/x") == Path.home() / "x"
