"""Posterior file metadata: the schema of its keys, their str <-> Python encoding, and the
checks of every value (format and version first).

Split out of `laplace_cli.io.posterior_file`, which re-exports the public names. The layout is
specified in `docs/posterior-format.md`.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from laplace_cli.core.enums import (
    Curvature,
    Dtype,
    KronApprox,
    Likelihood,
    LinkApprox,
    PredType,
    PriorStructure,
    StrEnum,
    Structure,
    Subset,
)
from laplace_cli.core.errors import BadInputError, LaplaceCliError
from laplace_cli.io.safetensors_header import bad_file, clip, is_int, join_problems

FORMAT = "laplace-cli/posterior"
FORMAT_VERSION = "1"
KNOWN_VERSIONS: tuple[str, ...] = ("1",)


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
    "output_positions": None,
    "data": None,
    "model_dtype": Dtype,
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
        "gp",
        "ignore_index",
        "output_shape",
    }
)
REQUIRED_KEYS: tuple[str, ...] = (
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


def encode_metadata(metadata: dict[str, Any]) -> dict[str, str]:
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


def decode_metadata(raw: dict[str, str], source: object) -> dict[str, Any]:
    """safetensors' str -> str metadata -> Python values (the inverse of `encode_metadata`)."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        if key in _JSON_KEYS:
            try:
                out[key] = json.loads(value)
            except (ValueError, RecursionError):
                problems.append(f"metadata {key!r} is not valid JSON: {clip(value)}")
        else:
            out[key] = value
    join_problems(source, problems, BadInputError)
    return out


def with_defaults(metadata: dict[str, Any]) -> dict[str, Any]:
    """Fill in `format`, `format_version`, `library_version` and `created` unless given."""
    from laplace_cli.core.version import (
        __version__,  # lazy: the package root may import this module
    )

    meta = dict(metadata)
    meta.setdefault("format", FORMAT)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault("library_version", __version__)
    meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return meta


# --- validation -----------------------------------------------------------------------------


def check_format(meta: dict[str, Any], source: object) -> None:
    """Format and version first: nothing else is meaningful for another format or version."""
    if not meta:
        raise bad_file(
            source,
            f"not a laplace-cli posterior: the file has no metadata (expected format {FORMAT!r})",
        )
    fmt = meta.get("format")
    if fmt is None:
        raise bad_file(
            source, f"not a laplace-cli posterior: no 'format' metadata key (expected {FORMAT!r})"
        )
    if fmt != FORMAT:
        raise bad_file(
            source,
            f"not a laplace-cli posterior: metadata format is {clip(fmt)}, expected {FORMAT!r}",
        )
    version = meta.get("format_version")
    if version is None:
        raise bad_file(source, "missing metadata key(s): format_version")
    if version not in KNOWN_VERSIONS:
        from laplace_cli.core.version import __version__

        known = ", ".join(KNOWN_VERSIONS)
        raise bad_file(
            source,
            f"format_version {clip(version)} is not supported; laplace-cli {__version__} reads version {known}"
            " (a newer laplace-cli may read it)",
        )


def check_metadata(
    meta: dict[str, Any], source: object, nonfinite: type[LaplaceCliError]
) -> dict[str, Any]:
    """Check every metadata value's type and range; return it with enum keys as members."""
    _check_metadata_keys(meta, source)
    out = dict(meta)
    problems: list[str] = []
    nonfinite_problems: list[str] = []
    _check_metadata_strings(meta, out, problems)
    _check_metadata_numbers(meta, problems, nonfinite_problems)
    _check_metadata_params(meta, problems)
    _check_metadata_model(meta, problems)
    _check_metadata_extras(meta, problems)
    join_problems(source, problems, BadInputError)
    join_problems(source, nonfinite_problems, nonfinite)
    return out


def _check_metadata_keys(meta: dict[str, Any], source: object) -> None:
    """Every required key is present and no key is unknown."""
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if meta.get("structure") == Structure.KRON.value and "blocks" not in meta:
        missing.append("blocks")
    if meta.get("structure") == Structure.GP.value and "gp" not in meta:
        missing.append("gp")
    if missing:
        raise bad_file(source, f"missing metadata key(s): {', '.join(missing)}")
    unknown = sorted(set(meta) - _KNOWN_KEYS)
    if unknown:
        raise bad_file(
            source,
            f"unknown metadata key(s): {', '.join(with_hint(k, _KNOWN_KEYS) for k in unknown)}",
        )


