"""The posterior file format (docs/posterior-format.md): round trips, golden bytes, rejections."""

from __future__ import annotations

import json
import math
import os
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from laplace_cli.core.enums import Structure, Subset
from laplace_cli.core.errors import BadInputError, FingerprintMismatchError, NumericalError
from laplace_cli.io import atomic
from laplace_cli.io.atomic import atomic_write, atomic_write_bytes
from laplace_cli.io.posterior_file import (
    FORMAT,
    PosteriorFile,
    check_fingerprint,
    describe,
    read_posterior,
    read_safetensors_header,
    validate_posterior,
    write_posterior,
)

FP = "ab12" * 16
CREATED = "2024-01-02T03:04:05+00:00"


# --- building small synthetic states by hand ---------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spd_eig(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    vals, vecs = torch.linalg.eigh(a @ a.T + torch.eye(n, dtype=torch.float64))
    return vals, vecs


def make_state(
    structure: str = "diag",
    subset: str = "all",
    likelihood: str = "classification",
    prior: str = "scalar",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A valid state: a Linear(2->3) (+ a Conv2d(1->2, 2x2) for kron) on 3 outputs."""
    g = _gen(0)
    f64 = torch.float64
    if structure == "kron":
        names = ["conv.weight", "conv.bias", "fc.weight", "fc.bias", "scale"]
        shapes = [[2, 1, 2, 2], [2], [3, 2], [3], [4]]
        kinds = ["kron", "kron_bias", "kron", "kron_bias", "diag"]
    elif subset == "subnetwork":
        # Entries 0, 2, 5 of fc.weight (6 entries) and entry 1 of fc.bias: one group per
        # tensor with selected entries, shaped by their count.
        names, shapes, kinds = ["fc.weight", "fc.bias"], [[3], [1]], []
    else:
        names, shapes, kinds = ["fc.weight", "fc.bias"], [[3, 2], [3]], []
    p = sum(math.prod(s) for s in shapes)
    tensors: dict[str, torch.Tensor] = {}
    if subset == "subnetwork":
        tensors["subnetwork.indices"] = torch.tensor([0, 2, 5, 7], dtype=torch.int64)
    tensors["mean"] = torch.randn(p, generator=g, dtype=f64)
    tensors["prior.precision"] = {
        "scalar": torch.ones(1, dtype=f64),
        "layerwise": torch.rand(len(names), generator=g, dtype=f64) + 0.5,
        "diag": torch.rand(p, generator=g, dtype=f64) + 0.5,
    }[prior]
    tensors["prior.mean"] = torch.zeros(1, dtype=f64)
    if structure == "diag":
        tensors["diag.curvature"] = torch.rand(p, generator=g, dtype=f64)
    elif structure == "full":
        a = torch.randn(p, p, generator=g, dtype=f64)
        tensors["full.curvature"] = a @ a.T
    elif structure == "lowrank":
        u, _ = torch.linalg.qr(torch.randn(p, 2, generator=g, dtype=f64))
        tensors["lowrank.U"] = u
        tensors["lowrank.eigvals"] = torch.tensor([3.0, 1.0], dtype=f64)
        tensors["lowrank.diag"] = torch.rand(p, generator=g, dtype=f64)
    elif structure == "kron":
        for name, shape, kind in zip(names, shapes, kinds, strict=True):
            if kind in ("kron", "kron_bias"):
                vals, vecs = _spd_eig(shape[0], g)
                tensors[f"kron.{name}.B.eigvals"], tensors[f"kron.{name}.B.eigvecs"] = vals, vecs
            if kind == "kron":
                vals, vecs = _spd_eig(math.prod(shape) // shape[0], g)
                tensors[f"kron.{name}.A.eigvals"], tensors[f"kron.{name}.A.eigvecs"] = vals, vecs
            if kind == "diag":
                tensors[f"kron.{name}.diag"] = torch.rand(math.prod(shape), generator=g, dtype=f64)
    metadata: dict[str, Any] = {
        "likelihood": likelihood,
        "subset": subset,
        "structure": structure,
        "curvature": "ggn",
        "n_data": 10,
        "n_outputs": 3,
        "loss": 4.25,
        "temperature": 1.0,
        "sigma_noise": [0.5, 1.0, 2.0] if likelihood == "regression" else [1.0],
        "param_names": names,
        "param_shapes": shapes,
        "model": {"path": "model.pt", "form": "state_dict", "factory": "m:f", "kwargs": {"h": 3}},
        "fingerprint": FP,
    }
    if structure == "kron":
        metadata["blocks"] = [
            {"name": n, "kind": k, "shape": s} for n, s, k in zip(names, shapes, kinds, strict=True)
        ]
    if subset == "last_layer":
        metadata["last_layer_name"] = "fc"
    return tensors, metadata


def encode(metadata: dict[str, Any]) -> dict[str, str]:
    """What a writer stores: strings as they are, everything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def write_raw(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write a file *without* our writer's validation, to build corrupt files."""
    full = {"format": FORMAT, "format_version": "1", "library_version": "0.1.0"}
    full["created"] = CREATED
    full.update(metadata)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    path.write_bytes(st_save(tensors, metadata=encode(full)))
    return path


def split_header(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_header(header: dict[str, Any], body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def assert_same(a: PosteriorFile, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]):
    assert set(a.tensors) == set(tensors)
    for name, t in tensors.items():
        assert a.tensors[name].dtype == t.dtype, name
        assert torch.equal(a.tensors[name], t), name
    for key, value in metadata.items():
        assert a.metadata[key] == value, key


# --- round trips ---------------------------------------------------------------------------
CASES = [
    ("diag", "all", "classification", "scalar"),
    ("diag", "all", "regression", "diag"),
    ("full", "all", "binary", "layerwise"),
    ("full", "last_layer", "classification", "scalar"),
    ("kron", "all", "classification", "layerwise"),
    ("lowrank", "all", "regression", "scalar"),
    ("diag", "subnetwork", "classification", "diag"),
    ("full", "subnetwork", "regression", "scalar"),
    ("lowrank", "subnetwork", "classification", "scalar"),
]


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_round_trip(tmp_path: Path, case: tuple[str, str, str, str]) -> None:
    tensors, metadata = make_state(*case)
    path = tmp_path / "post.st"
    write_posterior(path, tensors, metadata)
    pf = read_posterior(path)
    assert_same(pf, tensors, metadata)
    assert pf.path == path
    assert pf.metadata["format"] == FORMAT and pf.metadata["format_version"] == "1"
    assert pf.metadata["structure"] is Structure(case[0])
    assert pf.metadata["subset"] is Subset(case[1])
    datetime_ok = pf.metadata["created"].endswith("+00:00")
    assert datetime_ok
    assert os.listdir(tmp_path) == ["post.st"]  # no temp files left behind


def test_round_trip_lowrank_without_diag_and_float32(tmp_path: Path) -> None:
    tensors, metadata = make_state("lowrank")
    del tensors["lowrank.diag"]
    tensors = {k: v.float() for k, v in tensors.items()}
    write_posterior(tmp_path / "p.st", tensors, metadata)
    assert_same(read_posterior(tmp_path / "p.st"), tensors, metadata)


def test_writer_accepts_noncontiguous_shared_and_enum_values(tmp_path: Path) -> None:
    tensors, metadata = make_state("full")
    tensors["full.curvature"] = tensors["full.curvature"].T  # non-contiguous view
    tensors["prior.mean"] = tensors["mean"]  # shares memory: safetensors alone would refuse
    metadata.update(structure=Structure.FULL, subset=Subset.ALL, param_shapes=((3, 2), (3,)))
    write_posterior(tmp_path / "p.st", tensors, metadata)
    pf = read_posterior(tmp_path / "p.st")
    assert torch.equal(pf.tensors["full.curvature"], tensors["full.curvature"])
    assert pf.metadata["param_shapes"] == [[3, 2], [3]]


def test_writer_is_deterministic(tmp_path: Path) -> None:
    tensors, metadata = make_state("kron")
    metadata["created"] = CREATED
    write_posterior(tmp_path / "a.st", tensors, metadata)
    write_posterior(tmp_path / "b.st", tensors, metadata)
    assert (tmp_path / "a.st").read_bytes() == (tmp_path / "b.st").read_bytes()


def test_validate_posterior_in_memory_returns_normalised_metadata() -> None:
    tensors, metadata = make_state("kron")
    meta = validate_posterior(tensors, metadata)
    assert meta["structure"] is Structure.KRON
    assert meta["format"] == FORMAT and "created" in meta
    tensors["kron.fc.weight.A.eigvals"] = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(
        BadInputError,
        match=r"<memory>: tensor 'kron.fc.weight.A.eigvals' has shape \(5,\), expected \(2,\)",
    ):
        validate_posterior(tensors, metadata)


def test_describe(tmp_path: Path) -> None:
    tensors, metadata = make_state("kron")
    write_posterior(tmp_path / "p.st", tensors, metadata)
    d = describe(read_posterior(tmp_path / "p.st"))
    assert d["file_size"] == (tmp_path / "p.st").stat().st_size
    assert d["n_params"] == 8 + 2 + 6 + 3 + 4
    assert d["tensors"]["kron.conv.weight.A.eigvecs"] == {
        "dtype": "float64",
        "shape": [4, 4],
        "bytes": 128,
    }
    assert d["metadata"]["structure"] == "kron"
    assert list(d["metadata"])[:2] == ["format", "format_version"]
    json.dumps(d)  # JSON-ready


# --- golden bytes --------------------------------------------------------------------------
GOLDEN_HEADER = (
    # Metadata values are strings: the JSON-typed ones (loss, model, ...) are JSON *inside* a
    # JSON string, hence the escaped quotes.
    rb'{"__metadata__":{"created":"2024-01-02T03:04:05+00:00","curvature":"ggn",'
    rb'"fingerprint":"00ff","format":"laplace-cli/posterior","format_version":"1",'
    rb'"library_version":"0.1.0","likelihood":"regression","loss":"1.5",'
    rb'"model":"{\"factory\":null,\"form\":\"export\",\"kwargs\":null,\"path\":\"m.pt2\"}",'
    rb'"n_data":"4","n_outputs":"1","param_names":"[\"w\"]","param_shapes":"[[2]]",'
    rb'"sigma_noise":"[1.0]","structure":"diag","subset":"all","temperature":"1.0"},'
    rb'"diag.curvature":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
    rb'"mean":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},'
    rb'"prior.mean":{"dtype":"F32","shape":[1],"data_offsets":[16,20]},'
    rb'"prior.precision":{"dtype":"F32","shape":[1],"data_offsets":[20,24]}}'
)


def test_golden_header(tmp_path: Path) -> None:
    """The exact bytes of a tiny file: a change here is a format change (bump the version)."""
    f32 = torch.float32
    tensors = {
        "mean": torch.tensor([1.0, -2.0], dtype=f32),
        "prior.precision": torch.tensor([1.0], dtype=f32),
        "prior.mean": torch.tensor([0.0], dtype=f32),
        "diag.curvature": torch.tensor([0.5, 4.0], dtype=f32),
    }
    metadata = {
        "created": CREATED,
        "library_version": "0.1.0",
        "likelihood": "regression",
        "subset": "all",
        "structure": "diag",
        "curvature": "ggn",
        "n_data": 4,
        "n_outputs": 1,
        "loss": 1.5,
        "temperature": 1.0,
        "sigma_noise": [1.0],
        "param_names": ["w"],
        "param_shapes": [[2]],
        "model": {"path": "m.pt2", "form": "export", "factory": None, "kwargs": None},
        "fingerprint": "00ff",
    }
    path = tmp_path / "tiny.st"
    write_posterior(path, tensors, metadata)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    padded = GOLDEN_HEADER + b" " * (-len(GOLDEN_HEADER) % 8)
    assert n == len(padded) and n % 8 == 0
    assert data[8 : 8 + n] == padded
    body = data[8 + n :]
    assert body == struct.pack("<6f", 0.5, 4.0, 1.0, -2.0, 0.0, 1.0)
    assert len(data) == 8 + n + 24


# --- rejections: one per kind of corruption ---------------------------------------------------
@pytest.fixture
def valid_file(tmp_path: Path) -> Path:
    tensors, metadata = make_state("diag")
    path = tmp_path / "post.st"
    write_posterior(path, tensors, metadata)
    return path


def test_reject_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"nope\.st: no such file"):
        read_posterior(tmp_path / "nope.st")


def test_reject_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="is a folder"):
        read_posterior(tmp_path)


def test_reject_too_short(tmp_path: Path) -> None:
    (tmp_path / "p.st").write_bytes(b"\x01\x02")
    with pytest.raises(BadInputError, match="shorter than the 8-byte header length"):
        read_posterior(tmp_path / "p.st")


def test_reject_truncated(valid_file: Path) -> None:
    data = valid_file.read_bytes()
    valid_file.write_bytes(data[:-5])
    with pytest.raises(BadInputError, match=rf"{valid_file.name}: .*truncated"):
        read_posterior(valid_file)


def test_reject_trailing_bytes(valid_file: Path) -> None:
    valid_file.write_bytes(valid_file.read_bytes() + b"\0" * 8)
    with pytest.raises(BadInputError, match="trailing bytes"):
        read_posterior(valid_file)


def test_reject_header_length_beyond_file(valid_file: Path) -> None:
    data = valid_file.read_bytes()
    valid_file.write_bytes(struct.pack("<Q", len(data)) + data[8:])
    with pytest.raises(BadInputError, match=r"header length \d+ exceeds the file size"):
        read_posterior(valid_file)


def test_reject_absurd_header_length_without_allocating(tmp_path: Path) -> None:
    path = tmp_path / "p.st"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}" + b" " * 30)
    tracemalloc.start()
    try:
        with pytest.raises(BadInputError, match=r"header length 1152921504606846976 is absurd"):
            read_posterior(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_reject_header_not_json(valid_file: Path) -> None:
    data = bytearray(valid_file.read_bytes())
    data[8] = ord("[")  # '{' -> '['
    valid_file.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="header is not valid UTF-8 JSON"):
        read_posterior(valid_file)


