"""Model paths in a posterior's metadata: written relative to the posterior, read back from it.

A posterior names the checkpoint it was fitted on (``model.path``) and, for weights-only
checkpoints, a file-style factory (``model.factory``, ``path/to/file.py:function``). Absolute
paths break as soon as a run folder or project is moved or copied to another machine, so they
are recorded relative to the folder that holds the posterior file (POSIX separators), with the
absolute path at write time kept beside them (``model.absolute_path``,
``model.absolute_factory``) for a posterior moved on its own.

Reading tries, in order: the path relative to the posterior's folder, the recorded absolute
path, and the path relative to the working directory (what a relative path meant in posteriors
written before this rule, e.g. from the Python API). Old posteriors holding absolute paths read
as before. A model found nowhere is a :class:`~laplace_cli.core.errors.BadInputError` that names
every place looked at and ``--model`` as the fix; the fingerprint check still guards against a
different model found at one of these places.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from laplace_cli.core.errors import BadInputError
from laplace_cli.core.paths import user_path

__all__ = ["portable_model_ref", "resolve_model_ref"]


def _folder(posterior: str | Path) -> Path:
    return user_path(posterior).resolve().parent


def _relative(target: str, base: Path) -> str:
    """``target`` relative to ``base`` (POSIX form), or absolute when no relative path exists."""
    absolute = user_path(target).resolve()
    try:
        return Path(os.path.relpath(absolute, base)).as_posix()
    except ValueError:  # another drive on Windows: no relative path
        return str(absolute)


def _file_factory(factory: Any) -> tuple[str, str] | None:
    """``(file, function)`` of a file-style factory, else None (``pkg.module:function``)."""
    if not isinstance(factory, str):
        return None
    file, sep, fn = factory.rpartition(":")
    if sep and file and (file.endswith(".py") or "/" in file or os.sep in file):
        return file, fn
    return None


def portable_model_ref(ref: Mapping[str, Any], posterior: str | Path) -> dict[str, Any]:
    """The model reference to store in ``posterior``: paths relative to its folder.

    Args:
        ref: ``ModelRef.to_dict()`` of the loaded model (absolute paths).
        posterior: The posterior file about to be written.

    Returns:
        A copy with ``path`` (and a file-style ``factory``) relative to the posterior's folder
        and the absolute originals under ``absolute_path`` / ``absolute_factory``.
    """
    out = dict(ref)
    base = _folder(posterior)
    path = out.get("path")
    if isinstance(path, str) and path:
        out["absolute_path"] = str(user_path(path).resolve())
        out["path"] = _relative(path, base)
    parts = _file_factory(out.get("factory"))
    if parts is not None and user_path(parts[0]).is_file():
        file, fn = parts
        out["absolute_factory"] = f"{user_path(file).resolve()}:{fn}"
        out["factory"] = f"{_relative(file, base)}:{fn}"
    return out


def _candidates(recorded: str, absolute: Any, base: Path) -> list[Path]:
    path = user_path(recorded)
    if path.is_absolute():
        found = [path]
    else:
        found = [base / path]
        if isinstance(absolute, str) and absolute:
            found.append(Path(absolute))
        found.append(Path.cwd() / path)  # posteriors written before paths were relative
    return list(dict.fromkeys(p.resolve() for p in found))


def resolve_model_ref(ref: Mapping[str, Any], posterior: str | Path) -> dict[str, Any]:
    """The stored model reference with its paths made absolute again, for loading.

    Args:
        ref: The posterior's ``model`` metadata (relative or, in older files, absolute paths).
        posterior: The posterior file it was read from.

    Returns:
        A copy whose ``path`` and file-style ``factory`` point at existing files (or the
        reference unchanged when it names no path: the caller then asks for ``--model``).

    Raises:
        BadInputError: The checkpoint (or the factory file) is at none of the places tried; the
            message lists them and says to pass ``--model``.
    """
    out = dict(ref)
    base = _folder(posterior)
    path = out.get("path")
    if isinstance(path, str) and path:
        tried = _candidates(path, out.get("absolute_path"), base)
        found = next((p for p in tried if p.exists()), None)
        if found is None:
            factory = " --model-factory FACTORY" if out.get("factory") else ""
            raise BadInputError(
                f"{posterior}: the model checkpoint it names, {path!r}, is not there (looked "
                f"at {', '.join(str(p) for p in tried)}); pass --model PATH{factory} for the "
                "checkpoint it was fitted on"
            )
        out["path"] = str(found)
    parts = _file_factory(out.get("factory"))
    if parts is not None:
        file, fn = parts
        absolute = _file_factory(out.get("absolute_factory"))
        tried = _candidates(file, absolute[0] if absolute else None, base)
        found = next((p for p in tried if p.is_file()), None)
        if found is None:
            raise BadInputError(
                f"{posterior}: the model factory it names, {out['factory']!r}, is not there "
                f"(looked at {', '.join(str(p) for p in tried)}); pass --model CHECKPOINT "
                "--model-factory path/to/file.py:function"
            )
        out["factory"] = f"{found}:{fn}"
    return out
