"""Dataset specs (docs/data-spec.md): the YAML that names each split's file or callable, and its loaders.

A spec looks like::

    task: classification          # or regression, binary (optional: --likelihood overrides)
    batch_size: 256               # optional, default 256 (--batch-size overrides)
    n_classes: 10                 # optional: labels are checked to be < n_classes
    splits:
      train:  {path: train.npz, x: X, y: y}       # .npz .npy .pt .safetensors
      val:    {path: val.csv, target: label}      # CSV / TSV: other numeric columns are features
      test:   {path: test.jsonl, x: features, y: label}
      custom: {callable: mypkg.data:make_split, kwargs: {n: 1000}}   # returns a torch Dataset

Per split, ``y:`` and ``target:`` mean the same (the target key or column); ``x:`` is the feature
key (array files, JSONL) or a list of feature columns (CSV / JSONL); ``id:`` names an id column
(default ``id``, never a feature); ``format:`` overrides the suffix. For a ``.npy`` split, which
holds one array, ``y:`` is the path of a second ``.npy`` file with the targets. Relative paths
resolve against the YAML file's folder; module-style callables import with the working directory
on the import path, file-style ones (``data.py:make``) resolve against the YAML's folder.

Validation collects every problem and raises one :class:`~laplace_cli.core.errors.BadInputError`, one
line per problem: ``data.yaml: splits.train.y: expected a key name (string), got 3``.

Loaded tensors: features float32 (the engine converts the dtype later); classification labels
int64 of shape (N,); regression and binary targets float32, (N,) taken as (N, 1).

Parsing and validation live in :mod:`~laplace_cli.io.dataset_specs` (and the YAML reading in
:mod:`~laplace_cli.io.safe_yaml`); the label checks in :mod:`~laplace_cli.io.dataset_labels`;
this module builds datasets and loaders, and re-exports those modules' names so that
``laplace_cli.io.datasets`` stays the one import path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.data_formats import file_not_found
from laplace_cli.io.dataset_labels import LabelError as LabelError
from laplace_cli.io.dataset_labels import check_label_maps as check_label_maps
from laplace_cli.io.dataset_labels import check_labels as check_labels
from laplace_cli.io.dataset_labels import convert_targets
from laplace_cli.io.dataset_specs import DEFAULT_BATCH_SIZE as DEFAULT_BATCH_SIZE
from laplace_cli.io.dataset_specs import SPLIT_KEYS as SPLIT_KEYS
from laplace_cli.io.dataset_specs import TOP_KEYS as TOP_KEYS
from laplace_cli.io.dataset_specs import DatasetSpec as DatasetSpec
from laplace_cli.io.dataset_specs import SplitSpec as SplitSpec
from laplace_cli.io.dataset_specs import load_dataset_spec as load_dataset_spec
from laplace_cli.io.dataset_specs import parse_dataset_spec as parse_dataset_spec
from laplace_cli.io.dataset_specs import positive_int as positive_int
from laplace_cli.io.dataset_specs import resolve_relative as resolve_relative
from laplace_cli.io.dataset_specs import short_repr as short_repr
from laplace_cli.io.dataset_specs import unknown_keys as unknown_keys
from laplace_cli.io.dataset_specs import validate_dataset_spec as validate_dataset_spec
from laplace_cli.io.dataset_specs import validate_split as validate_split
from laplace_cli.io.model_factories import import_callable
from laplace_cli.io.safe_yaml import MAX_YAML_NODES as MAX_YAML_NODES
from laplace_cli.io.safe_yaml import UniqueKeyLoader as UniqueKeyLoader
from laplace_cli.io.safe_yaml import check_expanded_size as check_expanded_size
from laplace_cli.io.safe_yaml import construct_unique_mapping as construct_unique_mapping
from laplace_cli.io.safe_yaml import load_yaml as load_yaml
from laplace_cli.io.tabular import (
    ARRAY_FORMATS,
    check_finite,
    read_arrays,
    read_table,
)

# The part modules' names above are re-exported (``name as name``): callers and tests
# import them from laplace_cli.io.datasets.
__all__ = [
    "ArrayDataset",
    "DEFAULT_BATCH_SIZE",
    "DatasetSpec",
    "LabelError",
    "SplitSpec",
    "check_label_maps",
    "check_labels",
    "load_dataset_spec",
    "load_split",
    "load_yaml",
    "make_loader",
    "parse_dataset_spec",
    "validate_dataset_spec",
]


# --------------------------------------------------------------------------- datasets, loaders


class ArrayDataset(Dataset):
    """In-memory ``(x, y)`` pairs from a data file.

    Attributes:
        x: Features, float32, shape (N, ...).
        y: Targets, shape (N,) or (N, K); for an unlabeled split a (N, 0) float tensor, so that
            items are still ``(x, y)`` pairs (see :attr:`has_labels`).
        ids: Row ids from an ``id`` column, or None.
        source: The data file, for messages.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        ids: list[Any] | None = None,
        source: str = "",
    ) -> None:
        self.x = x
        self.has_labels = y is not None
        self.y = y if y is not None else torch.zeros(len(x), 0)
        self.ids = ids
        self.source = source

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def load_split(
    spec: DatasetSpec,
    name: str,
    *,
    task: Likelihood | str | None = None,
    require_labels: bool = True,
    label_maps: int | None = None,
) -> Dataset:
    """Load one split as a Dataset of ``(x, y)`` pairs.

    Args:
        spec: The dataset spec.
        name: Split name.
        task: Likelihood overriding ``spec.task`` (``--likelihood`` beats ``task:``). It decides
            the target conversion; with neither, targets keep integer / float kind as stored.
        require_labels: Raise when a file split has no targets (predict does not need them).
        label_maps: For a model with dense outputs (B, C, *S): the `ignore_index` of its
            per-position classification labels (N, *S) (`check_label_maps`); None: one
            label per row. Regression / binary targets (N, C, *S) keep their shape either way.

    Returns:
        An :class:`ArrayDataset` for file splits, a :class:`~laplace_cli.io.text.TextDataset`
        for text splits (dict batches through its `collate`), or what the callable returns.

    Raises:
        BadInputError: Missing file or key, bad values (NaN / Inf, bad labels, naming file and
            row), empty split, or a callable that fails or returns no Dataset.
    """
    split = spec.split(name)
    the_task = spec.task if task is None else Likelihood.parse(task, "--likelihood")
    at = f"{spec.source}: splits.{name}"
    if split.kind == "text":
        return _load_text(spec, split, at, the_task, require_labels)
    if split.kind == "callable":
        return _load_callable(spec, split, at)

    assert split.path is not None and split.format is not None
    path = split.path
    src = str(path)
    if not path.is_file():
        raise BadInputError(file_not_found(f"{at}.path", path))
    ids: list[Any] | None = None
    if split.format in ARRAY_FORMATS:
        x, y = _read_array_split(split, at, path, src)
    else:
        x, y, ids = _read_table_split(split, at, path, src)
    if split.scale != 1.0:
        x = x * split.scale
    if len(x) == 0:
        raise BadInputError(f"{at}: {src}: empty split (no rows)")
    if y is None:
        if require_labels:
            raise BadInputError(f"{at}: {src} has no targets; name them with y: (or target:)")
    else:
        if len(y) != len(x):
            raise BadInputError(f"{at}: {src}: {len(x)} feature rows but {len(y)} targets")
        y = convert_targets(y, the_task, spec.n_classes, src, label_maps)
    return ArrayDataset(x, y, ids=ids, source=src)