def test_reject_offsets_outside_file(valid_file: Path) -> None:
    header, body = split_header(valid_file.read_bytes())
    header["mean"]["data_offsets"] = [len(body) - 8, len(body) + 64]
    valid_file.write_bytes(join_header(header, body))
    with pytest.raises(
        BadInputError, match=r"tensor 'mean': data_offsets \[\d+, \d+\] lie outside"
    ):
        read_posterior(valid_file)


def test_reject_overlapping_offsets(valid_file: Path) -> None:
    header, body = split_header(valid_file.read_bytes())
    header["prior.mean"]["data_offsets"] = [0, 8]  # same bytes as the first tensor
    valid_file.write_bytes(join_header(header, body))
    with pytest.raises(BadInputError, match="overlaps the previous tensor"):
        read_posterior(valid_file)


def test_reject_shape_inconsistent_with_bytes(valid_file: Path) -> None:
    header, body = split_header(valid_file.read_bytes())
    header["mean"]["shape"] = [10]
    valid_file.write_bytes(join_header(header, body))
    with pytest.raises(
        BadInputError, match=r"'mean': F64 of shape \[10\] needs 80 bytes, its byte range holds 72"
    ):
        read_posterior(valid_file)


def test_reject_unknown_dtype(valid_file: Path) -> None:
    header, body = split_header(valid_file.read_bytes())
    header["mean"]["dtype"] = "F128"
    valid_file.write_bytes(join_header(header, body))
    with pytest.raises(BadInputError, match="unsupported dtype 'F128'"):
        read_posterior(valid_file)


