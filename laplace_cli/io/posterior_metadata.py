"""Posterior file metadata: the checks of every value (format and version first).

Split out of `laplace_cli.io.posterior_file`, which re-exports the public names. The key schema
and its str <-> Python encoding live in `posterior_schema`, the per-key checks of the optional
structures (blocks, dense outputs, gp, conformal thresholds) in `posterior_key_checks`; both are
re-exported here. The layout is specified in `docs/posterior-format.md`.
"""

from __future__ import annotations

import difflib
from datetime import datetime
from typing import Any

from laplace_cli.core.enums import Structure, Subset
from laplace_cli.core.errors import BadInputError, LaplaceCliError
from laplace_cli.io.posterior_key_checks import (
    check_blocks,
    conformal_problems,
    dense_problems,
    finite,
    gp_problems,
    is_number,
    is_shape,
)
from laplace_cli.io.posterior_schema import (
    BLOCK_KINDS,
    FORMAT,
    FORMAT_VERSION,
    JSON_KEYS,
    KNOWN_KEYS,
    KNOWN_VERSIONS,
    REQUIRED_KEYS,
    STR_KEYS,
    decode_metadata,
    encode_metadata,
    with_defaults,
)
from laplace_cli.io.safetensors_header import bad_file, clip, is_int, join_problems

__all__ = [
    "BLOCK_KINDS",
    "FORMAT",
    "FORMAT_VERSION",
    "JSON_KEYS",
    "KNOWN_KEYS",
    "KNOWN_VERSIONS",
    "REQUIRED_KEYS",
    "STR_KEYS",
    "check_blocks",
    "check_format",
    "check_metadata",
    "conformal_problems",
    "decode_metadata",
    "dense_problems",
    "encode_metadata",
    "gp_problems",
    "with_defaults",
    "with_hint",
]

# The old private name (tests and callers from before the split use it).
_conformal_problems = conformal_problems

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
    unknown = sorted(set(meta) - KNOWN_KEYS)
    if unknown:
        raise bad_file(
            source,
            f"unknown metadata key(s): {', '.join(with_hint(k, KNOWN_KEYS) for k in unknown)}",
        )


def _check_metadata_strings(meta: dict[str, Any], out: dict[str, Any], problems: list[str]) -> None:
    """String keys (enum ones turned into members in ``out``), the time and the fingerprint."""
    for key, enum in STR_KEYS.items():
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
    if not is_number(v):
        problems.append(f"metadata {key!r} must be a number, got {clip(v)}")
    elif not finite(v):
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
        if not (loss and all(is_number(v) for v in loss)):
            problems.append(
                f"metadata 'loss' must be a number or a list of numbers, got {clip(loss)}"
            )
        elif is_int(n_out) and len(loss) != n_out:
            problems.append(
                f"metadata 'loss' has {len(loss)} entries, expected one per output ({n_out})"
            )
        elif not all(finite(v) for v in loss):
            nonfinite_problems.append(f"metadata 'loss' is not finite ({clip(loss)})")
    else:
        _check_real(meta, "loss", False, problems, nonfinite_problems)
    _check_real(meta, "temperature", True, problems, nonfinite_problems)
    if "fit_seconds" in meta:
        fs = meta["fit_seconds"]
        if not (is_number(fs) and finite(fs) and fs >= 0):
            problems.append(f"metadata 'fit_seconds' must be a number >= 0, got {clip(fs)}")

    sigma = meta["sigma_noise"]
    if not (isinstance(sigma, list) and sigma and all(is_number(s) for s in sigma)):
        problems.append(
            f"metadata 'sigma_noise' must be a non-empty list of numbers, got {clip(sigma)}"
        )
    elif not all(finite(s) for s in sigma):
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
    shapes_ok = isinstance(shapes, list) and all(is_shape(s) for s in shapes)
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
        problems.extend(check_blocks(meta["blocks"], names, shapes))


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
        problems.extend(conformal_problems(meta["tuning"]["conformal"], meta))
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
        problems.extend(gp_problems(meta))
    problems.extend(dense_problems(meta))


def with_hint(name: str, candidates: Any) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
