"""Posterior file metadata, building side: the schema of its keys (which exist, which are
required, which are strings and which JSON) and their str <-> Python encoding.

Split out of `laplace_cli.io.posterior_metadata` (the checks), which re-exports these names. The
layout is specified in `docs/posterior-format.md`.
"""

from __future__ import annotations

import json
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
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.safetensors_header import clip, join_problems

FORMAT = "laplace-cli/posterior"
FORMAT_VERSION = "1"
KNOWN_VERSIONS: tuple[str, ...] = ("1",)


# --- metadata schema ------------------------------------------------------------------------

# Keys whose value is stored verbatim as a string, and the enum (if any) it must belong to.
STR_KEYS: dict[str, type[StrEnum] | None] = {
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
JSON_KEYS: frozenset[str] = frozenset(
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
KNOWN_KEYS: frozenset[str] = frozenset(STR_KEYS) | JSON_KEYS
BLOCK_KINDS = ("kron", "kron_bias", "diag")

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
        elif isinstance(value, os.PathLike) and key not in JSON_KEYS:
            value = os.fspath(value)
        if isinstance(value, str) and key not in JSON_KEYS:
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
        if key in JSON_KEYS:
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