def _check_metadata_strings(meta: dict[str, Any], out: dict[str, Any], problems: list[str]) -> None:
    """String keys (enum ones turned into members in ``out``), the time and the fingerprint."""
    for key, enum in _STR_KEYS.items():
        if key not in meta:
            continue
        value = meta[key]
        if not isinstance(value, str):
            problems.append(f"metadata {key!r} must be a string, got {clip(value)}")
        elif enum is not None:
            try:
                out[key] = enum(value)
            except ValueError:
                allowed = "|".join(m.value for m in enum)
                problems.append(f"metadata {key!r} must be one of {allowed}, got {clip(value)}")
    if isinstance(meta.get("created"), str):
        try:
            datetime.fromisoformat(meta["created"])
        except ValueError:
            problems.append(
                f"metadata 'created' must be an ISO 8601 time, got {clip(meta['created'])}"
            )
    fp = meta.get("fingerprint")
    if isinstance(fp, str) and (not fp or any(c not in "0123456789abcdef" for c in fp)):
        problems.append(f"metadata 'fingerprint' must be a lower-case hex string, got {clip(fp)}")


def _check_real(
    meta: dict[str, Any],
    key: str,
    positive: bool,
    problems: list[str],
    nonfinite_problems: list[str],
) -> None:
    """``meta[key]`` is a finite number (and positive, when asked)."""
    v = meta[key]
    if not _is_number(v):
        problems.append(f"metadata {key!r} must be a number, got {clip(v)}")
    elif not _finite(v):
        nonfinite_problems.append(f"metadata {key!r} is not finite ({v})")
    elif positive and v <= 0:
        problems.append(f"metadata {key!r} must be positive, got {clip(v)}")


def _check_metadata_numbers(
    meta: dict[str, Any], problems: list[str], nonfinite_problems: list[str]
) -> None:
    """Counts, loss, temperature, fit time and noise levels."""
    for key in ("n_data", "n_outputs", "world_size", "rank"):
        v = meta.get(key)
        if key in meta and not (is_int(v) and v >= 1):
            problems.append(f"metadata {key!r} must be a positive integer, got {clip(v)}")

    n_out = meta["n_outputs"]
    loss = meta["loss"]
    if isinstance(loss, list):  # per output (regression with one noise level per output)
        if not (loss and all(_is_number(v) for v in loss)):
            problems.append(
                f"metadata 'loss' must be a number or a list of numbers, got {clip(loss)}"
            )
        elif is_int(n_out) and len(loss) != n_out:
            problems.append(
                f"metadata 'loss' has {len(loss)} entries, expected one per output ({n_out})"
            )
        elif not all(_finite(v) for v in loss):
            nonfinite_problems.append(f"metadata 'loss' is not finite ({clip(loss)})")
    else:
        _check_real(meta, "loss", False, problems, nonfinite_problems)
    _check_real(meta, "temperature", True, problems, nonfinite_problems)
    if "fit_seconds" in meta:
        fs = meta["fit_seconds"]
        if not (_is_number(fs) and _finite(fs) and fs >= 0):
            problems.append(f"metadata 'fit_seconds' must be a number >= 0, got {clip(fs)}")

    sigma = meta["sigma_noise"]
    if not (isinstance(sigma, list) and sigma and all(_is_number(s) for s in sigma)):
        problems.append(
            f"metadata 'sigma_noise' must be a non-empty list of numbers, got {clip(sigma)}"
        )
    elif not all(_finite(s) for s in sigma):
        nonfinite_problems.append(f"metadata 'sigma_noise' is not finite ({sigma})")
    elif not all(s > 0 for s in sigma):
        problems.append(f"metadata 'sigma_noise' must be positive, got {clip(sigma)}")
    elif is_int(n_out) and len(sigma) not in (1, n_out):
        problems.append(
            f"metadata 'sigma_noise' must have 1 or n_outputs={n_out} entries, got {len(sigma)}"
        )


