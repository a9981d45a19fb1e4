"""Paths as users write them: `~` and `~user` expanded, with a clear error for a user that
does not exist (pathlib raises a bare RuntimeError there: a recipe `data: ~0` crashed the
loader instead of being refused)."""

from __future__ import annotations

import os
from pathlib import Path

from laplace_cli.core.errors import BadInputError

__all__ = ["user_path"]


def user_path(path: str | os.PathLike[str]) -> Path:
    """`Path(path).expanduser()`, or BadInputError when its `~user` cannot be expanded."""
    try:
        return Path(path).expanduser()
    except RuntimeError as exc:  # "Could not determine home directory."
        raise BadInputError(f"{os.fspath(path)}: cannot expand '~': {exc}") from None
