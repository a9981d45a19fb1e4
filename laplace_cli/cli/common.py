"""Checks and conversions the commands share: files that must exist, JSON and key=value options.

Every check raises `BadInputError` (exit 2) with one line naming the option or file, what was
expected and what was given. Commands call these first, so that a typo fails in a second and
not after an hour of fitting.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from laplace_cli.cli.options import OutputFormat
from laplace_cli.core.errors import BadInputError, NotImplementedYetError

__all__ = [
    "apply_threads",
    "check_device",
    "check_factory",
    "check_output_file",
    "check_positive",
    "not_implemented",
    "parse_json_object",
    "parse_overrides",
    "require_file",
    "require_input",
    "resolve_format",
]


def require_file(path: Path, what: str, allow_model_dir: bool = False) -> Path:
    """`path` must be an existing file (or, for models, a Hugging Face / PEFT folder).

    Args:
        path: The file.
        what: The argument or option it came from, e.g. `"MODEL"` or `"--data"`.
        allow_model_dir: accept a folder holding `config.json` or `adapter_config.json`.
    """
    if allow_model_dir and path.is_dir():
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            return path
        raise BadInputError(
            f"{path}: is a folder without config.json or adapter_config.json ({what}); a model "
            "is a checkpoint file, a Hugging Face model folder or a PEFT adapter folder"
        )
    if path.is_dir():
        raise BadInputError(f"{path}: is a folder, expected a file ({what})")
    if not path.is_file():
        raise BadInputError(f"{path}: no such file ({what})")
    return path


def require_input(value: str, what: str = "--input") -> str:
    """`value` must be `-` (stdin) or an existing file."""
    if value != "-":
        require_file(Path(value), what)
    return value


def check_output_file(path: Path | None, what: str = "--output") -> Path | None:
    """The folder `path` would be written to must exist, and `path` must not be a folder.

    Checked before any work starts, so that a long fit does not fail at its last step.
    """
    if path is None:
        return None
    if path.is_dir():
        raise BadInputError(f"{path}: is a folder, expected a file name ({what})")
    parent = path.parent
    if not parent.is_dir():
        raise BadInputError(f"{path}: folder {parent} does not exist ({what})")
    return path


def check_positive(value: float | None, option: str) -> float | None:
    """`value` must be a finite number > 0 (or not given)."""
    if value is not None and not (value > 0 and value != float("inf")):
        raise BadInputError(f"{option}: expected a finite number > 0, got {value}")
    return value


def apply_threads(threads: int | None) -> int:
    """Apply `--threads` (None: the CPUs this process may use, capped) to torch; returns it.

    Called once per command, after the cheap checks and before the first torch work.
    """
    from laplace_cli.core.threads import set_threads  # imports torch: only when a command runs

    return set_threads(threads)


def check_device(device: str | None) -> str | None:
    """`--device` must name a device that exists here (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`)."""
    if device is None:
        return None
    from laplace_cli.io.checkpoints import resolve_device  # imports torch: only when asked

    resolve_device(device)
    return device


def check_factory(factory: str | None) -> str | None:
    """`--model-factory` must look like `pkg.module:function` or `path/to/file.py:function`."""
    if factory is None:
        return None
    module, sep, function = factory.rpartition(":")
    if not sep or not module or not function.isidentifier():
        raise BadInputError(
            f"--model-factory: expected pkg.module:function or path/to/file.py:function, "
            f"got {factory!r}"
        )
    return factory


def parse_json_object(text: str | None, option: str) -> dict[str, Any]:
    """Parse an option holding a JSON object (e.g. `--model-kwargs '{"hidden": 64}'`)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadInputError(
            f"{option}: not valid JSON ({exc.msg} at column {exc.colno}): {text}"
        ) from None
    if not isinstance(value, dict):
        raise BadInputError(
            f"{option}: expected a JSON object like '{{\"hidden\": 64}}', got {text}"
        )
    return value


def parse_overrides(items: Iterable[str] | None, option: str = "--set") -> dict[str, Any]:
    """Parse `key=value` overrides; the key is dotted, the value is read as YAML.

    `fit.prior_precision=0.5` gives `{"fit.prior_precision": 0.5}`, `tune.enabled=false` gives
    `False`, `data.splits=[a, b]` a list. All malformed items are reported together.
    """
    import yaml

    out: dict[str, Any] = {}
    problems: list[str] = []
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or not all(p.isidentifier() for p in parts):
            problems.append(
                f"{option} {item!r}: expected key=value with a dotted key, e.g. fit.structure=diag"
            )
            continue
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            problems.append(
                f"{option} {item!r}: the value is not valid YAML ({type(exc).__name__})"
            )
    if problems:
        raise BadInputError("\n".join(problems))
    return out


_SUFFIX_FORMATS = {
    ".csv": OutputFormat.CSV,
    ".jsonl": OutputFormat.JSONL,
    ".ndjson": OutputFormat.JSONL,
    ".npz": OutputFormat.NPZ,
}


def resolve_format(fmt: OutputFormat | None, output: Path | None) -> OutputFormat:
    """Row format: `--format` if given, else from the `--output` suffix, else JSONL (stdout)."""
    if fmt is not None:
        return fmt
    if output is None:
        return OutputFormat.JSONL
    suffix = output.suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise BadInputError(
            f"{output}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
            "name the file .csv or .jsonl (.npz for dense outputs), or pass --format csv|jsonl|npz"
        )
    return _SUFFIX_FORMATS[suffix]


def not_implemented(command: str) -> NotImplementedYetError:
    """The error a command raises until its engine exists (exit 2, no fake output)."""
    return NotImplementedYetError(f"laplace {command}: not implemented yet")


def progress_for(quiet: bool):
    """A `progress(iterable, total, description)` wrapper for the library's long loops."""
    from laplace_cli.cli.console import progress

    def wrap(iterable, total=None, description="working"):
        return progress(iterable, total=total, description=description, quiet=quiet)

    return wrap


def model_override(model, factory, kwargs_text, trust: bool = False):
    """A `ModelSpec` from --model/--model-factory/--model-kwargs, or None when --model is absent.

    Checks all three first (the file or Hugging Face folder exists, the factory's syntax, the
    kwargs' JSON), so the commands that take a posterior share one validation.
    """
    if model is not None:
        require_file(model, "--model", allow_model_dir=True)
    check_factory(factory)
    parse_json_object(kwargs_text, "--model-kwargs")
    if model is None:
        if factory is not None or kwargs_text is not None:
            raise BadInputError("--model-factory and --model-kwargs need --model")
        return None
    from laplace_cli.pipeline.model_loading import ModelSpec

    return ModelSpec(str(model), factory, parse_json_object(kwargs_text, "--model-kwargs"), trust)