def _read_array_split(
    split: SplitSpec, at: str, path: Path, src: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An array-file split: its rows selected, features float32 and checked finite."""
    assert split.format is not None
    paired = split.format in ("npy", "idx")  # targets in a second file of the same format
    if paired and isinstance(split.y, Path) and not split.y.is_file():
        raise BadInputError(file_not_found(f"{at}.y", split.y))
    x, y = read_arrays(
        path,
        split.format,
        x_key=split.x if isinstance(split.x, str) else None,
        y_key=None if paired else (None if split.y is None else str(split.y)),
        y_path=split.y if paired else None,
        source=src,
        rows=split.rows if split.format == "idx" else None,  # IDX reads only these rows
    )
    if y is not None and len(y) != len(x):
        raise BadInputError(f"{at}: {src}: {len(x)} feature rows but {len(y)} targets")
    if split.format != "idx":
        x, y, _ = _select_rows(split, at, len(x), x, y, None)  # before float32: less memory
    x = x.to(torch.float32)
    check_finite(x, src, "features")
    return x, y


def _read_table_split(
    split: SplitSpec, at: str, path: Path, src: str
) -> tuple[torch.Tensor, torch.Tensor | None, list[Any] | None]:
    """A table split (CSV / TSV / JSONL): features float32, targets, row ids; rows selected."""
    table = read_table(
        path,
        fmt=split.format,
        x_key=split.x,
        target=None if split.y is None else str(split.y),
        id_key=split.id,
        source=src,
        header=split.header,
    )
    x = torch.from_numpy(table.x.astype("float32"))
    y = None if table.y is None else torch.from_numpy(table.y)
    ids = table.ids if table.has_ids else None
    return _select_rows(split, at, len(x), x, y, ids)


def _select_rows(
    split: SplitSpec,
    at: str,
    n: int,
    x: torch.Tensor,
    y: torch.Tensor | None,
    ids: list[Any] | None,
) -> tuple[torch.Tensor, torch.Tensor | None, list[Any] | None]:
    """The ``rows: start:stop`` of a file split (all rows without it)."""
    if split.rows is None:
        return x, y, ids
    start, stop = split.rows
    if (stop if stop is not None else start or 0) > n:
        raise BadInputError(
            f"{at}.rows: {start if start is not None else ''}:{stop if stop is not None else ''}"
            f" reaches past the file's {n} rows; lower it (rows: 0:{n} is the whole file)"
        )
    part = slice(start, stop)
    return (
        x[part],
        None if y is None else y[part],
        None if ids is None else ids[part],
    )


def _load_text(
    spec: DatasetSpec,
    split: SplitSpec,
    at: str,
    task: Likelihood | None,
    require_labels: bool,
) -> Dataset:
    """A text split (``text:`` + ``tokenizer:``), tokenised; see :mod:`laplace_cli.io.text`."""
    from laplace_cli.io.text import load_text_split

    if split.text is None or split.tokenizer is None:
        missing = "text" if split.text is None else "tokenizer"
        raise BadInputError(f"{at}.{missing}: required for a text split (text: and tokenizer:)")
    if split.path is None:
        raise BadInputError(f"{at}.path: required for a text split (a .jsonl, .csv or .tsv file)")
    fmt = split.format or "jsonl"
    ds, y = load_text_split(
        split.path,
        fmt,
        split.text,
        None if split.y is None else str(split.y),
        split.tokenizer,
        max_length=split.max_length,
        id_key=split.id,
        base_dir=spec.base_dir,
        source=f"{at}: {split.path}",
        require_labels=require_labels,
    )
    if y is not None:
        ds.y = convert_targets(y, task, spec.n_classes, str(split.path))
    return ds


def _load_callable(spec: DatasetSpec, split: SplitSpec, at: str) -> Dataset:
    assert split.callable is not None
    fn = import_callable(split.callable, base_dir=spec.base_dir, what=f"{at}.callable")
    try:
        ds = fn(**split.kwargs)
    except Exception as err:
        raise BadInputError(
            f"{at}.callable: {split.callable!r} failed with kwargs {split.kwargs!r}: "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(ds, Dataset):
        raise BadInputError(
            f"{at}.callable: {split.callable!r} returned {type(ds).__name__}, expected a "
            "torch.utils.data.Dataset"
        )
    if isinstance(ds, IterableDataset):
        return ds
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError:
        return ds
    if n == 0:
        raise BadInputError(f"{at}: empty split (the callable's Dataset has no items)")
    first = ds[0]
    if not isinstance(first, (tuple, list)) or len(first) != 2:
        raise BadInputError(
            f"{at}.callable: items must be (x, y) pairs, got {type(first).__name__}"
            + (f" of length {len(first)}" if isinstance(first, (tuple, list)) else "")
        )
    return ds


def make_loader(
    spec: DatasetSpec,
    name: str,
    batch_size: int | None = None,
    shuffle: bool = False,
    *,
    task: Likelihood | str | None = None,
    require_labels: bool = True,
    generator: torch.Generator | None = None,
    by_length: bool = False,
    label_maps: int | None = None,
) -> DataLoader:
    """A DataLoader over one split, yielding ``(x, y)`` batches.

    Args:
        spec: The dataset spec.
        name: Split name.
        batch_size: Overrides ``spec.batch_size`` (``--batch-size`` beats ``batch_size:``);
            default 256.
        shuffle: Shuffle map-style datasets (seed through ``generator``).
        task: Likelihood overriding ``spec.task``.
        require_labels: See :func:`load_split`.
        generator: Random generator for shuffling.
        by_length: For text splits without shuffling, order the rows by token count
            (`TextDataset.by_length`) so batches carry little padding; only for callers
            whose results do not depend on row order. Other datasets ignore it.
        label_maps: See :func:`load_split`.
    """
    bs = batch_size if batch_size is not None else (spec.batch_size or DEFAULT_BATCH_SIZE)
    if not positive_int(bs):
        raise BadInputError(f"--batch-size: expected a positive integer, got {bs!r}")
    ds = load_split(spec, name, task=task, require_labels=require_labels, label_maps=label_maps)
    if by_length and not shuffle and callable(getattr(ds, "by_length", None)):
        ds = ds.by_length()
    iterable = isinstance(ds, IterableDataset)
    # Text datasets pad per batch (dict batches); other datasets use the default collation.
    collate = getattr(ds, "collate", None)
    return DataLoader(
        ds,
        batch_size=bs,
        shuffle=shuffle and not iterable,
        generator=generator,
        collate_fn=collate if callable(collate) else None,
    )
