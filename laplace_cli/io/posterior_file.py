"""The posterior file: one safetensors file holding a fitted Laplace posterior (format version 1).

The layout (tensor names, shapes, metadata keys) is specified in `docs/posterior-format.md`; this
module is its reference reader and writer. The reader parses the safetensors header itself
before anything is allocated, so a corrupt or hostile file is refused with a `BadInputError`
that names the file and the problem, never with a crash, a huge allocation or a Rust panic.

Public API:
    write_posterior(path, tensors, metadata)     validate, serialise, write atomically
    read_posterior(path) -> PosteriorFile        parse, check, load, validate
    validate_posterior(tensors, metadata, source) -> metadata   the layout checks (in memory too)
    check_fingerprint(metadata, fingerprint, source, model=...)  refuse a different model
    describe(posterior_file) -> dict             what `laplace inspect` prints
    read_safetensors_header(path) -> SafetensorsHeader           the checked header only
"""

from __future__ import annotations

import difflib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from laplace_cli.enums import (
    Curvature,
    KronApprox,
    Likelihood,
    LinkApprox,
    PredType,
    PriorStructure,
    StrEnum,
    Structure,
    Subset,
)
from laplace_cli.errors import BadInputError, FingerprintMismatchError, LaplaceCliError
from laplace_cli.io.atomic import atomic_write_bytes

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KNOWN_VERSIONS",
    "MAX_HEADER_BYTES",
    "PosteriorFile",
    "SafetensorsHeader",
    "TensorEntry",
    "check_fingerprint",
    "describe",
    "read_posterior",
    "read_safetensors_header",
    "validate_posterior",
    "write_posterior",
]

FORMAT = "laplace-cli/posterior"
FORMAT_VERSION = "1"
KNOWN_VERSIONS: tuple[str, ...] = ("1",)
MAX_HEADER_BYTES = 100_000_000
"""Headers larger than this are refused before reading them (safetensors' own limit)."""

# Bytes per element of every safetensors dtype this reader accepts. Sub-byte and exotic dtypes
# (F4, F6_*, F8_E8M0, complex) are refused: no posterior tensor uses them.
_DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

# --- metadata schema ------------------------------------------------------------------------
# Keys whose value is stored verbatim as a string, and the enum (if any) it must belong to.
_STR_KEYS: dict[str, type[StrEnum] | None] = {
    "format": None,
    "format_version": None,
    "library_version": None,
    "created": None,
    "likelihood": Likelihood,
    "subset": Subset,
    "structure": Structure,
    "curvature": Curvature,
    "fingerprint": None,
    "last_layer_name": None,
    "pred_type": PredType,
    "link_approx": LinkApprox,
    "prior_structure": PriorStructure,
    "kron_approx": KronApprox,
    "backend": None,
    "feature_reduction": None,
    "data": None,
}
# Keys whose value is stored as a JSON string.
_JSON_KEYS: frozenset[str] = frozenset(
    {
        "n_data",
        "n_outputs",
        "loss",
        "temperature",
        "sigma_noise",
        "param_names",
        "param_shapes",
        "blocks",
        "model",
        "tuning",
        "world_size",
        "shard_sizes",
        "rank",
        "fit_seconds",
    }
)
_REQUIRED_KEYS: tuple[str, ...] = (
    "format",
    "format_version",
    "library_version",
    "created",
    "likelihood",
    "subset",
    "structure",
    "curvature",
    "n_data",
    "n_outputs",
    "loss",
    "temperature",
    "sigma_noise",
    "param_names",
    "param_shapes",
    "model",
    "fingerprint",
)
_KNOWN_KEYS: frozenset[str] = frozenset(_STR_KEYS) | _JSON_KEYS
_BLOCK_KINDS = ("kron", "kron_bias", "diag")
_FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


