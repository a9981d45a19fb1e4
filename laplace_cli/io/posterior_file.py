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

The parts live in `safetensors_header` (the container), `posterior_metadata` (keys, encoding,
value checks) and `posterior_validation` (the tensor layout); this module reads and writes
whole files and re-exports the public names above.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from laplace_cli.core.errors import BadInputError, FingerprintMismatchError
from laplace_cli.io.atomic import atomic_write_bytes
from laplace_cli.io.posterior_metadata import (
    FORMAT,
    FORMAT_VERSION,
    KNOWN_VERSIONS,
    REQUIRED_KEYS,
    check_format,
    decode_metadata,
    encode_metadata,
    with_defaults,
)
from laplace_cli.io.posterior_validation import validate_decoded, validate_posterior
from laplace_cli.io.safetensors_header import (
    MAX_HEADER_BYTES,
    SafetensorsHeader,
    TensorEntry,
    bad_file,
    canonical_header,
    read_safetensors_header,
)

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

    from laplace_cli.core.errors import NumericalError

    meta = with_defaults(metadata)
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
    data = canonical_header(save(prepared, metadata=encode_metadata(meta)))
    atomic_write_bytes(path, data)


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
    check_format(header.metadata, path)
    meta = decode_metadata(header.metadata, path)
    try:
        tensors = load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own error types, and OSError
        raise bad_file(
            path, f"cannot load tensors ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    meta = validate_decoded(tensors, meta, path, BadInputError)
    return PosteriorFile(tensors=tensors, metadata=meta, path=path)


def _key_order(key: str) -> tuple[int, str]:
    """Documented order (required keys as listed, then the optional ones by name)."""
    try:
        return (REQUIRED_KEYS.index(key), key)
    except ValueError:
        return (len(REQUIRED_KEYS), key)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_fingerprint(
    metadata: dict[str, Any],
    fingerprint: str,
    source: object,
    *,
    model: object = "the model",
    overridden: bool = False,
) -> None:
    """Refuse to apply a posterior to a model whose parameters differ from the fitted ones.

    Args:
        metadata: The posterior's (decoded) metadata.
        fingerprint: SHA-256 hex digest of the model at hand.
        source: The posterior file (for the message).
        model: What produced `fingerprint` (for the message), e.g. the checkpoint path.
        overridden: `model` was given with `--model` (not the one the posterior names): the
            hint then says the given model is the wrong one instead of asking for `--model`.

    Raises:
        FingerprintMismatchError: The fingerprints differ.
    """
    expected = str(metadata.get("fingerprint", ""))
    if expected.lower() == fingerprint.lower():
        return
    recorded = metadata.get("model")
    fitted_on = recorded.get("path") if isinstance(recorded, dict) else None
    where = f" ({fitted_on})" if fitted_on else ""
    if not overridden:
        hint = "pass --model for the checkpoint it was fitted on"
    elif fitted_on:
        hint = (
            "the model given with --model is not the one it was fitted on; pass that "
            "checkpoint, or leave out --model to load the one the posterior names"
        )
    else:
        hint = "the model given with --model is not the one it was fitted on; pass that checkpoint"
    raise FingerprintMismatchError(
        f"{source} was fitted on a model with fingerprint {expected[:12]}…{where}, but {model} has "
        f"{fingerprint[:12]}…; {hint}"
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
    info = {
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
    gp = posterior_file.metadata.get("gp")
    if isinstance(gp, dict):  # function-space posterior: it carries M training inputs
        tensors = posterior_file.tensors
        info["context_points"] = {
            "count": gp.get("n_context"),
            "strategy": gp.get("context"),
            "input_bytes": sum(
                t.numel() * t.element_size()
                for n, t in tensors.items()
                if n.startswith("gp.context_inputs")
            ),
            "kernel_bytes": sum(
                t.numel() * t.element_size()
                for n, t in tensors.items()
                if n.startswith("gp.") and not n.startswith("gp.context_inputs")
            ),
        }
    return info