def _check_metadata_params(meta: dict[str, Any], problems: list[str]) -> None:
    """Parameter names and shapes agree, and the Kronecker blocks (if any) with them."""
    names, shapes = meta["param_names"], meta["param_shapes"]
    names_ok = isinstance(names, list) and all(isinstance(n, str) and n for n in names)
    if not names_ok:
        problems.append(
            f"metadata 'param_names' must be a list of non-empty strings, got {clip(names)}"
        )
    elif len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        problems.append(f"metadata 'param_names' repeats {', '.join(dup)}")
    shapes_ok = isinstance(shapes, list) and all(_is_shape(s) for s in shapes)
    if not shapes_ok:
        problems.append(
            f"metadata 'param_shapes' must be a list of lists of non-negative integers, got {clip(shapes)}"
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


def _check_metadata_model(meta: dict[str, Any], problems: list[str]) -> None:
    """The ``model`` object: path, form, factory, fingerprint, kwargs."""
    model = meta["model"]
    if not isinstance(model, dict):
        problems.append(
            f"metadata 'model' must be a JSON object {{path, form, factory, kwargs}}, got {clip(model)}"
        )
        return
    # All may be null: a posterior saved from the Python API has no checkpoint to name
    # (then tune / evaluate / predict need --model).
    for k in ("path", "form", "factory", "fingerprint"):
        if model.get(k) is not None and not isinstance(model[k], str):
            problems.append(f"metadata 'model.{k}' must be a string or null, got {clip(model[k])}")
    if model.get("kwargs") is not None and not isinstance(model["kwargs"], dict):
        problems.append(
            f"metadata 'model.kwargs' must be an object or null, got {clip(model['kwargs'])}"
        )


def _check_metadata_extras(meta: dict[str, Any], problems: list[str]) -> None:
    """Tuning record, shard sizes, and structure / subset combinations."""
    if "tuning" in meta and not isinstance(meta["tuning"], dict):
        problems.append(f"metadata 'tuning' must be a JSON object, got {clip(meta['tuning'])}")
    elif isinstance(meta.get("tuning"), dict) and "conformal" in meta["tuning"]:
        problems.extend(_conformal_problems(meta["tuning"]["conformal"], meta))
    if "shard_sizes" in meta:
        sizes = meta["shard_sizes"]
        if not (isinstance(sizes, list) and all(is_int(s) and s >= 0 for s in sizes)):
            problems.append(
                f"metadata 'shard_sizes' must be a list of non-negative integers, got {clip(sizes)}"
            )
        elif is_int(meta.get("world_size")) and len(sizes) != meta["world_size"]:
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
    if meta.get("structure") == Structure.GP.value:
        problems.extend(_gp_problems(meta))


def _gp_problems(meta: dict[str, Any]) -> list[str]:
    """The `gp` object of a function-space posterior (docs/posterior-format.md)."""
    if meta.get("subset") not in (Subset.ALL.value, Subset.LAST_LAYER.value):
        return [f"structure 'gp' is for subsets all and last_layer, got {clip(meta.get('subset'))}"]
    g = meta["gp"]
    if not isinstance(g, dict):
        return [f"metadata 'gp' must be a JSON object, got {clip(g)}"]
    problems = []
    m = g.get("n_context")
    if not (is_int(m) and m >= 1) or (is_int(meta.get("n_data")) and m > meta["n_data"]):
        problems.append(f"metadata 'gp.n_context' must be an integer in 1..n_data, got {clip(m)}")
    if g.get("context") not in ("first", "random"):
        problems.append(
            f"metadata 'gp.context' must be 'first' or 'random', got {clip(g.get('context'))}"
        )
    if not is_int(g.get("seed")):
        problems.append(f"metadata 'gp.seed' must be an integer, got {clip(g.get('seed'))}")
    if g.get("output_hessian") not in ("diag", "full"):
        problems.append(
            f"metadata 'gp.output_hessian' must be 'diag' or 'full', got {clip(g.get('output_hessian'))}"
        )
    if not isinstance(g.get("diagonal_kernel"), bool):
        problems.append(
            f"metadata 'gp.diagonal_kernel' must be true or false, got {clip(g.get('diagonal_kernel'))}"
        )
    keys = g.get("input_keys")
    if keys is not None and not (
        isinstance(keys, list) and keys and all(isinstance(k, str) and k for k in keys)
    ):
        problems.append(
            f"metadata 'gp.input_keys' must be null or a list of names, got {clip(keys)}"
        )
    unknown = set(g) - {
        "n_context",
        "context",
        "seed",
        "n_subset",
        "output_hessian",
        "diagonal_kernel",
        "input_keys",
    }
    if unknown:
        problems.append(f"unknown key(s) in metadata 'gp': {', '.join(sorted(unknown))}")
    return problems


#: The thresholds a `tuning.conformal` level holds per likelihood: (required, optional) keys.
#: Scores are probabilities' complements or APS masses (in [0, 1]) or normalised residuals (≥ 0).
_CONFORMAL_KEYS = {
    "classification": ({"lac"}, {"aps"}),  # posteriors tuned before APS was stored have no aps
    "binary": ({"label_lac"}, set()),
    "regression": ({"normalised"}, set()),
}
_CONFORMAL_LISTS = {"label_lac", "normalised"}  # one threshold per label / output


def _conformal_problems(record: Any, meta: dict[str, Any] | None = None) -> list[str]:
    """`tuning.conformal` (`laplace tune --conformal`): levels in (0, 1) mapping to the
    thresholds of the posterior's likelihood (classification: `lac` and `aps` in [0, 1];
    binary: `label_lac`, one in [0, 1] per output; regression: `normalised`, one ≥ 0 per
    output), each finite (docs/posterior-format.md). A tampered value would silently change
    every set `predict --conformal` emits, so anything else is refused."""
    levels = record.get("levels") if isinstance(record, dict) else None
    if not isinstance(levels, dict) or not levels:
        return [
            f"metadata 'tuning.conformal' must hold a non-empty 'levels' object, got {clip(record)}"
        ]
    meta = meta or {}
    kind = meta.get("likelihood")
    required, optional = _CONFORMAL_KEYS.get(kind, (set(), {"lac", "aps", *_CONFORMAL_LISTS}))
    n_out = meta.get("n_outputs") if is_int(meta.get("n_outputs")) else None
    expected = (
        f"{' and '.join(sorted(required))}{' (and aps)' if optional and required else ''}"
        if required
        else "lac, aps, label_lac or normalised"
    )
    problems = []
    for key, value in levels.items():
        try:
            ok_level = 0.0 < float(key) < 1.0
        except ValueError:
            ok_level = False
        ok_value = (
            isinstance(value, dict)
            and required <= set(value)
            and set(value) <= required | optional
            and bool(value)
            and all(_conformal_value_ok(k, v, n_out) for k, v in value.items())
        )
        if not (ok_level and ok_value):
            problems.append(
                f"metadata 'tuning.conformal.levels' entry {key!r} must be a level in (0, 1) with "
                f"finite {expected} threshold(s) for a {kind or 'posterior'} posterior "
                f"(probabilities' scores in [0, 1], one per output for lists), got {clip(value)}"
            )
    return problems


def _conformal_value_ok(key: str, value: Any, n_out: int | None) -> bool:
    """One stored threshold (or list of them) is a finite number in its score's range."""
    if key in _CONFORMAL_LISTS:
        if not (isinstance(value, list) and value) or (n_out is not None and len(value) != n_out):
            return False
        values = value
    else:
        values = [value]
    upper = math.inf if key == "normalised" else 1.0 + 1e-9  # float rounding of 1 − p, masses
    return all(_is_number(q) and _finite(q) and 0.0 <= q <= upper for q in values)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finite(x: int | float) -> bool:
    # math.isfinite overflows on huge ints (JSON allows them); an int is always finite.
    return isinstance(x, int) or math.isfinite(x)


def _is_shape(s: Any) -> bool:
    return isinstance(s, list) and all(is_int(d) and d >= 0 for d in s)


def _check_blocks(blocks: Any, names: Any, shapes: Any) -> list[str]:
    """K-FAC blocks: one per parameter tensor, in order, with a kind that fits its shape."""
    if not isinstance(blocks, list) or not all(
        isinstance(b, dict) and isinstance(b.get("name"), str) and _is_shape(b.get("shape"))
        for b in blocks
    ):
        return [
            f"metadata 'blocks' must be a list of {{name, kind, shape}} objects, got {clip(blocks)}"
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
                f"metadata 'blocks'[{i}] ({b['name']}): kind must be one of {'|'.join(_BLOCK_KINDS)}, got {clip(kind)}"
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


def with_hint(name: str, candidates: Any) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