def test_reject_not_a_posterior(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(st_save({"w": torch.zeros(2)}))
    with pytest.raises(
        BadInputError, match="not a laplace-cli posterior: the file has no metadata"
    ):
        read_posterior(tmp_path / "w.safetensors")
    (tmp_path / "w.safetensors").write_bytes(
        st_save({"w": torch.zeros(2)}, metadata={"format": "pt"})
    )
    with pytest.raises(
        BadInputError, match="metadata format is 'pt', expected 'laplace-cli/posterior'"
    ):
        read_posterior(tmp_path / "w.safetensors")


def test_reject_unknown_version(tmp_path: Path) -> None:
    tensors, metadata = make_state("diag")
    path = write_raw(tmp_path / "p.st", tensors, {**metadata, "format_version": "2"})
    with pytest.raises(
        BadInputError, match=r"format_version '2' is not supported; laplace-cli \S+ reads version 1"
    ):
        read_posterior(path)


def test_reject_missing_keys_lists_all(tmp_path: Path) -> None:
    tensors, metadata = make_state("kron")
    for key in ("n_data", "fingerprint", "blocks"):
        del metadata[key]
    path = write_raw(tmp_path / "p.st", tensors, metadata)
    with pytest.raises(
        BadInputError, match=r"missing metadata key\(s\): n_data, fingerprint, blocks$"
    ):
        read_posterior(path)


def test_reject_unknown_metadata_key(tmp_path: Path) -> None:
    tensors, metadata = make_state("diag")
    path = write_raw(tmp_path / "p.st", tensors, {**metadata, "sigma_nosie": "[1.0]"})
    with pytest.raises(
        BadInputError,
        match=r"unknown metadata key\(s\): 'sigma_nosie' \(did you mean 'sigma_noise'\?\)",
    ):
        read_posterior(path)


def test_reject_malformed_json_value(tmp_path: Path) -> None:
    tensors, metadata = make_state("diag")
    path = write_raw(tmp_path / "p.st", tensors, {**metadata, "param_shapes": "[[3, 2], [3]"})
    with pytest.raises(BadInputError, match="metadata 'param_shapes' is not valid JSON"):
        read_posterior(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("likelihood", "poisson", "'likelihood' must be one of classification|regression|binary"),
        ("n_data", 0, "'n_data' must be a positive integer"),
        ("temperature", -1.0, "'temperature' must be positive"),
        ("sigma_noise", [1.0, 2.0], "'sigma_noise' must have 1 or n_outputs=3 entries, got 2"),
        ("param_shapes", [[3, 2]], "'param_shapes' has 1 entries but 'param_names' has 2"),
        ("model", ["m.pt"], "'model' must be a JSON object"),
        ("fingerprint", "XYZ", "'fingerprint' must be a lower-case hex string"),
        ("created", "yesterday", "'created' must be an ISO 8601 time"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None,
)
def test_reject_bad_metadata_value(tmp_path: Path, key: str, value: Any, message: str) -> None:
    tensors, metadata = make_state("diag")
    path = write_raw(tmp_path / "p.st", tensors, {**metadata, key: value})
    with pytest.raises(BadInputError, match=message):
        read_posterior(path)


def test_reject_wrong_shape_names_tensor_expected_and_got(tmp_path: Path) -> None:
    tensors, metadata = make_state("diag")
    tensors["diag.curvature"] = torch.ones(8, dtype=torch.float64)
    path = write_raw(tmp_path / "p.st", tensors, metadata)
    with pytest.raises(
        BadInputError, match=r"p\.st: tensor 'diag.curvature' has shape \(8,\), expected \(9,\)"
    ):
        read_posterior(path)


def test_reject_wrong_kron_factor_shape(tmp_path: Path) -> None:
    tensors, metadata = make_state("kron")
    tensors["kron.conv.weight.A.eigvecs"] = torch.eye(3, dtype=torch.float64)
    path = write_raw(tmp_path / "p.st", tensors, metadata)
    with pytest.raises(
        BadInputError, match=r"'kron.conv.weight.A.eigvecs' has shape \(3, 3\), expected \(4, 4\)"
    ):
        read_posterior(path)


def test_reject_several_problems_together(tmp_path: Path) -> None:
    tensors, metadata = make_state("full")
    tensors["full.curvature"] = torch.ones(2, 2, dtype=torch.float64)
    tensors["prior.mean"] = torch.ones(4, dtype=torch.float64)
    path = write_raw(tmp_path / "p.st", tensors, metadata)
    with pytest.raises(
        BadInputError, match=r"2 problems:\n  - tensor 'prior.mean'.*\n  - tensor 'full.curvature'"
    ):
        read_posterior(path)


def test_reject_unknown_and_missing_tensors(tmp_path: Path) -> None:
    tensors, metadata = make_state("diag")
    tensors["diag.curvatur"] = tensors.pop("diag.curvature")
    path = write_raw(tmp_path / "p.st", tensors, metadata)
    with pytest.raises(
        BadInputError,
        match=r"missing tensor\(s\): diag.curvature(.|\n)*unknown tensor\(s\).*'diag.curvatur' \(did you mean 'diag.curvature'\?\)",
    ):
        read_posterior(path)


def test_reject_wrong_dtype(tmp_path: Path) -> None:
    tensors, metadata = make_state("diag")
    tensors["mean"] = torch.zeros(9, dtype=torch.int32)
    path = write_raw(tmp_path / "p.st", tensors, metadata)
    with pytest.raises(BadInputError, match="tensor 'mean' must be floating point, got int32"):
        read_posterior(path)


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([0, 5, 2, 7], "must be strictly increasing"),
        ([0, 2, 2, 7], "must be strictly increasing"),
        ([-1, 2, 5, 7], "has negative entries"),
        ([0, 2, 5], r"'subnetwork.indices' has shape \(3,\), expected \(4,\)"),
    ],
    ids=["unsorted", "repeated", "negative", "length"],
)
def test_reject_bad_subnetwork_indices(tmp_path: Path, indices: list[int], message: str) -> None:
    tensors, metadata = make_state("diag", "subnetwork")
    tensors["subnetwork.indices"] = torch.tensor(indices)
    path = write_raw(tmp_path / "p.st", tensors, metadata)
    with pytest.raises(BadInputError, match=message):
        read_posterior(path)