# --- the file -------------------------------------------------------------------------------
@dataclass
class PosteriorFile:
    """A posterior read from disk (or validated in memory).

    Attributes:
        tensors: Tensor name -> CPU tensor, exactly the names of the layout.
        metadata: Decoded metadata: JSON keys as Python values, enum keys as enum members.
        path: Where it was read from (`None` for an in-memory posterior).
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    path: Path | None = None

    @property
    def n_params(self) -> int:
        """P: the number of parameters the posterior covers (the length of `mean`)."""
        return int(self.tensors["mean"].numel())


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class SafetensorsHeader:
    """A checked safetensors header.

    Attributes:
        header_len: N, the length of the JSON header in bytes.
        metadata: The raw `__metadata__` (str -> str), empty when absent.
        entries: Tensor name -> dtype, shape and byte range within the data section.
        file_size: Size of the whole file in bytes (8 + N + data).
    """

    header_len: int
    metadata: dict[str, str]
    entries: dict[str, TensorEntry] = field(default_factory=dict)
    file_size: int = 0


def _fail(source: object, problem: str) -> BadInputError:
    return BadInputError(f"{source}: {problem}")


def _join_problems(source: object, problems: list[str], error: type[LaplaceCliError]) -> None:
    """Raise one error listing every problem (one line when there is only one)."""
    if not problems:
        return
    if len(problems) == 1:
        raise error(f"{source}: {problems[0]}")
    listed = "\n".join(f"  - {p}" for p in problems)
    raise error(f"{source}: {len(problems)} problems:\n{listed}")


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and check a safetensors header without reading (or allocating) the tensor data.

    Layout: 8 bytes little-endian u64 N; N bytes of UTF-8 JSON (an object mapping tensor names
    to `{"dtype", "shape", "data_offsets": [begin, end]}` plus an optional `__metadata__`
    str -> str object); then the data section, which the offsets (relative to its start) must
    cover exactly, without gaps or overlaps, each range holding `prod(shape) * itemsize` bytes.

    Args:
        path: The file.

    Returns:
        The checked header.

    Raises:
        BadInputError: The file is missing, unreadable or not a well-formed safetensors file;
            the message names the file and the problem.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise _fail(
                    path,
                    f"not a safetensors file: {size} bytes, shorter than the 8-byte header length",
                )
            (n,) = struct.unpack("<Q", f.read(8))
            # Check N against the file size and a fixed cap *before* reading N bytes, so that a
            # corrupt length (say 2**60) cannot make us allocate.
            if n > MAX_HEADER_BYTES:
                raise _fail(
                    path,
                    f"header length {n} is absurd (limit {MAX_HEADER_BYTES} bytes); the file is corrupt or not safetensors",
                )
            if n > size - 8:
                raise _fail(
                    path,
                    f"header length {n} exceeds the file size ({size} bytes); the file is truncated or corrupt",
                )
            raw = f.read(n)
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except IsADirectoryError:
        raise _fail(path, "is a folder, expected a posterior file") from None
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror or exc})") from None
    if len(raw) != n:
        raise _fail(path, "file changed while reading its header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(path, f"header is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"header must be a JSON object, got {type(header).__name__}")

    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _fail(path, "header __metadata__ must map strings to strings")

    data_size = size - 8 - n
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        entries[name] = _check_entry(path, name, info, data_size)

    # The data section must be covered exactly: sorted by start, each range begins where the
    # previous ended, the first at 0 and the last at the end of the file.
    pos = 0
    for name, e in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin < pos:
            raise _fail(
                path,
                f"tensor {name!r}: byte range [{e.begin}, {e.end}) overlaps the previous tensor",
            )
        if e.begin > pos:
            raise _fail(path, f"tensor {name!r}: gap in the data section before byte {e.begin}")
        pos = e.end
    if pos != data_size:
        raise _fail(
            path,
            f"data section is {data_size} bytes but the tensors cover {pos}; the file is truncated or has trailing bytes",
        )
    return SafetensorsHeader(header_len=n, metadata=dict(metadata), entries=entries, file_size=size)


def _check_entry(path: Path, name: str, info: Any, data_size: int) -> TensorEntry:
    """Check one header entry: known dtype, integer shape, offsets inside the data section."""
    if not isinstance(info, dict):
        raise _fail(path, f"tensor {name!r}: header entry must be an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPE_SIZES:
        raise _fail(path, f"tensor {name!r}: unsupported dtype {_clip(dtype)}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _fail(
            path,
            f"tensor {name!r}: shape must be a list of non-negative integers, got {_clip(shape)}",
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise _fail(
            path, f"tensor {name!r}: data_offsets must be [begin, end], got {_clip(offsets)}"
        )
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise _fail(
            path,
            f"tensor {name!r}: data_offsets [{begin}, {end}] lie outside the {data_size}-byte data section; the file is truncated or corrupt",
        )
    nbytes = math.prod(shape) * _DTYPE_SIZES[dtype]
    if nbytes != end - begin:
        raise _fail(
            path,
            f"tensor {name!r}: {dtype} of shape {shape} needs {nbytes} bytes, its byte range holds {end - begin}",
        )
    return TensorEntry(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# --- metadata encoding ----------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    """JSON for the few non-JSON types writers naturally pass (paths, tensors, numpy scalars)."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if hasattr(obj, "tolist"):  # torch / numpy arrays and scalars
        return obj.tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} in posterior metadata")


