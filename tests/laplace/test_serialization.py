"""Posterior state ↔ file: round trips, rejection of corrupt files, atomic writes.

* Library round trip, every subset × structure: `laplace_state → write_posterior →
  read_posterior → laplace_from_state` gives a Laplace that predicts, samples and scores the
  marginal likelihood exactly as the original, and whose own state is the same again.
* Through the CLI: one rejection per kind of corruption (`laplace predict / evaluate / tune` on
  a truncated file, an unknown version, a missing key, a wrong shape, NaN, another model), each
  exit 2 with a one-line message naming the file and the problem.
* `laplace fit -o post.st` failing or killed during the write leaves an existing `post.st`
  intact (and, unless killed outright, no temporary files).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import CliRunner

from laplace_cli import Laplace
from laplace_cli.cli.app import app
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.checkpoints import model_fingerprint
from laplace_cli.io.posterior_file import read_posterior, write_posterior
from laplace_cli.laplace.rebuild import laplace_from_state
from laplace_cli.laplace.serialization import laplace_state
from tests.conftest import tiny_cnn, tiny_data, tiny_mlp

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"
MODEL_REF = {"path": "model.pt", "form": "state_dict", "factory": "m:f", "kwargs": {}}


pytestmark = pytest.mark.usefixtures("one_thread")


def loader(X: torch.Tensor, y: torch.Tensor, bs: int = 5) -> list[tuple[torch.Tensor, ...]]:
    return [(X[i : i + bs], y[i : i + bs]) for i in range(0, len(X), bs)]


# --- library round trip ------------------------------------------------------------------------
# (model, likelihood, subset, structure)
COMBOS = [
    ("mlp", "classification", "all", "diag"),
    ("mlp", "classification", "all", "kron"),
    ("mlp", "classification", "all", "full"),
    ("mlp", "classification", "all", "lowrank"),
    ("mlp", "classification", "last_layer", "diag"),
    ("mlp", "classification", "last_layer", "kron"),
    ("mlp", "classification", "last_layer", "full"),
    ("mlp", "classification", "last_layer", "lowrank"),
    ("mlp", "classification", "subnetwork", "diag"),
    ("mlp", "classification", "subnetwork", "full"),
    ("mlp", "regression", "all", "kron"),
    ("mlp", "regression", "last_layer", "full"),
    ("mlp", "binary", "all", "diag"),
    ("cnn", "classification", "all", "kron"),
    ("cnn", "classification", "all", "diag"),
]


def _fitted(kind: str, likelihood: str, subset: str, structure: str) -> tuple[Laplace, Any]:
    make = (lambda: tiny_cnn()) if kind == "cnn" else (lambda: tiny_mlp())
    X, y = tiny_data(likelihood, n_out=3 if kind == "cnn" else 4, image=kind == "cnn")
    kwargs: dict[str, Any] = {}
    if subset == "subnetwork":
        kwargs["subnetwork_indices"] = torch.tensor([0, 3, 5, 20, 30, 40])
    if structure == "lowrank":
        kwargs["rank"] = 3
    la = Laplace(make(), likelihood, subset, structure, temperature=0.8, **kwargs)
    la.fit(loader(X, y))
    # A layer-wise prior, σ and a tuning record, as `laplace tune` leaves them: they must
    # survive the file too. (Set, not optimised: the optimiser is tested elsewhere.)
    n_groups = len(la.subset.groups)
    la.prior_precision = torch.linspace(0.5, 2.0, n_groups)
    if likelihood == "regression":
        la.sigma_noise = 0.7
    la.tuning = {
        "method": "marglik",
        "prior_structure": "layerwise",
        "prior_precision": la.prior_precision.tolist(),
        "pred_type": "glm",
        "link_approx": "probit",
    }
    return la, (make, X)


@pytest.mark.parametrize(
    ("kind", "likelihood", "subset", "structure"),
    COMBOS,
    ids=[f"{st}-{sub}-{lik}-{kind}" for kind, lik, sub, st in COMBOS],
)
def test_round_trip_predicts_identically(
    float64: None, tmp_path: Path, kind: str, likelihood: str, subset: str, structure: str
) -> None:
    la, (make, X) = _fitted(kind, likelihood, subset, structure)
    fingerprint = model_fingerprint(la.model)
    tensors, meta = laplace_state(la, model_ref=MODEL_REF, fingerprint=fingerprint)
    path = tmp_path / "post.st"
    write_posterior(path, tensors, meta)

    pf = read_posterior(path)
    assert pf.metadata["structure"] == structure and pf.metadata["subset"] == subset
    assert pf.metadata["fingerprint"] == fingerprint
    model = make()  # a fresh copy of the same weights, as a user would load it
    assert model_fingerprint(model) == fingerprint
    la2 = laplace_from_state(model, pf.tensors, pf.metadata)

    # Same hyperparameters and data summary ...
    assert torch.equal(la2.prior_precision, la.prior_precision)
    assert torch.equal(la2.sigma_noise, la.sigma_noise)
    assert la2.temperature == la.temperature and la2.n_data == la.n_data
    assert la2.tuning == la.tuning

    # ... the same predictive, marginal likelihood and samples, to the last bits (K-FAC
    # rebuilds its products from the stored eigenbases: rounding-level differences, ~1e-16).
    def same(a: torch.Tensor, b: torch.Tensor) -> None:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)

    if likelihood == "regression":
        for a, b in zip(la2(X), la(X)):
            same(a, b)
    else:
        same(la2(X), la(X))
        if likelihood == "classification":
            same(la2(X, link_approx="bridge"), la(X, link_approx="bridge"))
    same(la2.functional_variance(X)[1], la.functional_variance(X)[1])
    same(la2.log_marginal_likelihood(), la.log_marginal_likelihood())
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    same(la2.sample(4, generator=g2), la.sample(4, generator=g1))
    # Saving the loaded posterior gives the same state again (load ∘ save is the identity).
    tensors2, meta2 = laplace_state(la2, model_ref=MODEL_REF, fingerprint=fingerprint)
    assert tensors2.keys() == tensors.keys()
    for name in tensors:
        assert torch.equal(tensors2[name], tensors[name]), name
    assert meta2 == meta


def test_round_trip_keeps_float32(tmp_path: Path) -> None:
    la, (make, X) = _fitted("mlp", "classification", "all", "kron")
    tensors, meta = laplace_state(la, model_ref=MODEL_REF, fingerprint=model_fingerprint(la.model))
    write_posterior(tmp_path / "p.st", tensors, meta)
    pf = read_posterior(tmp_path / "p.st")
    assert pf.tensors["mean"].dtype == torch.float32
    la2 = laplace_from_state(make(), pf.tensors, pf.metadata)
    assert la2(X).dtype == torch.float32
    torch.testing.assert_close(la2(X), la(X), rtol=1e-6, atol=1e-7)


def test_load_refuses_a_model_with_other_weights_or_names(float64: None) -> None:
    la, (make, _) = _fitted("mlp", "classification", "all", "diag")
    tensors, meta = laplace_state(la, model_ref=MODEL_REF, fingerprint="0" * 64)
    other = make()
    with torch.no_grad():
        other[2].weight.add_(0.1)
    with pytest.raises(BadInputError, match="MAP weights differ from the model's parameters"):
        laplace_from_state(other, tensors, meta)
    renamed = nn.Sequential()
    renamed.add_module("body", make()[0])
    renamed.add_module("act", nn.Tanh())
    renamed.add_module("head", make()[2])
    with pytest.raises(BadInputError, match="parameters do not match the model's"):
        laplace_from_state(renamed, tensors, meta)


# --- a real posterior for the CLI tests -----------------------------------------------------------
def invoke(args: list[Any], **kwargs: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


DATA = SAMPLES / "digits_mlp" / "data.yaml"


def _fit_args(model: list[Any], out: Path) -> list[Any]:
    return ["fit", *model, "--data", DATA, "--subset", "last_layer", "--structure", "kron",
            "-o", out, "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """digits_mlp, last-layer K-FAC (fast), fitted through the CLI; plus a small input file."""
    root = tmp_path_factory.mktemp("fitted")
    post = root / "post.st"
    result = invoke(_fit_args([SAMPLES / "digits_mlp" / "model.pt2"], post))
    assert result.exit_code == 0, result.stderr
    x = np.load(SAMPLES / "digits_mlp" / "test.npz")["x"][:5]
    np.savez(root / "x.npz", x=x)
    return {"root": root, "post": post, "input": root / "x.npz"}


def _read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(path), meta


def _corrupt(kind: str, src: Path, dst: Path) -> str:
    """Write a corrupted copy of `src` to `dst`; return the text the error must contain."""
    data = src.read_bytes()
    tensors, meta = _read_raw(src)
    if kind == "truncated":
        dst.write_bytes(data[:-100])
        return "the file is truncated or corrupt"
    if kind == "truncated-header":
        dst.write_bytes(data[:50])
        return "exceeds the file size (50 bytes); the file is truncated or corrupt"
    if kind == "not-safetensors":
        dst.write_bytes(b"PK\x03\x04 this is a zip file, not a posterior")
        return "header"
    if kind == "unknown-version":
        save_file(tensors, dst, metadata={**meta, "format_version": "99"})
        return "format_version '99' is not supported"
    if kind == "other-format":
        save_file(tensors, dst, metadata={**meta, "format": "someone-else/weights"})
        return "not a laplace-cli posterior"
    if kind == "missing-key":
        save_file(tensors, dst, metadata={k: v for k, v in meta.items() if k != "n_data"})
        return "missing metadata key(s): n_data"
    if kind == "missing-tensor":
        save_file({k: v for k, v in tensors.items() if k != "prior.precision"}, dst, metadata=meta)
        return "prior.precision"
    if kind == "wrong-shape":
        n = tensors["mean"].numel()
        save_file({**tensors, "mean": tensors["mean"][:-1].clone()}, dst, metadata=meta)
        return f"tensor 'mean' has shape ({n - 1},), expected ({n},)"
    if kind == "nan":
        name = next(k for k in sorted(tensors) if k.endswith("eigvals"))
        bad = tensors[name].clone()
        bad[0] = float("nan")
        save_file({**tensors, name: bad}, dst, metadata=meta)
        return f"non-finite values (NaN or Inf) in tensor(s) '{name}'"
    raise AssertionError(kind)


# (corruption, command): every kind is tried through one of the three commands that read it.
CORRUPTIONS = [
    ("truncated", "predict"),
    ("truncated-header", "evaluate"),
    ("not-safetensors", "tune"),
    ("unknown-version", "tune"),
    ("other-format", "predict"),
    ("missing-key", "predict"),
    ("missing-tensor", "evaluate"),
    ("wrong-shape", "evaluate"),
    ("nan", "tune"),
]


def _command(command: str, post: Path, fitted: dict[str, Path]) -> list[Any]:
    return {
        "predict": ["predict", "-p", post, "--input", fitted["input"]],
        "evaluate": ["evaluate", "-p", post, "--data", DATA],
        "tune": ["tune", "-p", post],
    }[command]


@pytest.mark.parametrize(("kind", "command"), CORRUPTIONS, ids=[k for k, _ in CORRUPTIONS])
def test_corrupt_posterior_is_refused(
    fitted: dict[str, Path], tmp_path: Path, kind: str, command: str
) -> None:
    bad = tmp_path / "bad.st"
    expected = _corrupt(kind, fitted["post"], bad)
    before = bad.read_bytes()
    result = invoke(_command(command, bad, fitted))
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {bad}: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert bad.read_bytes() == before  # tune never rewrites a file it refused


def test_posterior_refuses_another_checkpoint(fitted: dict[str, Path]) -> None:
    other = SAMPLES / "digits_cnn" / "model.pt2"
    result = invoke(_command("predict", fitted["post"], fitted) + ["--model", other])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(
        f"error: {fitted['post']} was fitted on a model with fingerprint"
    )
    assert f"but {other} has" in result.stderr and result.stderr.count("\n") == 1
    assert "the model given with --model is not the one it was fitted on" in result.stderr
    assert "pass --model" not in result.stderr


def test_posterior_refuses_same_architecture_other_weights(
    fitted: dict[str, Path], tmp_path: Path
) -> None:
    weights = load_file(SAMPLES / "digits_mlp" / "model.safetensors")
    weights["4.bias"] = weights["4.bias"] + 1e-3  # the last layer: the posterior's own subset
    perturbed = tmp_path / "perturbed.safetensors"
    save_file(weights, perturbed)
    factory = f"{SAMPLES / 'models.py'}:digits_mlp"
    for command in ("evaluate", "tune"):
        args = _command(command, fitted["post"], fitted)
        result = invoke(args + ["--model", perturbed, "--model-factory", factory])
        assert result.exit_code == 2, result.stderr
        assert "was fitted on a model with fingerprint" in result.stderr
        assert f"but {perturbed} has" in result.stderr
    # The right weights in the same form are accepted (same fingerprint as the .pt2).
    ok = invoke(
        _command("predict", fitted["post"], fitted)
        + ["--model", SAMPLES / "digits_mlp" / "model.safetensors", "--model-factory", factory]
    )
    assert ok.exit_code == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 5


def test_posterior_refuses_its_checkpoint_changed_on_disk(tmp_path: Path) -> None:
    """The posterior names `model.safetensors`; retraining overwrote it since the fit."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes((SAMPLES / "digits_mlp" / "model.safetensors").read_bytes())
    factory = f"{SAMPLES / 'models.py'}:digits_mlp"
    post = tmp_path / "post.st"
    fit = invoke(_fit_args([weights, "--model-factory", factory], post))
    assert fit.exit_code == 0, fit.stderr
    state = load_file(weights)
    state["4.weight"] = state["4.weight"] * 1.01
    save_file(state, weights)
    result = invoke(["tune", "-p", post])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {post} was fitted on a model with fingerprint")
    assert f"({weights})" in result.stderr  # names the checkpoint the posterior records
    assert "pass --model for the checkpoint it was fitted on" in result.stderr  # none was given