def test_per_output_and_prior_curvature(tmp_path: Path) -> None:
    """Regression with one noise per output stores (C, P) curvature; a posterior-as-prior adds its curvature."""
    for structure in ("diag", "full"):
        tensors, metadata = make_state(structure, likelihood="regression")
        h = tensors.pop(f"{structure}.curvature")
        tensors[f"{structure}.curvature_per_output"] = torch.stack([h, 2 * h, 3 * h])  # C = 3
        tensors[f"{structure}.prior_curvature"] = h.clone()
        metadata["loss"] = [1.0, 2.0, 3.5]
        write_posterior(tmp_path / "p.st", tensors, metadata)
        assert_same(read_posterior(tmp_path / "p.st"), tensors, metadata)
        tensors[f"{structure}.curvature"] = h
        with pytest.raises(BadInputError, match="are alternatives; store only one"):
            validate_posterior(tensors, metadata)
        del tensors[f"{structure}.curvature"], tensors[f"{structure}.curvature_per_output"]
        with pytest.raises(
            BadInputError,
            match=rf"missing tensor\(s\): {structure}.curvature \(or {structure}.curvature_per_output\)",
        ):
            validate_posterior(tensors, metadata)


def test_reject_kron_blocks_not_matching_params(tmp_path: Path) -> None:
    tensors, metadata = make_state("kron")
    metadata["blocks"][0]["kind"] = "kron_bias"
    path = write_raw(tmp_path / "p.st", tensors, metadata)
    with pytest.raises(
        BadInputError, match=r"blocks'\[0\] \(conv.weight\): kind 'kron_bias' needs a bias"
    ):
        read_posterior(path)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_reject_nonfinite_tensor_names_it(tmp_path: Path, value: float) -> None:
    tensors, metadata = make_state("diag")
    tensors["diag.curvature"][3] = value
    path = write_raw(tmp_path / "p.st", tensors, metadata)
    with pytest.raises(
        BadInputError, match=r"non-finite values \(NaN or Inf\) in tensor\(s\) 'diag.curvature'"
    ):
        read_posterior(path)