def _encode_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """Python values -> safetensors' str -> str metadata (strings verbatim, the rest as JSON)."""
    bad_keys = [k for k in metadata if not isinstance(k, str)]
    if bad_keys:
        raise BadInputError(f"posterior metadata keys must be strings, got {bad_keys[0]!r}")
    out: dict[str, str] = {}
    for key in sorted(metadata):  # sorted, so that the same state gives the same bytes
        value = metadata[key]
        if isinstance(value, Enum):
            value = value.value  # enum members of the str-valued keys
        elif isinstance(value, os.PathLike) and key not in _JSON_KEYS:
            value = os.fspath(value)
        if isinstance(value, str) and key not in _JSON_KEYS:
            out[key] = str(value)
        elif isinstance(value, str):
            out[key] = value  # already JSON (or will fail decoding with a clear message)
        else:
            try:
                # NaN is encoded (Python's JSON accepts it) so that validation, not encoding,
                # reports it with the key's name; validation runs before anything is written.
                out[key] = json.dumps(
                    value, default=_json_default, separators=(",", ":"), sort_keys=True
                )
            except (TypeError, ValueError) as exc:
                raise BadInputError(f"posterior metadata {key!r}: {exc}") from None
    return out


def _decode_metadata(raw: dict[str, str], source: object) -> dict[str, Any]:
    """safetensors' str -> str metadata -> Python values (the inverse of `_encode_metadata`)."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        if key in _JSON_KEYS:
            try:
                out[key] = json.loads(value)
            except (ValueError, RecursionError):
                problems.append(f"metadata {key!r} is not valid JSON: {_clip(value)}")
        else:
            out[key] = value
    _join_problems(source, problems, BadInputError)
    return out


def _clip(obj: Any, n: int = 80) -> str:
    """`repr(obj)`, cut short: values from a corrupt file can be arbitrarily long."""
    text = repr(obj)
    return text if len(text) <= n else text[:n] + "..."


def _with_defaults(metadata: dict[str, Any]) -> dict[str, Any]:
    """Fill in `format`, `format_version`, `library_version` and `created` unless given."""
    from laplace_cli import __version__  # lazy: the package root may import this module

    meta = dict(metadata)
    meta.setdefault("format", FORMAT)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault("library_version", __version__)
    meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return meta


# --- validation -----------------------------------------------------------------------------
def _check_format(meta: dict[str, Any], source: object) -> None:
    """Format and version first: nothing else is meaningful for another format or version."""
    if not meta:
        raise _fail(
            source,
            f"not a laplace-cli posterior: the file has no metadata (expected format {FORMAT!r})",
        )
    fmt = meta.get("format")
    if fmt is None:
        raise _fail(
            source, f"not a laplace-cli posterior: no 'format' metadata key (expected {FORMAT!r})"
        )
    if fmt != FORMAT:
        raise _fail(
            source,
            f"not a laplace-cli posterior: metadata format is {_clip(fmt)}, expected {FORMAT!r}",
        )
    version = meta.get("format_version")
    if version is None:
        raise _fail(source, "missing metadata key(s): format_version")
    if version not in KNOWN_VERSIONS:
        from laplace_cli import __version__

        known = ", ".join(KNOWN_VERSIONS)
        raise _fail(
            source,
            f"format_version {_clip(version)} is not supported; laplace-cli {__version__} reads version {known}"
            " (a newer laplace-cli may read it)",
        )


def _check_metadata(
    meta: dict[str, Any], source: object, nonfinite: type[LaplaceCliError]
) -> dict[str, Any]:
    """Check every metadata value's type and range; return it with enum keys as members."""
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if meta.get("structure") == Structure.KRON.value and "blocks" not in meta:
        missing.append("blocks")
    if missing:
        raise _fail(source, f"missing metadata key(s): {', '.join(missing)}")
    unknown = sorted(set(meta) - _KNOWN_KEYS)
    if unknown:
        raise _fail(
            source,
            f"unknown metadata key(s): {', '.join(_with_hint(k, _KNOWN_KEYS) for k in unknown)}",
        )

    out = dict(meta)
    problems: list[str] = []
    nonfinite_problems: list[str] = []

    for key, enum in _STR_KEYS.items():
        if key not in meta:
            continue
        value = meta[key]
        if not isinstance(value, str):
            problems.append(f"metadata {key!r} must be a string, got {_clip(value)}")
        elif enum is not None:
            try:
                out[key] = enum(value)
            except ValueError:
                allowed = "|".join(m.value for m in enum)
                problems.append(f"metadata {key!r} must be one of {allowed}, got {_clip(value)}")
    if isinstance(meta.get("created"), str):
        try:
            datetime.fromisoformat(meta["created"])
        except ValueError:
            problems.append(
                f"metadata 'created' must be an ISO 8601 time, got {_clip(meta['created'])}"
            )
    fp = meta.get("fingerprint")
    if isinstance(fp, str) and (not fp or any(c not in "0123456789abcdef" for c in fp)):
        problems.append(f"metadata 'fingerprint' must be a lower-case hex string, got {_clip(fp)}")

    def positive_int(key: str) -> None:
        v = meta.get(key)
        if key in meta and not (_is_int(v) and v >= 1):
            problems.append(f"metadata {key!r} must be a positive integer, got {_clip(v)}")

    for key in ("n_data", "n_outputs", "world_size", "rank"):
        positive_int(key)

    def real(key: str, positive: bool) -> None:
        v = meta[key]
        if not _is_number(v):
            problems.append(f"metadata {key!r} must be a number, got {_clip(v)}")
        elif not _finite(v):
            nonfinite_problems.append(f"metadata {key!r} is not finite ({v})")
        elif positive and v <= 0:
            problems.append(f"metadata {key!r} must be positive, got {_clip(v)}")

    n_out = meta["n_outputs"]
    loss = meta["loss"]
    if isinstance(loss, list):  # per output (regression with one noise level per output)
        if not (loss and all(_is_number(v) for v in loss)):
            problems.append(
                f"metadata 'loss' must be a number or a list of numbers, got {_clip(loss)}"
            )
        elif _is_int(n_out) and len(loss) != n_out:
            problems.append(
                f"metadata 'loss' has {len(loss)} entries, expected one per output ({n_out})"
            )
        elif not all(_finite(v) for v in loss):
            nonfinite_problems.append(f"metadata 'loss' is not finite ({_clip(loss)})")
    else:
        real("loss", positive=False)
    real("temperature", positive=True)
    if "fit_seconds" in meta:
        fs = meta["fit_seconds"]
        if not (_is_number(fs) and _finite(fs) and fs >= 0):
            problems.append(f"metadata 'fit_seconds' must be a number >= 0, got {_clip(fs)}")

    sigma = meta["sigma_noise"]
    if not (isinstance(sigma, list) and sigma and all(_is_number(s) for s in sigma)):
        problems.append(
            f"metadata 'sigma_noise' must be a non-empty list of numbers, got {_clip(sigma)}"
        )
    elif not all(_finite(s) for s in sigma):
        nonfinite_problems.append(f"metadata 'sigma_noise' is not finite ({sigma})")
    elif not all(s > 0 for s in sigma):
        problems.append(f"metadata 'sigma_noise' must be positive, got {_clip(sigma)}")
    elif _is_int(n_out) and len(sigma) not in (1, n_out):
        problems.append(
            f"metadata 'sigma_noise' must have 1 or n_outputs={n_out} entries, got {len(sigma)}"
        )

    names, shapes = meta["param_names"], meta["param_shapes"]
    names_ok = isinstance(names, list) and all(isinstance(n, str) and n for n in names)
    if not names_ok:
        problems.append(
            f"metadata 'param_names' must be a list of non-empty strings, got {_clip(names)}"
        )
    elif len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        problems.append(f"metadata 'param_names' repeats {', '.join(dup)}")
    shapes_ok = isinstance(shapes, list) and all(_is_shape(s) for s in shapes)
    if not shapes_ok:
        problems.append(
            f"metadata 'param_shapes' must be a list of lists of non-negative integers, got {_clip(shapes)}"
        )
    elif names_ok and len(shapes) != len(names):
        problems.append(
            f"metadata 'param_shapes' has {len(shapes)} entries but 'param_names' has {len(names)}"
        )
    elif names_ok and not names:
        problems.append(
            "metadata 'param_names' is empty: a posterior covers at least one parameter tensor"
        )

    if "blocks" in meta:
        problems.extend(_check_blocks(meta["blocks"], names, shapes))

    model = meta["model"]
    if not isinstance(model, dict):
        problems.append(
            f"metadata 'model' must be a JSON object {{path, form, factory, kwargs}}, got {_clip(model)}"
        )
    else:
        # All may be null: a posterior saved from the Python API has no checkpoint to name
        # (then tune / evaluate / predict need --model).
        for k in ("path", "form", "factory", "fingerprint"):
            if model.get(k) is not None and not isinstance(model[k], str):
                problems.append(
                    f"metadata 'model.{k}' must be a string or null, got {_clip(model[k])}"
                )
        if model.get("kwargs") is not None and not isinstance(model["kwargs"], dict):
            problems.append(
                f"metadata 'model.kwargs' must be an object or null, got {_clip(model['kwargs'])}"
            )

    if "tuning" in meta and not isinstance(meta["tuning"], dict):
        problems.append(f"metadata 'tuning' must be a JSON object, got {_clip(meta['tuning'])}")
    if "shard_sizes" in meta:
        sizes = meta["shard_sizes"]
        if not (isinstance(sizes, list) and all(_is_int(s) and s >= 0 for s in sizes)):
            problems.append(
                f"metadata 'shard_sizes' must be a list of non-negative integers, got {_clip(sizes)}"
            )
        elif _is_int(meta.get("world_size")) and len(sizes) != meta["world_size"]:
            problems.append(
                f"metadata 'shard_sizes' has {len(sizes)} entries but world_size is {meta['world_size']}"
            )

    if (
        meta.get("structure") == Structure.KRON.value
        and meta.get("subset") == Subset.SUBNETWORK.value
    ):
        problems.append(
            "structure 'kron' cannot be combined with subset 'subnetwork' (use diag, full or lowrank)"
        )

    _join_problems(source, problems, BadInputError)
    _join_problems(source, nonfinite_problems, nonfinite)
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finite(x: int | float) -> bool:
    # math.isfinite overflows on huge ints (JSON allows them); an int is always finite.
    return isinstance(x, int) or math.isfinite(x)


