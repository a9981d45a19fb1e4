"""Fuzz targets and hypothesis strategies for the two readers of untrusted files.

Shared by `test_fuzz.py` (a quick run inside the suite) and `benchmarks/fuzz_readers.py` (a run
of N minutes). The property is the same for both readers: any input gives either a value or a
`BadInputError` whose message starts with the file's name; anything else (a traceback, another
exception type, a hang) is a failure.

Targets:
    check_spec(text, folder)        load_dataset_spec on a YAML file holding `text`
    check_posterior(data, folder)   read_posterior on a file holding `data`
    check_recipe(text, folder)      load_recipe on a YAML file holding `text` (with its files)
    check_gate(text)                parse_gate, and evaluate_gates on a metrics table
    check_prediction_input(data)    predict's input reader on `data` as stdin (CSV / TSV /
                                    JSONL text, NPZ / .npy bytes, anything)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
import yaml
from hypothesis import strategies as st

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.datasets import load_dataset_spec
from laplace_cli.io.posterior_file import read_posterior, write_posterior

__all__ = [
    "check_gate",
    "check_posterior",
    "check_prediction_input",
    "check_recipe",
    "check_spec",
    "gate_texts",
    "prediction_inputs",
    "recipe_texts",
    "posterior_bytes",
    "spec_texts",
    "valid_posterior_bytes",
]

# --- the targets -------------------------------------------------------------------------------


def check_spec(text: str | bytes, folder: Path) -> str:
    """Load a dataset spec from `text`; return "ok" or "refused", raise on anything else.

    Only the spec is validated: splits are not loaded (a random `callable:` would import and
    call random code, which is what a spec is allowed to do, and not what this fuzzes).
    """
    path = folder / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        load_dataset_spec(path)
    except BadInputError as err:
        assert str(err).startswith(str(path)), f"message does not name the file: {err}"
        return "refused"
    return "ok"


def check_posterior(data: bytes, folder: Path) -> str:
    """Read a posterior from `data`; return "ok" or "refused", raise on anything else."""
    path = folder / "post.st"
    path.write_bytes(data)
    try:
        read_posterior(path)
    except BadInputError as err:
        assert str(err).startswith(str(path)), f"message does not name the file: {err}"
        return "refused"
    return "ok"


# --- YAML specs --------------------------------------------------------------------------------

_WORDS = [
    "task",
    "batch_size",
    "n_classes",
    "splits",
    "train",
    "val",
    "test",
    "path",
    "format",
    "x",
    "y",
    "target",
    "id",
    "callable",
    "kwargs",
    "text",
    "tokenizer",
    "max_length",
]
_VALUES = [
    "classification",
    "regression",
    "binary",
    "train.npz",
    "a.csv",
    "x.npy",
    "y.npy",
    "data.safetensors",
    "f.jsonl",
    "t.tsv",
    "w.pt",
    "npz",
    "csv",
    "mod.sub:fn",
    "file.py:fn",
    "../up.npz",
    "/abs/path.npz",
    "~/home.npz",
    "",
    " ",
]
_keys = st.sampled_from(_WORDS) | st.text(max_size=6)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.sampled_from(_VALUES)
    | st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=16,
)
_split = st.dictionaries(st.sampled_from(_WORDS[4:]) | _keys, _values, max_size=6)
_documents = (
    st.fixed_dictionaries(
        {},
        optional={
            "task": _values,
            "batch_size": _values,
            "n_classes": _values,
            "splits": st.dictionaries(_keys, _split | _values, max_size=4) | _values,
        },
    )
    | _values
)

_VALID_SPEC = (
    "task: classification\nbatch_size: 8\nn_classes: 3\nsplits:\n"
    "  train: {path: train.npz, x: x, y: y}\n"
    "  val: {path: val.csv, target: label, id: row}\n"
    "  test: {path: x.npy, y: y.npy}\n"
    "  custom: {callable: mod:make, kwargs: {n: 3}}\n"
)


@st.composite
def _mutated_text(draw: Any, base: str = _VALID_SPEC) -> str:
    """The valid spec with a few characters deleted, replaced or inserted."""
    text = base
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "replace", "insert"]))
        ch = draw(
            st.sampled_from(list(":{}[],-&*!|>'\"#% \n\t") + ["\x00", "é"]) | st.text(max_size=2)
        )
        if op == "delete":
            text = text[:i] + text[i + 1 :]
        elif op == "replace":
            text = text[:i] + ch + text[i + 1 :]
        else:
            text = text[:i] + ch + text[i:]
    return text


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, default_flow_style=None)


spec_texts = st.one_of(
    _documents.map(_dump),  # well-formed YAML, random structure and values
    _mutated_text(),  # near-valid specs with syntax damage
    st.text(max_size=200),  # arbitrary text
    st.binary(max_size=200),  # arbitrary bytes (invalid UTF-8 too)
)

# --- posterior files ---------------------------------------------------------------------------


def valid_posterior_bytes(folder: Path) -> bytes:
    """A small valid posterior (diag, last layer, 9 parameters) as bytes."""
    p = 9
    tensors = {
        "mean": torch.linspace(-1, 1, p, dtype=torch.float64),
        "prior.precision": torch.ones(1, dtype=torch.float64),
        "prior.mean": torch.zeros(1, dtype=torch.float64),
        "diag.curvature": torch.arange(1, p + 1, dtype=torch.float64),
    }
    metadata = {
        "likelihood": "classification",
        "subset": "last_layer",
        "structure": "diag",
        "curvature": "ggn",
        "n_data": 100,
        "n_outputs": 3,
        "loss": 12.5,
        "temperature": 1.0,
        "sigma_noise": [1.0],
        "param_names": ["fc.weight", "fc.bias"],
        "param_shapes": [[3, 2], [3]],
        "model": {"path": "model.pt", "form": "state_dict", "factory": "m:f", "kwargs": {}},
        "fingerprint": "ab12" * 16,
        "last_layer_name": "fc",
        "created": "2025-01-01T00:00:00+00:00",
        "library_version": "0.1.0",
    }
    path = folder / "valid.st"
    write_posterior(path, tensors, metadata)
    return path.read_bytes()


def _split_file(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join_file(header: dict[str, Any], body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**66), 2**66)
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["F64", "F32", "I64", "BOOL", "C64", "diag", "kron", "full", "1", "2"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def _header_mutation(draw: Any, valid: bytes) -> bytes:
    """The valid file with its header edited: entries, metadata keys and values, the data."""
    header, body = _split_file(valid)
    meta = header.setdefault("__metadata__", {})
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["meta-value", "meta-json", "meta-drop", "entry", "body"]))
        if kind == "meta-value":
            key = draw(st.sampled_from(sorted(meta)) | st.text(max_size=8))
            meta[key] = draw(st.text(max_size=30))
        elif kind == "meta-json":
            key = draw(st.sampled_from(sorted(meta)))
            meta[key] = json.dumps(draw(_json_values))
        elif kind == "meta-drop" and meta:
            meta.pop(draw(st.sampled_from(sorted(meta))))
        elif kind == "entry":
            names = sorted(k for k in header if k != "__metadata__")
            name = draw(st.sampled_from(names))
            field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "<drop>", "<name>"]))
            if field == "<drop>":
                header.pop(name)
            elif field == "<name>":
                header[draw(st.text(max_size=10))] = header.pop(name)
            else:
                header[name][field] = draw(_json_values)
        else:
            i = draw(st.integers(0, max(len(body) - 1, 0)))
            body = body[:i] + draw(st.binary(min_size=1, max_size=8)) + body[i + 1 :]
    return _join_file(header, body)


@st.composite
def _byte_mutation(draw: Any, valid: bytes) -> bytes:
    """The valid file truncated, extended or with a few bytes changed anywhere."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "append", "length"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "append":
            data += draw(st.binary(max_size=16))
        elif len(data) >= 8:
            data[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    return bytes(data)


def posterior_bytes(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, byte-level mutations and header-level mutations of `valid`."""
    return st.one_of(
        st.binary(max_size=256),
        _byte_mutation(valid),
        _header_mutation(valid),
    )


# --- recipes -----------------------------------------------------------------------------------


def check_recipe(text: str | bytes, folder: Path) -> str:
    """Load a recipe from `text` (its model and data files checked, nothing run): "ok" or
    "refused"; raise on anything else. Messages name a file: the recipe, or the data spec it
    names (`data.yaml` in `folder`, valid or not, is what a fuzzed `data:` may point at)."""
    from laplace_cli.pipeline.recipes import load_recipe

    path = folder / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        load_recipe(path)
    except BadInputError as err:
        first = str(err).splitlines()[0]
        assert first.startswith((str(path), str(folder))), f"message names no file: {err}"
        return "refused"
    return "ok"


def recipe_folder(folder: Path) -> Path:
    """The files a fuzzed recipe may name: a model, a valid data spec and its split."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(b"")
    np.savez(folder / "train.npz", x=np.zeros((4, 2), "float32"), y=np.zeros(4, "int64"))
    (folder / "data.yaml").write_text("splits:\n  train: {path: train.npz, x: x, y: y}\n")
    return folder


def _recipe_words() -> tuple[list[str], dict[str, list[str]]]:
    from laplace_cli.pipeline.recipes import SCHEMA

    return sorted(SCHEMA[""]), {k: sorted(v) for k, v in SCHEMA.items() if k}


_TOP, _SECTIONS = _recipe_words()
_RECIPE_VALUES = _values | st.sampled_from(
    ["model.pt", "data.yaml", "nope.yaml", "kron", "diag", "full", "marglik", "ece>0.1", "all"]
)
_recipe_documents = st.fixed_dictionaries(
    {},
    optional={
        **{k: _RECIPE_VALUES for k in _TOP if k not in _SECTIONS},
        **{
            name: st.dictionaries(st.sampled_from(keys) | _keys, _RECIPE_VALUES, max_size=5)
            | _RECIPE_VALUES
            for name, keys in _SECTIONS.items()
        },
        "model": st.fixed_dictionaries(
            {"path": st.sampled_from(["model.pt", "gone.pt"]) | _scalars},
            optional={"factory": st.sampled_from(["m:f", "file.py:f"]) | _scalars},
        )
        | _values,
        "data": st.sampled_from(["data.yaml", "spec.yaml", "nope.yaml"]) | _scalars,
        "stages": st.lists(st.sampled_from(["fit", "tune", "evaluate", "predict", "x"])),
    },
)
_VALID_RECIPE = (
    "model: {path: model.pt, factory: m:f}\ndata: data.yaml\nseed: 0\n"
    "stages: [fit, tune, evaluate]\nfit: {subset: all, structure: kron}\n"
    "tune: {method: gridsearch, grid_min: 0.01, grid_max: 10, grid_size: 5}\n"
    "evaluate: {split: train, fail_if: ['ece>0.1', 'nll > 1.05*map.nll']}\n"
)
recipe_texts = st.one_of(
    _recipe_documents.map(_dump),
    _mutated_text(_VALID_RECIPE),
    st.text(max_size=200),
    st.binary(max_size=100),
)

# --- gate expressions --------------------------------------------------------------------------

_GATE_ROWS = {
    "laplace": {"acc": 0.9, "nll": 0.3, "ece": 0.05, "brier": float("nan")},
    "map": {"acc": 0.91, "nll": 0.35, "ece": 0.07, "brier": 0.2},
}


def check_gate(text: str) -> str:
    """Parse a gate; if it parses, evaluate it on a small table: "ok" or "refused"."""
    from laplace_cli.pipeline.gates import evaluate_gates, parse_gate

    try:
        gate = parse_gate(text)
        evaluate_gates([gate], _GATE_ROWS)
    except BadInputError as err:
        assert str(err).strip(), "empty message"
        return "refused"
    return "ok"


_GATE_TOKENS = st.sampled_from(
    "ece nll acc brier map laplace baseline . * + - > >= < <= == != = 0.05 1e-3 1.05 nan inf "
    "diff_vs_map upper lower ( ) e 1e999 -0 _x9".split()
    + [" "]
)
_metric = st.tuples(
    st.sampled_from(["", "laplace.", "map.", "baseline.laplace.", "x."]),
    st.sampled_from(["ece", "nll", "acc", "brier", "nll.diff_vs_map", "ece.upper", "zz"]),
).map("".join)
_number = st.floats(allow_nan=False).map(repr) | st.sampled_from(["0.05", "1e-3", "-2", "1e999"])
_gate_forms = st.tuples(
    _metric,
    st.sampled_from([">", ">=", "<", "<=", "==", "!="]),
    st.one_of(
        _number,
        _metric,
        st.tuples(_number, st.just("*"), _metric).map("".join),
        st.tuples(_metric, st.sampled_from(["+", "-"]), _number).map("".join),
    ),
).map(" ".join)
gate_texts = st.one_of(
    _gate_forms,  # well-formed or nearly: parsed and evaluated
    st.lists(_GATE_TOKENS, max_size=9).map("".join),
    st.text(max_size=30),
)

# --- the prediction input reader (stdin) -------------------------------------------------------


def check_prediction_input(data: bytes) -> str:
    """Read `data` as `laplace predict` reads stdin (`--input -`): "ok" or "refused"."""
    import io
    import sys

    from laplace_cli.io.tabular import TableInfo, iter_feature_chunks

    stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    real, sys.stdin = sys.stdin, stdin
    try:
        for _, x in iter_feature_chunks("-", chunk_rows=4, info=TableInfo()):
            assert x.dtype == torch.float32 and x.ndim >= 2
    except BadInputError as err:
        assert str(err).startswith("<stdin>"), f"message does not name <stdin>: {err}"
        return "refused"
    finally:
        sys.stdin = real
    return "ok"


def _npz_bytes(arrays: dict[str, Any]) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy_bytes(array: Any) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


_cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["", " ", "nan", "x", "1e999", '"1,2"', "id", "label", "y", "é"]),
    st.text(max_size=4),
)
_csv_texts = st.lists(st.lists(_cells, min_size=1, max_size=5), min_size=1, max_size=6).flatmap(
    lambda rows: st.sampled_from([",", "\t", ";"]).map(
        lambda sep: "\n".join(sep.join(r) for r in rows) + "\n"
    )
)
_jsonl_texts = st.lists(_json_values, min_size=1, max_size=5).map(
    lambda recs: "".join(json.dumps(r) + "\n" for r in recs)
)
_arrays = st.sampled_from(
    [[[1.0, 2.0]], [[1, 2], [3, 4]], [1.0, 2.0, 3.0], [[[1.0]]], [], [[float("nan")]]]
)
prediction_inputs = st.one_of(
    _csv_texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
    _jsonl_texts.map(str.encode),
    st.dictionaries(st.sampled_from(["x", "y", "id", "z"]), _arrays, max_size=3).map(
        lambda d: _npz_bytes({k: __import__("numpy").asarray(v) for k, v in d.items()})
    ),
    _arrays.map(lambda a: _npy_bytes(__import__("numpy").asarray(a, dtype="float32"))),
    st.binary(max_size=200),
)
