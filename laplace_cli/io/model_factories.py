"""Model factories: import ``pkg.module:function`` / ``path/to/file.py:function`` and call it.

The weight-only checkpoint forms (safetensors, state dict) need code that builds the module;
dataset specs use the same import rules for their ``callable:`` splits. Importing a factory
runs the user's code, which is the point: the user names it explicitly on the command line.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from laplace_cli.core.errors import BadInputError
from laplace_cli.core.paths import user_path

__all__ = ["import_callable"]


@contextlib.contextmanager
def on_sys_path(*folders: Path) -> Iterator[None]:
    """Put folders at the front of ``sys.path`` for the duration (as ``python -m`` does)."""
    added = []
    for folder in folders:
        text = str(folder)
        if text not in sys.path:
            sys.path.insert(0, text)
            added.append(text)
    importlib.invalidate_caches()  # files may have been written since the last import
    try:
        yield
    finally:
        for text in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(text)


def import_callable(
    spec: str, *, base_dir: str | Path | None = None, what: str = "--model-factory"
) -> Callable[..., Any]:
    """Import ``pkg.module:function`` or ``path/to/file.py:function``.

    Module-style specs import with the current working directory first on ``sys.path``, as
    ``python -m`` would. File-style specs resolve relative paths against ``base_dir`` (default:
    the working directory) and import with the file's own folder on ``sys.path``, as running
    the file as a script would, so it can import its neighbours. Dotted attributes after the
    colon (``mod:Class.build``) are followed.

    Args:
        spec: The callable, ``module:attr`` or ``file.py:attr``.
        base_dir: Folder that relative file paths resolve against.
        what: How the user gave it (an option or a YAML key), for error messages.

    Returns:
        The callable.

    Raises:
        BadInputError: Malformed spec, module not importable, attribute missing or not callable.
    """
    target, sep, attr = str(spec).rpartition(":")
    # "C:\\x.py" without an attribute would split at the drive colon; require a real attr.
    if not sep or not target or not attr or "/" in attr or "\\" in attr:
        raise BadInputError(
            f"{what}: expected 'pkg.module:function' or 'path/to/file.py:function', got {spec!r}"
        )
    cwd = Path.cwd()
    if target.endswith(".py") or "/" in target or os.sep in target:
        file = user_path(target)
        if not file.is_absolute():
            file = Path(base_dir) / file if base_dir is not None else cwd / file
        if not file.is_file():
            raise BadInputError(f"{what}: {spec!r}: file not found: {file}")
        file = file.resolve()
        digest = hashlib.sha256(str(file).encode()).hexdigest()[:12]
        mod_name = f"_laplace_user_{file.stem}_{digest}"
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, file)
            if loader_spec is None or loader_spec.loader is None:
                raise BadInputError(f"{what}: {spec!r}: cannot import {file}")
            module = importlib.util.module_from_spec(loader_spec)
            # Registered before running so that dataclasses / pickling inside it work.
            sys.modules[mod_name] = module
            try:
                with on_sys_path(file.parent):
                    loader_spec.loader.exec_module(module)
            except Exception as err:
                sys.modules.pop(mod_name, None)
                raise BadInputError(
                    f"{what}: {spec!r}: importing {file} failed: {type(err).__name__}: {err}"
                ) from err
    else:
        try:
            with on_sys_path(cwd):
                module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise BadInputError(
                f"{what}: {spec!r}: cannot import module {target!r} ({err}); the working "
                f"directory {cwd} is on the import path"
            ) from None
        except Exception as err:
            raise BadInputError(
                f"{what}: {spec!r}: importing {target!r} failed: {type(err).__name__}: {err}"
            ) from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BadInputError(f"{what}: {spec!r}: {target!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BadInputError(f"{what}: {spec!r}: {attr!r} is not callable")
    return obj


def parse_kwargs(kwargs: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs) if kwargs.strip() else {}
        except json.JSONDecodeError as err:
            raise BadInputError(f"--model-kwargs: invalid JSON ({err}): {kwargs!r}") from None
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise BadInputError(
            f"--model-kwargs: expected a JSON object of keyword arguments, got {kwargs!r}"
        )
    return dict(kwargs)


def build_from_factory(factory: str, kwargs: dict[str, Any]) -> nn.Module:
    fn = import_callable(factory)
    try:
        model = fn(**kwargs)
    except Exception as err:
        raise BadInputError(
            f"--model-factory: {factory!r} failed with kwargs {kwargs!r}: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(model, nn.Module):
        raise BadInputError(
            f"--model-factory: {factory!r} returned {type(model).__name__}, expected a torch.nn.Module"
        )
    return model