def _is_shape(s: Any) -> bool:
    return isinstance(s, list) and all(_is_int(d) and d >= 0 for d in s)


def _check_blocks(blocks: Any, names: Any, shapes: Any) -> list[str]:
    """K-FAC blocks: one per parameter tensor, in order, with a kind that fits its shape."""
    if not isinstance(blocks, list) or not all(
        isinstance(b, dict) and isinstance(b.get("name"), str) and _is_shape(b.get("shape"))
        for b in blocks
    ):
        return [
            f"metadata 'blocks' must be a list of {{name, kind, shape}} objects, got {_clip(blocks)}"
        ]
    problems: list[str] = []
    block_names = [b["name"] for b in blocks]
    if isinstance(names, list) and block_names != names:
        problems.append(
            f"metadata 'blocks' names {block_names} do not match param_names {names} (one block per parameter tensor, same order)"
        )
    for i, b in enumerate(blocks):
        kind, shape = b.get("kind"), b["shape"]
        if kind not in _BLOCK_KINDS:
            problems.append(
                f"metadata 'blocks'[{i}] ({b['name']}): kind must be one of {'|'.join(_BLOCK_KINDS)}, got {_clip(kind)}"
            )
        elif kind == "kron" and (len(shape) < 2 or shape[0] == 0):
            problems.append(
                f"metadata 'blocks'[{i}] ({b['name']}): kind 'kron' needs a weight of shape [d_out, d_in, ...], got {shape}"
            )
        elif kind == "kron_bias" and len(shape) != 1:
            problems.append(
                f"metadata 'blocks'[{i}] ({b['name']}): kind 'kron_bias' needs a bias of shape [d_out], got {shape}"
            )
        if isinstance(shapes, list) and i < len(shapes) and shapes[i] != shape:
            problems.append(
                f"metadata 'blocks'[{i}] ({b['name']}): shape {shape} differs from param_shapes[{i}] = {shapes[i]}"
            )
    return problems


