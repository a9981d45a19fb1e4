"""Safe YAML files: no Python objects, no duplicate keys, no alias bombs, errors with file:line:col.

Used for dataset specs (:mod:`laplace_cli.io.dataset_specs`) and recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from laplace_cli.core.errors import BadInputError

__all__ = ["MAX_YAML_NODES", "load_yaml"]


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys (PyYAML would silently keep the last one)."""


def construct_unique_mapping(loader: UniqueKeyLoader, node: Any, deep: bool = False) -> Any:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key].line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_unique_mapping
)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely; syntax errors become :class:`BadInputError` with file:line:col.

    Raises:
        BadInputError: Missing / unreadable file, invalid YAML, or a duplicate key.
    """
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{path}: file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"{path}: cannot read ({err})") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise BadInputError(f"{where}: invalid YAML: {detail}") from None
    except RecursionError:
        raise BadInputError(f"{path}: invalid YAML: nested too deeply") from None
    check_expanded_size(data, path)
    return data


MAX_YAML_NODES = 100_000
"""Refuse YAML whose aliases expand to more values than this (a "billion laughs" file)."""

MAX_YAML_DEPTH = 200
"""Refuse YAML nested deeper than this. PyYAML's recursive composer usually stops such a file
with a RecursionError first, but only under the interpreter's recursion limit, which a host
program may have raised."""


def check_expanded_size(data: Any, path: str | Path) -> None:
    """Count the values of `data` with every alias expanded, refusing cycles and huge files.

    PyYAML builds an alias as a reference to the same object, so a file of 10 lines can stand
    for 10⁹ values (`b: [*a, *a, ...]`, `c: [*b, *b, ...]`); printing or walking it would hang.
    The count is memoised per object, so this costs one pass over the distinct objects.
    """
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()
    stack: list[tuple[Any, bool, int]] = [(data, False, 0)]
    while stack:  # iterative post-order walk: no recursion limit on deep nesting
        obj, done, depth = stack.pop()
        if not isinstance(obj, (list, dict)) or (id(obj) in sizes and not done):
            continue
        if depth > MAX_YAML_DEPTH:
            raise BadInputError(f"{path}: invalid YAML: nested too deeply")
        children = list(obj.keys()) + list(obj.values()) if isinstance(obj, dict) else obj
        if done:
            open_ids.discard(id(obj))
            total = 1 + sum(sizes.get(id(c), 1) for c in children)
            if total > MAX_YAML_NODES:
                raise BadInputError(
                    f"{path}: YAML aliases expand to more than {MAX_YAML_NODES:,} values; "
                    "refused (a 'billion laughs' file?)"
                )
            sizes[id(obj)] = total
            continue
        if id(obj) in open_ids:
            raise BadInputError(f"{path}: YAML alias refers to itself (a recursive structure)")
        open_ids.add(id(obj))
        stack.append((obj, True, depth))
        stack.extend((c, False, depth + 1) for c in children)
