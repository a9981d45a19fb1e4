"""The building blocks of the YAML schema: :class:`Key`, :class:`Section` and their defaults.

:mod:`laplace_cli.io.data_spec_schema`, :mod:`laplace_cli.io.recipe_schema` and
:mod:`laplace_cli.io.recipe_scoring_schema` declare their keys with these;
:mod:`laplace_cli.io.spec_schema` re-exports everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "REQUIRED", "UNSET", "Key", "Section", "enum_values", "keys_of"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


REQUIRED: Any = _Required()
"""Default of a key that must be given."""
UNSET: Any = _Unset()
"""Default of an optional key whose absence means "not used" (described in ``default_text``)."""

KINDS = {
    "str": "string",
    "path": "path",
    "int": "integer",
    "float": "number",
    "bool": "true / false",
    "list": "list",
    "dict": "mapping",
    "str|list": "string or list of strings",
    "path|dict": "path, or mapping of name to path",
}
"""Value kinds and how the docs name them (recipes check values against these kinds)."""


@dataclass(frozen=True)
class Key:
    """One YAML key.

    Attributes:
        name: The key as written in YAML.
        kind: One of :data:`KINDS`.
        description: What it does (Markdown, one paragraph).
        example: A value to show in the docs (YAML-rendered).
        default: The value used when the key is absent, :data:`REQUIRED`, or :data:`UNSET`.
        default_text: How the docs state the default when it is not a plain value.
        choices: Allowed values, if the key takes one of a fixed set.
    """

    name: str
    kind: str
    description: str
    example: Any
    default: Any = UNSET
    default_text: str | None = None
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: unknown kind {self.kind!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Section:
    """The keys of one YAML mapping: ``path`` is the dotted prefix ("" for the top level)."""

    path: str
    title: str
    intro: str
    keys: tuple[Key, ...]

    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def key(self, name: str) -> Key:
        for k in self.keys:
            if k.name == name:
                return k
        raise KeyError(name)


def enum_values(enum: Any) -> tuple[str, ...]:
    return tuple(m.value for m in enum)


def keys_of(sections: tuple[Section, ...], path: str) -> tuple[str, ...]:
    """The key names of the section at ``path`` (a validator's allowed keys)."""
    for section in sections:
        if section.path == path:
            return section.names()
    raise KeyError(path)