def _expected_tensors(
    meta: dict[str, Any],
) -> tuple[dict[str, list[tuple[int, ...]]], set[str], list[tuple[str, str]]]:
    """The tensors this metadata calls for.

    P = Σ numel(param_shapes) for every subset (for subnetwork the shapes are the numbers of
    selected entries per tensor, so P is also the length of `subnetwork.indices`).

    Returns:
        Tensor name -> allowed shapes (empty: checked elsewhere); the names that may be
        absent; and pairs of alternatives of which exactly one must be present.
    """
    shapes = [tuple(s) for s in meta["param_shapes"]]
    g = len(shapes)
    p = sum(math.prod(s) for s in shapes)
    expected: dict[str, list[tuple[int, ...]]] = {
        "mean": [(p,)],
        "prior.precision": _unique([(1,), (g,), (p,)]),
        "prior.mean": _unique([(1,), (p,)]),
    }
    optional: set[str] = set()
    if meta["subset"] == Subset.SUBNETWORK:
        expected["subnetwork.indices"] = [(p,)]
    one_of: list[tuple[str, str]] = []
    c = meta["n_outputs"]
    structure = meta["structure"]
    if structure == Structure.DIAG:
        # Per-output curvature (C, P) when regression outputs have their own noise, so that
        # each output's share can be scaled by its own 1/sigma².
        expected["diag.curvature"] = [(p,)]
        expected["diag.curvature_per_output"] = [(c, p)]
        expected["diag.prior_curvature"] = [(p,)]
        optional |= {"diag.curvature", "diag.curvature_per_output", "diag.prior_curvature"}
        one_of.append(("diag.curvature", "diag.curvature_per_output"))
    elif structure == Structure.FULL:
        expected["full.curvature"] = [(p, p)]
        expected["full.curvature_per_output"] = [(c, p, p)]
        expected["full.prior_curvature"] = [(p, p)]
        optional |= {"full.curvature", "full.curvature_per_output", "full.prior_curvature"}
        one_of.append(("full.curvature", "full.curvature_per_output"))
    elif structure == Structure.LOWRANK:
        expected["lowrank.U"] = []  # (P, k): k is free, checked against eigvals below
        expected["lowrank.eigvals"] = []
        expected["lowrank.diag"] = [(p,)]
        optional.add("lowrank.diag")
    elif structure == Structure.KRON:
        for b in meta["blocks"]:
            name, shape = b["name"], tuple(b["shape"])
            if b["kind"] in ("kron", "kron_bias"):
                d_out = shape[0]
                expected[f"kron.{name}.B.eigvals"] = [(d_out,)]
                expected[f"kron.{name}.B.eigvecs"] = [(d_out, d_out)]
            if b["kind"] == "kron":
                d_in = math.prod(shape) // shape[0]  # conv weights: d_in = C_in * kh * kw
                expected[f"kron.{name}.A.eigvals"] = [(d_in,)]
                expected[f"kron.{name}.A.eigvecs"] = [(d_in, d_in)]
            elif b["kind"] == "diag":
                expected[f"kron.{name}.diag"] = [(math.prod(shape),)]
    return expected, optional, one_of