def test_reject_nonfinite_loss(tmp_path: Path) -> None:
    tensors, metadata = make_state("diag")
    path = write_raw(tmp_path / "p.st", tensors, {**metadata, "loss": "NaN"})
    with pytest.raises(BadInputError, match="metadata 'loss' is not finite"):
        read_posterior(path)


def test_writer_refuses_nonfinite_as_numerical(tmp_path: Path) -> None:
    tensors, metadata = make_state("diag")
    tensors["diag.curvature"][0] = math.nan
    with pytest.raises(NumericalError, match="'diag.curvature'"):
        write_posterior(tmp_path / "p.st", tensors, metadata)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_bad_layout(tmp_path: Path) -> None:
    tensors, metadata = make_state("diag")
    tensors["extra"] = torch.zeros(1)
    with pytest.raises(BadInputError, match="unknown tensor"):
        write_posterior(tmp_path / "p.st", tensors, metadata)
    assert list(tmp_path.iterdir()) == []


def test_writer_reports_missing_folder(tmp_path: Path) -> None:
    tensors, metadata = make_state("diag")
    with pytest.raises(BadInputError, match=r"no/such/p\.st: cannot write here"):
        write_posterior(tmp_path / "no" / "such" / "p.st", tensors, metadata)


def test_fingerprint_mismatch(valid_file: Path) -> None:
    pf = read_posterior(valid_file)
    check_fingerprint(pf.metadata, FP, valid_file)  # same: no error
    with pytest.raises(FingerprintMismatchError) as info:
        check_fingerprint(pf.metadata, "cd34" * 16, valid_file, model="other.pt")
    assert str(info.value) == (
        f"{valid_file} was fitted on a model with fingerprint ab12ab12ab12… (model.pt), but "
        "other.pt has cd34cd34cd34…; pass --model for the checkpoint it was fitted on"
    )
    assert info.value.exit_code == 2
    # A model given with --model: the hint says it is the wrong one, not "pass --model".
    with pytest.raises(FingerprintMismatchError) as given:
        check_fingerprint(pf.metadata, "cd34" * 16, valid_file, model="other.pt", overridden=True)
    assert str(given.value).endswith(
        "other.pt has cd34cd34cd34…; the model given with --model is not the one it was fitted "
        "on; pass that checkpoint, or leave out --model to load the one the posterior names"
    )
    assert "pass --model" not in str(given.value)