# --- atomic writes ----------------------------------------------------------------------------
def _existing(fitted: dict[str, Path], tmp_path: Path) -> tuple[Path, bytes]:
    """An earlier posterior at the output path, which a failed fit must leave alone."""
    out = tmp_path / "post.st"
    out.write_bytes(fitted["post"].read_bytes())
    return out, out.read_bytes()


def test_failed_rename_leaves_the_old_posterior(
    fitted: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, before = _existing(fitted, tmp_path)

    def full_disk(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    result = invoke(_fit_args([SAMPLES / "digits_mlp" / "model.pt2"], out))
    monkeypatch.undo()
    assert result.exit_code == 2
    assert result.stderr == f"error: {out}: cannot write (No space left on device)\n"
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post.st"]  # no temporary file left


def test_interrupt_during_the_write_leaves_the_old_posterior(
    fitted: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, before = _existing(fitted, tmp_path)
    written: list[int] = []

    def interrupted(fd: int) -> None:  # the bytes are in the temporary file, not yet renamed
        written.append(os.fstat(fd).st_size)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    result = invoke(_fit_args([SAMPLES / "digits_mlp" / "model.pt2"], out))
    monkeypatch.undo()
    assert written and written[0] > 1000  # it was interrupted with the new file written
    assert result.exit_code == 130
    assert result.stderr == "error: interrupted\n"
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post.st"]


_KILL_DURING_WRITE = """
import os, signal, sys
real_fsync = os.fsync
def fsync(fd):
    # SIGKILL (no cleanup possible) once the new posterior is written to its temporary file.
    if ".post.st." in os.readlink(f"/proc/self/fd/{fd}"):
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)
os.fsync = fsync
from laplace_cli.cli.app import main
sys.argv = ["laplace", *sys.argv[1:]]
main()
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_killed_fit_never_leaves_a_partial_posterior(
    fitted: dict[str, Path], tmp_path: Path
) -> None:
    out, before = _existing(fitted, tmp_path)
    args = [str(a) for a in _fit_args([SAMPLES / "digits_mlp" / "model.pt2"], out)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env["OMP_NUM_THREADS"] = "1"  # as `_one_thread` does in this process
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_DURING_WRITE, *args],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr.decode()
    assert out.read_bytes() == before
    assert read_posterior(out).metadata["structure"].value == "kron"
    # A SIGKILLed process cannot remove its temporary file; it is hidden and never `post.st`.
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "post.st")
    assert len(leftovers) == 1 and leftovers[0].startswith(".post.st.")
    assert leftovers[0].endswith(".tmp")


def test_fit_replaces_an_existing_posterior_whole(fitted: dict[str, Path], tmp_path: Path) -> None:
    out, before = _existing(fitted, tmp_path)
    model = SAMPLES / "digits_mlp" / "model.pt2"
    result = invoke(["fit", model, "--data", DATA, "--structure", "diag", "-o", out, "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["structure"] == "diag"
    assert read_posterior(out).metadata["structure"].value == "diag"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post.st"]