def _unique(items: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    return list(dict.fromkeys(items))


def _with_hint(name: str, candidates: Any) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_tensors(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    source: object,
    nonfinite: type[LaplaceCliError],
) -> None:
    """Names, dtypes and shapes against the layout; index range; then finiteness."""
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise _fail(
                source, f"tensors must map names to torch tensors, got {name!r}: {type(t).__name__}"
            )
    expected, optional, one_of = _expected_tensors(meta)

    problems: list[str] = []
    missing = [n for n in expected if n not in tensors and n not in optional]
    for a, b in one_of:
        if a not in tensors and b not in tensors:
            missing.append(f"{a} (or {b})")
        elif a in tensors and b in tensors:
            problems.append(f"tensors {a!r} and {b!r} are alternatives; store only one")
    if missing:
        problems.append(f"missing tensor(s): {', '.join(missing)}")
    unknown = [n for n in tensors if n not in expected]
    if unknown:
        problems.append(
            f"unknown tensor(s) for structure {meta['structure']} / subset {meta['subset']}: "
            + ", ".join(_with_hint(n, expected) for n in unknown)
        )

    for name, allowed in expected.items():
        t = tensors.get(name)
        if t is None:
            continue
        if name == "subnetwork.indices":
            if t.dtype != torch.int64:
                problems.append(
                    f"tensor {name!r} must be int64, got {str(t.dtype).removeprefix('torch.')}"
                )
                continue
        elif t.dtype not in _FLOAT_DTYPES:
            problems.append(
                f"tensor {name!r} must be floating point, got {str(t.dtype).removeprefix('torch.')}"
            )
            continue
        got = tuple(t.shape)
        if allowed and got not in allowed:
            want = " or ".join(_fmt_shape(s) for s in allowed)
            problems.append(f"tensor {name!r} has shape {_fmt_shape(got)}, expected {want}")

    indices = tensors.get("subnetwork.indices")
    if indices is not None and indices.dtype == torch.int64 and indices.dim() == 1:
        # Positions in the model's flattened trainable parameters: the upper bound is the
        # model's parameter count, checked when the model is loaded, not knowable here.
        if indices.numel() == 0:
            problems.append("tensor 'subnetwork.indices' is empty")
        elif int(indices.min()) < 0:
            problems.append(
                f"tensor 'subnetwork.indices' has negative entries (min {int(indices.min())})"
            )
        elif indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
            problems.append(
                "tensor 'subnetwork.indices' must be strictly increasing (sorted, no repeats)"
            )

    if meta["structure"] == Structure.LOWRANK:
        p = int(tensors["mean"].numel()) if "mean" in tensors else None
        u, ev = tensors.get("lowrank.U"), tensors.get("lowrank.eigvals")
        if u is not None and (u.dim() != 2 or (p is not None and u.shape[0] != p)):
            problems.append(
                f"tensor 'lowrank.U' has shape {_fmt_shape(tuple(u.shape))}, expected (P, k) with P = {p}"
            )
        elif u is not None and ev is not None and tuple(ev.shape) != (u.shape[1],):
            problems.append(
                f"tensor 'lowrank.eigvals' has shape {_fmt_shape(tuple(ev.shape))}, expected ({u.shape[1]},) to match lowrank.U's k"
            )
    _join_problems(source, problems, BadInputError)

    bad = [
        n
        for n, t in tensors.items()
        if t.dtype in _FLOAT_DTYPES and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise nonfinite(
            f"{source}: non-finite values (NaN or Inf) in tensor(s) {', '.join(repr(b) for b in bad)}"
        )


def validate_posterior(
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, Any],
    source: object = "<memory>",
    *,
    nonfinite: type[LaplaceCliError] = BadInputError,
) -> dict[str, Any]:
    """Check a posterior state against the format-version-1 layout.

    The same checks run when reading a file and when the engine builds state in memory: the
    metadata is normalised exactly as a write-then-read would (non-strings through JSON),
    `format`, `format_version`, `library_version` and `created` are filled in unless given, then
    every key and tensor is checked (see docs/posterior-format.md).

    Args:
        tensors: Tensor name -> tensor.
        metadata: Metadata as Python values (strings, numbers, lists, dicts, enum members).
        source: What to name in error messages (a file path, or "<memory>").
        nonfinite: Error class for NaN/Inf tensors or metadata numbers: `BadInputError` for a
            file a user gave us (exit 2), `NumericalError` for state we just computed (exit 3).

    Returns:
        The normalised metadata: JSON keys as Python values, enum keys as enum members.

    Raises:
        BadInputError: Wrong format or version, missing / unknown / malformed keys, missing,
            unknown or misshapen tensors. All problems of one kind are listed together.
        LaplaceCliError: `nonfinite` for NaN/Inf values.
    """
    meta = _decode_metadata(_encode_metadata(_with_defaults(metadata)), source)
    return _validate_decoded(tensors, meta, source, nonfinite)


def _validate_decoded(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    source: object,
    nonfinite: type[LaplaceCliError],
) -> dict[str, Any]:
    _check_format(meta, source)
    meta = _check_metadata(meta, source, nonfinite)
    _check_tensors(tensors, meta, source, nonfinite)
    return meta


# --- reading and writing --------------------------------------------------------------------
def write_posterior(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> None:
    """Validate a posterior state and write it to `path` atomically as safetensors.

    `format`, `format_version`, `library_version` and `created` (UTC, ISO 8601) are added
    unless given; non-string metadata values are stored as JSON; tensors are stored contiguous
    on the CPU. The bytes go to a temporary file in the same folder that is renamed into
    place, so an existing file is never left half-written.

    Args:
        path: Destination (`.safetensors`, or `.st`).
        tensors: Tensor name -> tensor, as in docs/posterior-format.md.
        metadata: Metadata as Python values.

    Raises:
        BadInputError: The state does not follow the layout, or the folder is not writable.
        NumericalError: A tensor or metadata number is NaN/Inf (the fit went wrong).
    """
    from safetensors.torch import save

    from laplace_cli.errors import NumericalError

    meta = _with_defaults(metadata)
    validate_posterior(tensors, meta, source=path, nonfinite=NumericalError)

    prepared: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory (e.g. `prior.mean` aliasing `mean`).
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen_storage:
            t = t.clone()
        seen_storage.add(t.untyped_storage().data_ptr())
        prepared[name] = t
    data = _canonical_header(save(prepared, metadata=_encode_metadata(meta)))
    atomic_write_bytes(path, data)


def _canonical_header(data: bytes) -> bytes:
    """Rewrite a safetensors blob's header in a fixed order, leaving the data section as is.

    `safetensors.torch.save` emits `__metadata__` in hash-map order, which differs from run to
    run; a posterior should be byte-for-byte reproducible (golden tests, content hashes, diffs).
    The canonical header lists `__metadata__` first with its keys sorted, then the tensors in
    data order, as compact JSON padded with spaces to a multiple of 8 bytes (as safetensors
    does, so that the data section stays 8-byte aligned). Data offsets are relative to the data
    section, so they do not change.
    """
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None) or {}
    ordered: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    for name, info in sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"][0], kv[0])):
        ordered[name] = info
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def read_posterior(path: str | os.PathLike[str]) -> PosteriorFile:
    """Read, check and load a posterior file.

    The header is parsed and checked before any tensor is allocated (see
    `read_safetensors_header`); then the format and version, the metadata keys and values,
    the tensor names, dtypes and shapes, and the finiteness of every floating tensor.

    Args:
        path: The posterior file.

    Returns:
        The posterior: CPU tensors and decoded metadata.

    Raises:
        BadInputError: Anything wrong with the file; the message names the file and the problem.
    """
    from safetensors.torch import load_file

    path = Path(path)
    header = read_safetensors_header(path)
    # Format and version first, from the header alone (both are plain strings): a file of
    # another kind or a newer version is refused before its tensors are loaded.
    _check_format(header.metadata, path)
    meta = _decode_metadata(header.metadata, path)
    try:
        tensors = load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own error types, and OSError
        raise _fail(
            path, f"cannot load tensors ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    meta = _validate_decoded(tensors, meta, path, BadInputError)
    return PosteriorFile(tensors=tensors, metadata=meta, path=path)


def _key_order(key: str) -> tuple[int, str]:
    """Documented order (required keys as listed, then the optional ones by name)."""
    try:
        return (_REQUIRED_KEYS.index(key), key)
    except ValueError:
        return (len(_REQUIRED_KEYS), key)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_fingerprint(
    metadata: dict[str, Any],
    fingerprint: str,
    source: object,
    *,
    model: object = "the model",
) -> None:
    """Refuse to apply a posterior to a model whose parameters differ from the fitted ones.

    Args:
        metadata: The posterior's (decoded) metadata.
        fingerprint: SHA-256 hex digest of the model at hand.
        source: The posterior file (for the message).
        model: What produced `fingerprint` (for the message), e.g. the checkpoint path.

    Raises:
        FingerprintMismatchError: The fingerprints differ.
    """
    expected = str(metadata.get("fingerprint", ""))
    if expected.lower() == fingerprint.lower():
        return
    recorded = metadata.get("model")
    fitted_on = recorded.get("path") if isinstance(recorded, dict) else None
    where = f" ({fitted_on})" if fitted_on else ""
    raise FingerprintMismatchError(
        f"{source} was fitted on a model with fingerprint {expected[:12]}…{where}, but {model} has "
        f"{fingerprint[:12]}…; pass --model for the checkpoint it was fitted on"
    )


def describe(posterior_file: PosteriorFile) -> dict[str, Any]:
    """A JSON-ready summary of a posterior: metadata, tensor dtypes and shapes, sizes.

    Args:
        posterior_file: A posterior read with `read_posterior`.

    Returns:
        `{"path", "file_size", "n_params", "metadata": {...}, "tensors": {name: {"dtype",
        "shape", "bytes"}}}`; `file_size` is `None` for an in-memory posterior.
    """
    path = posterior_file.path
    size = path.stat().st_size if path is not None and path.exists() else None
    return {
        "path": str(path) if path is not None else None,
        "file_size": size,
        "n_params": posterior_file.n_params,
        "metadata": {
            k: (v.value if isinstance(v, Enum) else v)
            for k, v in sorted(posterior_file.metadata.items(), key=lambda kv: _key_order(kv[0]))
        },
        "tensors": {
            name: {
                "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape),
                "bytes": t.numel() * t.element_size(),
            }
            for name, t in sorted(posterior_file.tensors.items())
        },
    }