def test_read_header_only(valid_file: Path) -> None:
    header = read_safetensors_header(valid_file)
    assert header.metadata["format"] == FORMAT
    assert header.entries["mean"].shape == (9,)
    assert header.file_size == valid_file.stat().st_size


# --- atomic writes -------------------------------------------------------------------------
def test_atomic_write_keeps_old_file_when_body_fails(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_write_posterior_keeps_old_file_when_write_fails(
    valid_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = valid_file.read_bytes()
    tensors, metadata = make_state("full")

    def fail_fsync(fd: int) -> None:  # the bytes are written, the sync fails (disk full, EIO)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", fail_fsync)
    with pytest.raises(BadInputError, match="post.st: cannot write .No space left on device"):
        write_posterior(valid_file, tensors, metadata)
    assert valid_file.read_bytes() == old
    assert os.listdir(valid_file.parent) == ["post.st"]


def test_atomic_write_keeps_old_file_when_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def fail_replace(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.os, "replace", fail_replace)
    with pytest.raises(BadInputError, match="f.bin: cannot write"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_replaces_and_sets_usual_permissions(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    with atomic_write(path, "w") as f:
        f.write("héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o600)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o600  # an existing file keeps its mode


# --- fuzzing: only ever BadInputError ------------------------------------------------------
def _only_bad_input(path: Path) -> None:
    try:
        read_posterior(path)
    except BadInputError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=512))
def test_fuzz_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "p.st"
    path.write_bytes(data)
    _only_bad_input(path)


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    tensors, metadata = make_state("kron", prior="layerwise")
    path = tmp_path_factory.mktemp("valid") / "p.st"
    write_posterior(path, tensors, metadata)
    return path.read_bytes()


_mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.just(0)),
    # Header text: swap one character for another plausible JSON character.
    st.tuples(
        st.just("header"), st.integers(0, 10**6), st.sampled_from(list(b'0123456789[]{},:"-.e '))
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_fuzz_mutations_of_a_valid_file(
    tmp_path_factory: pytest.TempPathFactory,
    valid_bytes: bytes,
    mutations: list[tuple[str, int, int]],
) -> None:
    data = bytearray(valid_bytes)
    (n,) = struct.unpack("<Q", valid_bytes[:8])
    for kind, pos, value in mutations:
        if not data:
            break
        i = pos % len(data)
        if kind == "set":
            data[i] = value
        elif kind == "truncate":
            del data[i:]
        elif kind == "insert":
            data.insert(i, value)
        elif kind == "delete":
            del data[i]
        elif kind == "header" and len(data) > 8 + n:
            data[8 + pos % n] = value
    path = tmp_path_factory.mktemp("fuzz") / "p.st"
    path.write_bytes(bytes(data))
    _only_bad_input(path)
