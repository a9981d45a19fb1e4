"""Dataset specs: parse and validate the YAML that names each split's file or callable.

The spec format is documented in ``docs/data-spec.md`` (rendered from
:mod:`laplace_cli.io.spec_schema`, whose key tables this validator reads) and
:mod:`laplace_cli.io.datasets`, which turns a validated
:class:`DatasetSpec` into datasets and loaders. Validation collects every problem and raises
one :class:`~laplace_cli.core.errors.BadInputError`, one line per problem. One split's keys,
:class:`SplitSpec` and its validation live in :mod:`laplace_cli.io.split_specs` (re-exported here).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.safe_yaml import load_yaml
from laplace_cli.io.spec_schema import DATA_SPEC_SECTIONS, keys_of
from laplace_cli.io.split_specs import (
    SPLIT_KEYS,
    SplitSpec,
    positive_int,
    resolve_relative,
    short_repr,
    unknown_keys,
    validate_split,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DatasetSpec",
    "SplitSpec",
    "SPLIT_KEYS",
    "TOP_KEYS",
    "load_dataset_spec",
    "parse_dataset_spec",
    "positive_int",
    "resolve_relative",
    "short_repr",
    "unknown_keys",
    "validate_dataset_spec",
    "validate_split",
]


DEFAULT_BATCH_SIZE = 256


# The allowed keys come from the declarative schema that also renders docs/data-spec.md.
TOP_KEYS = keys_of(DATA_SPEC_SECTIONS, "")


@dataclass
class DatasetSpec:
    """A validated dataset spec.

    Attributes:
        splits: Split name to its spec, in file order.
        task: The likelihood, if the spec names one (``--likelihood`` overrides it).
        batch_size: Batch size, if the spec names one (``--batch-size`` overrides it).
        n_classes: Number of classes, if given; classification labels must be below it.
        ignore_index: The label of a masked position in per-position label maps (models
            with dense outputs, docs/dense-outputs.md), if the spec names one.
        source: The YAML file as given (for messages).
        base_dir: Folder that relative paths resolved against.
    """

    splits: dict[str, SplitSpec]
    task: Likelihood | None = None
    batch_size: int | None = None
    n_classes: int | None = None
    ignore_index: int | None = None
    source: str = "<spec>"
    base_dir: Path = field(default_factory=Path.cwd)

    def split(self, name: str) -> SplitSpec:
        """The split called ``name``; a clear error listing the splits when there is none."""
        if name not in self.splits:
            close = difflib.get_close_matches(name, list(self.splits), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BadInputError(
                f"{self.source}: splits: no split {name!r}; the spec has "
                f"{', '.join(self.splits) or 'none'}{hint}"
            )
        return self.splits[name]


# --------------------------------------------------------------------------- validation


def validate_dataset_spec(
    data: Any,
    *,
    source: str = "<spec>",
    base_dir: str | Path | None = None,
    prefix: str = "",
) -> tuple[DatasetSpec | None, list[str]]:
    """Check a parsed spec mapping and build the typed spec, collecting every problem.

    Meant for callers that merge errors from several sections (a recipe's ``data:`` section
    uses ``prefix="data."``); most code calls :func:`parse_dataset_spec` instead.

    Args:
        data: The mapping parsed from YAML.
        source: File name for messages.
        base_dir: Folder relative paths resolve against (default: the working directory).
        prefix: Key path prefix for messages.

    Returns:
        ``(spec, errors)``: ``spec`` is None when there are errors; each error is a full line
        ``source: key.path: message``.
    """
    errors: list[str] = []
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    def err(key: str, message: str) -> None:
        errors.append(f"{source}: {prefix}{key}: {message}")

    if not isinstance(data, Mapping):
        what = "an empty file" if data is None else short_repr(data)
        errors.append(f"{source}: expected a mapping with a `splits:` section, got {what}")
        return None, errors

    spec = _partial_spec(data, source, base, err)
    return (None, errors) if errors else (spec, [])


def _partial_spec(data: Mapping[str, Any], source: str, base: Path, err: Any) -> DatasetSpec:
    """The spec with what is right in it: wrong keys reported to `err` and left out, so that
    the files of the splits that are right can still be checked in the same run."""
    unknown_keys(data, TOP_KEYS, "", err)
    task, batch_size, n_classes = _dataset_options(data, err)
    ignore_index = data.get("ignore_index")
    if ignore_index is not None and not (
        isinstance(ignore_index, int) and not isinstance(ignore_index, bool)
    ):
        err("ignore_index", f"expected an integer label, got {short_repr(ignore_index)}")
        ignore_index = None
    splits = _dataset_splits(data, base, err)
    return DatasetSpec(
        splits=splits,
        task=task,
        batch_size=batch_size,
        n_classes=n_classes,
        ignore_index=ignore_index,
        source=source,
        base_dir=base,
    )


def _dataset_options(data: Mapping[str, Any], err: Any) -> tuple[Likelihood | None, Any, Any]:
    """``task``, ``batch_size`` and ``n_classes`` (each None when absent or wrong)."""
    task = None
    if data.get("task") is not None:
        try:
            task = Likelihood(str(data["task"]).lower().replace("-", "_"))
        except ValueError:
            err(
                "task",
                f"expected one of {', '.join(m.value for m in Likelihood)}, got {short_repr(data['task'])}",
            )
    batch_size = data.get("batch_size")
    if batch_size is not None and not positive_int(batch_size):
        err("batch_size", f"expected a positive integer, got {short_repr(batch_size)}")
        batch_size = None
    n_classes = data.get("n_classes")
    if n_classes is not None and not positive_int(n_classes):
        err("n_classes", f"expected a positive integer, got {short_repr(n_classes)}")
        n_classes = None
    return task, batch_size, n_classes


def _dataset_splits(data: Mapping[str, Any], base: Path, err: Any) -> dict[str, SplitSpec]:
    """The ``splits:`` section, each split checked (the wrong ones left out)."""
    splits: dict[str, SplitSpec] = {}
    raw_splits = data.get("splits")
    if raw_splits is None:
        err("splits", "missing; expected a mapping of split names (train, val, ...) to files")
    elif not isinstance(raw_splits, Mapping) or not raw_splits:
        err(
            "splits",
            f"expected a non-empty mapping of split names to files, got {short_repr(raw_splits)}",
        )
    else:
        for name, raw in raw_splits.items():
            at = f"splits.{name}"

            def split_err(key: str, message: str, at: str = at) -> None:
                err(f"{at}.{key}" if key else at, message)

            split = validate_split(str(name), raw, base, split_err)
            if split is not None:
                splits[str(name)] = split
    return splits


def parse_dataset_spec(
    data: Any,
    *,
    source: str = "<spec>",
    base_dir: str | Path | None = None,
    prefix: str = "",
) -> DatasetSpec:
    """Build a :class:`DatasetSpec` from a mapping, raising every problem at once.

    Raises:
        BadInputError: One line per problem.
    """
    spec, errors = validate_dataset_spec(data, source=source, base_dir=base_dir, prefix=prefix)
    if errors or spec is None:
        raise BadInputError("\n".join(errors))
    return spec


def load_dataset_spec(path: str | Path, *, check_files: bool = False) -> DatasetSpec:
    """Read and validate a dataset spec YAML file.

    Args:
        path: The YAML file; relative data paths resolve against its folder.
        check_files: Also look into every split's file (train, val, test, ood, ...): a file
            that does not exist, a key or column that is not in it, feature / target row
            counts that differ, labels outside ``n_classes`` (where cheap); headers only, see
            :mod:`laplace_cli.io.spec_inputs`. ``fit``, ``tune`` and ``run`` ask for it, so that
            a mistake in any split fails before any model is loaded or any fit starts; without
            it a split's file is checked when that split is loaded.

    Raises:
        BadInputError: Invalid YAML (with line), or one line per problem in the spec and, with
            ``check_files``, in its files: all of them in one message.
    """
    from laplace_cli.io.spec_inputs import split_input_problems

    data = load_yaml(path)
    source = str(path)
    errors: list[str] = []
    if not isinstance(data, Mapping):
        _, errors = validate_dataset_spec(data, source=source, base_dir=Path(path).parent)
        raise BadInputError("\n".join(errors))

    def err(key: str, message: str) -> None:
        errors.append(f"{source}: {key}: {message}")

    spec = _partial_spec(data, source, Path(path).parent, err)
    if check_files:
        # The splits that are right are looked into even when other keys are wrong: every
        # mistake of the spec in one message, not one per run.
        for split in spec.splits.values():
            errors += split_input_problems(split, f"{source}: splits.{split.name}", spec.n_classes)
    if errors:
        raise BadInputError("\n".join(errors))
    return spec
