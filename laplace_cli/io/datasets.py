"""Dataset specs (DESIGN.md §3): the YAML that names each split's file or callable, and its loaders.

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

Validation collects every problem and raises one :class:`~laplace_cli.errors.BadInputError`, one
line per problem: ``data.yaml: splits.train.y: expected a key name (string), got 3``.

Loaded tensors: features float32 (the engine converts the dtype later); classification labels
int64 of shape (N,); regression and binary targets float32, (N,) taken as (N, 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Dataset, IterableDataset

from laplace_cli.enums import Likelihood
from laplace_cli.errors import BadInputError
from laplace_cli.io.checkpoints import import_callable
from laplace_cli.io.tabular import (
    ARRAY_FORMATS,
    FORMATS,
    SUFFIX_FORMATS,
    TABLE_FORMATS,
    check_finite,
    read_arrays,
    read_table,
)

__all__ = [
    "ArrayDataset",
    "DEFAULT_BATCH_SIZE",
    "DatasetSpec",
    "SplitSpec",
    "check_labels",
    "load_dataset_spec",
    "load_split",
    "load_yaml",
    "make_loader",
    "parse_dataset_spec",
    "validate_dataset_spec",
]

DEFAULT_BATCH_SIZE = 256

_TOP_KEYS = ("task", "batch_size", "n_classes", "splits")
_SPLIT_KEYS = (
    "path",
    "format",
    "x",
    "y",
    "target",
    "id",
    "callable",
    "kwargs",
    "text",
    "tokenizer",
    "max_length",
)


@dataclass
class SplitSpec:
    """One split: a data file, a callable returning a Dataset, or (later) a text file.

    Attributes:
        name: The split's name (``train``, ``val``, ...).
        path: The data file, resolved against the YAML file's folder.
        format: ``npz``, ``npy``, ``pt``, ``safetensors``, ``csv``, ``tsv`` or ``jsonl``.
        x: Feature key, or a list of feature columns (CSV / JSONL).
        y: Target key / column (``y:`` or ``target:``); for ``npy``, the resolved path of a
            second ``.npy`` holding the targets.
        id: Id column / key (CSV / JSONL), never a feature.
        callable: ``pkg.module:function`` or ``file.py:function`` returning a Dataset.
        kwargs: Keyword arguments for the callable.
        text: Text field (text datasets; not built yet).
        tokenizer: Tokenizer folder or name (text datasets).
        max_length: Token limit (text datasets).
    """

    name: str
    path: Path | None = None
    format: str | None = None
    x: str | list[str] | None = None
    y: str | Path | None = None
    id: str = "id"
    callable: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None

    @property
    def kind(self) -> str:
        """``"callable"``, ``"text"`` or ``"file"``."""
        if self.callable is not None:
            return "callable"
        if self.text is not None or self.tokenizer is not None:
            return "text"
        return "file"


@dataclass
class DatasetSpec:
    """A validated dataset spec.

    Attributes:
        splits: Split name to its spec, in file order.
        task: The likelihood, if the spec names one (``--likelihood`` overrides it).
        batch_size: Batch size, if the spec names one (``--batch-size`` overrides it).
        n_classes: Number of classes, if given; classification labels must be below it.
        source: The YAML file as given (for messages).
        base_dir: Folder that relative paths resolved against.
    """

    splits: dict[str, SplitSpec]
    task: Likelihood | None = None
    batch_size: int | None = None
    n_classes: int | None = None
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


# --------------------------------------------------------------------------- YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys (PyYAML would silently keep the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: Any, deep: bool = False) -> Any:
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


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
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
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise BadInputError(f"{where}: invalid YAML: {detail}") from None
    except RecursionError:
        raise BadInputError(f"{path}: invalid YAML: nested too deeply") from None
    _check_expanded_size(data, path)
    return data


MAX_YAML_NODES = 100_000
"""Refuse YAML whose aliases expand to more values than this (a "billion laughs" file)."""


def _check_expanded_size(data: Any, path: str | Path) -> None:
    """Count the values of `data` with every alias expanded, refusing cycles and huge files.

    PyYAML builds an alias as a reference to the same object, so a file of 10 lines can stand
    for 10⁹ values (`b: [*a, *a, ...]`, `c: [*b, *b, ...]`); printing or walking it would hang.
    The count is memoised per object, so this costs one pass over the distinct objects.
    """
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:  # iterative post-order walk: no recursion limit on deep nesting
        obj, done = stack.pop()
        if not isinstance(obj, (list, dict)) or (id(obj) in sizes and not done):
            continue
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
        stack.append((obj, True))
        stack.extend((c, False) for c in children)


# --------------------------------------------------------------------------- validation


def _got(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})" if not isinstance(value, str) else text


def _unknown_keys(mapping: Mapping[Any, Any], allowed: Sequence[str], at: str, err: Any) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
            err(f"{at}{key}", f"unknown key{hint}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


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
        what = "an empty file" if data is None else _got(data)
        errors.append(f"{source}: expected a mapping with a `splits:` section, got {what}")
        return None, errors

    _unknown_keys(data, _TOP_KEYS, "", err)
    task = None
    if data.get("task") is not None:
        try:
            task = Likelihood(str(data["task"]).lower().replace("-", "_"))
        except ValueError:
            err(
                "task",
                f"expected one of {', '.join(m.value for m in Likelihood)}, got {_got(data['task'])}",
            )
    batch_size = data.get("batch_size")
    if batch_size is not None and not _positive_int(batch_size):
        err("batch_size", f"expected a positive integer, got {_got(batch_size)}")
        batch_size = None
    n_classes = data.get("n_classes")
    if n_classes is not None and not _positive_int(n_classes):
        err("n_classes", f"expected a positive integer, got {_got(n_classes)}")
        n_classes = None

    splits: dict[str, SplitSpec] = {}
    raw_splits = data.get("splits")
    if raw_splits is None:
        err("splits", "missing; expected a mapping of split names (train, val, ...) to files")
    elif not isinstance(raw_splits, Mapping) or not raw_splits:
        err(
            "splits",
            f"expected a non-empty mapping of split names to files, got {_got(raw_splits)}",
        )
    else:
        for name, raw in raw_splits.items():
            at = f"splits.{name}"

            def split_err(key: str, message: str, at: str = at) -> None:
                err(f"{at}.{key}" if key else at, message)

            split = _validate_split(str(name), raw, base, split_err)
            if split is not None:
                splits[str(name)] = split

    if errors:
        return None, errors
    spec = DatasetSpec(
        splits=splits,
        task=task,
        batch_size=batch_size,
        n_classes=n_classes,
        source=source,
        base_dir=base,
    )
    return spec, []


def _validate_split(name: str, raw: Any, base: Path, err: Any) -> SplitSpec | None:
    if not isinstance(raw, Mapping):
        err("", f"expected a mapping with `path:` or `callable:`, got {_got(raw)}")
        return None
    problems = 0

    def bad(key: str, message: str) -> None:
        nonlocal problems
        problems += 1
        err(key, message)

    _unknown_keys(raw, _SPLIT_KEYS, "", bad)

    def string(key: str, what: str = "a string") -> str | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            bad(key, f"expected {what}, got {_got(value)}")
            return None
        return value

    path = string("path", "a file path (string)")
    call = string("callable", "'pkg.module:function' or 'file.py:function'")
    text = string("text", "a field name (string)")
    tokenizer = string("tokenizer", "a tokenizer folder or name (string)")
    fmt_raw = string("format", f"one of {', '.join(FORMATS)}")
    id_key = string("id", "a column name (string)") or "id"
    y_val = string("y", "a key or column name (string)")
    target = string("target", "a key or column name (string)")
    if y_val is not None and target is not None:
        bad("target", "give either y: or target: (they mean the same), not both")
    y_key = y_val if y_val is not None else target

    if call is not None and ":" not in call:
        bad("callable", f"expected 'pkg.module:function' or 'file.py:function', got {call!r}")
    if path is None and call is None and "path" not in raw and "callable" not in raw:
        bad(
            "",
            "expected `path:` (a data file) or `callable:` (a function returning a Dataset), got neither",
        )
    if path is not None and call is not None:
        bad("callable", "give either path: or callable:, not both")

    kwargs = raw.get("kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            bad("kwargs", f"expected a mapping of keyword arguments, got {_got(kwargs)}")
            kwargs = None
        elif call is None and "callable" not in raw:
            bad("kwargs", "only used with callable:")
    max_length = raw.get("max_length")
    if max_length is not None and not _positive_int(max_length):
        bad("max_length", f"expected a positive integer, got {_got(max_length)}")
        max_length = None
    is_text = "text" in raw or "tokenizer" in raw
    if not is_text and "max_length" in raw:
        bad("max_length", "only used with text: / tokenizer:")

    fmt: str | None = None
    if fmt_raw is not None:
        key = fmt_raw.lower().lstrip(".")
        key = {"ndjson": "jsonl", "pth": "pt", "st": "safetensors"}.get(key, key)
        if key not in FORMATS:
            bad("format", f"expected one of {', '.join(FORMATS)}, got {fmt_raw!r}")
        else:
            fmt = key
    elif path is not None:
        suffix = Path(path).suffix.lower()
        if suffix in SUFFIX_FORMATS:
            fmt = SUFFIX_FORMATS[suffix]
        elif not is_text:
            bad(
                "path",
                f"expected a data file ending in {' '.join(SUFFIX_FORMATS)} (or set format:), "
                f"got {path!r}",
            )

    x_raw = raw.get("x")
    x: str | list[str] | None = None
    if x_raw is not None:
        if isinstance(x_raw, str) and x_raw.strip():
            x = x_raw
        elif isinstance(x_raw, list) and x_raw and all(isinstance(c, str) and c for c in x_raw):
            if fmt is not None and fmt not in TABLE_FORMATS:
                bad(
                    "x",
                    f"a list of columns is for CSV / JSONL files; {fmt} files take one key name",
                )
            else:
                x = list(x_raw)
        else:
            bad("x", f"expected a key name or a list of column names, got {_got(x_raw)}")
    if call is not None:
        for key in ("x", "y", "target", "id", "format"):
            if key in raw:
                bad(key, "not used with callable: (the Dataset yields (x, y) itself)")
    if fmt == "npy" and x is not None:
        bad("x", "a .npy file holds one array (the features); it has no keys")
    if fmt is not None and fmt not in TABLE_FORMATS and "id" in raw:
        bad("id", "id columns exist only in CSV / JSONL files")

    y_out: str | Path | None = y_key
    if fmt == "npy" and y_key is not None:
        if not y_key.lower().endswith(".npy"):
            bad(
                "y" if y_val is not None else "target",
                f"for a .npy split, expected the path of a second .npy with the targets, got {y_key!r}",
            )
        else:
            y_out = _resolve(base, y_key)

    if problems:
        return None
    return SplitSpec(
        name=name,
        path=_resolve(base, path) if path is not None else None,
        format=fmt,
        x=x,
        y=y_out,
        id=id_key,
        callable=call,
        kwargs=dict(kwargs or {}),
        text=text,
        tokenizer=tokenizer,
        max_length=max_length,
    )


def _resolve(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


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
        check_files: Also report every split file that does not exist (in the same message).
            Off by default, so that ``fit`` does not fail over a test file not made yet; missing
            files are reported when a split is loaded.

    Raises:
        BadInputError: Invalid YAML (with line), or one line per problem in the spec.
    """
    data = load_yaml(path)
    source = str(path)
    spec, errors = validate_dataset_spec(data, source=source, base_dir=Path(path).parent)
    if spec is not None and check_files:
        for split in spec.splits.values():
            for key, p in (("path", split.path), ("y", split.y)):
                if isinstance(p, Path) and not p.is_file():
                    errors.append(f"{source}: splits.{split.name}.{key}: file not found: {p}")
    if errors or spec is None:
        raise BadInputError("\n".join(errors))
    return spec


# --------------------------------------------------------------------------- labels


def check_labels(y: torch.Tensor, n_classes: int | None, source: str) -> torch.Tensor:
    """Check classification labels and return them as int64 of shape (N,).

    Labels must be finite whole numbers ≥ 0 (floats such as ``2.0``, as CSV gives, are
    accepted) and, when ``n_classes`` is known, below it. A trailing axis of size 1 is dropped.

    Args:
        y: Labels, shape (N,) or (N, 1).
        n_classes: Number of classes (model outputs), or None to skip the upper bound.
        source: File / split name for messages.

    Returns:
        int64 labels of shape (N,).

    Raises:
        BadInputError: Naming the first offending row and its value.
    """
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1:
        raise BadInputError(
            f"{source}: targets: expected one integer class label per row, got shape {tuple(y.shape)} "
            "(one-hot or multi-label targets need task: binary)"
        )
    if y.dtype == torch.bool:
        y = y.to(torch.int64)
    if y.is_floating_point():
        check_finite(y, source, "labels")
        frac = y != torch.round(y)
        if bool(frac.any()):
            i = int(frac.nonzero()[0])
            raise BadInputError(
                f"{source}: row {i}: expected an integer class label, got {y[i].item()}"
            )
    elif y.is_complex():
        raise BadInputError(f"{source}: targets: expected integer class labels, got {y.dtype}")
    labels = y.to(torch.int64)
    if len(labels):
        neg = labels < 0
        if bool(neg.any()):
            i = int(neg.nonzero()[0])
            raise BadInputError(
                f"{source}: row {i}: expected a class label ≥ 0, got {labels[i].item()}"
            )
        if n_classes is not None:
            big = labels >= n_classes
            if bool(big.any()):
                i = int(big.nonzero()[0])
                raise BadInputError(
                    f"{source}: row {i}: class label {labels[i].item()} out of range for "
                    f"{n_classes} classes (expected 0..{n_classes - 1})"
                )
    return labels


def _convert_targets(
    y: torch.Tensor, task: Likelihood | None, n_classes: int | None, source: str
) -> torch.Tensor:
    if task == Likelihood.CLASSIFICATION:
        return check_labels(y, n_classes, source)
    if task is None and not (y.is_floating_point() or y.dtype == torch.bool):
        y = y.to(torch.int64)  # no task known: integer targets stay integers
    else:
        y = y.to(torch.float32)
    check_finite(y, source, "targets")
    if task is None:
        return y
    if y.dim() == 1:
        y = y[:, None]  # (N,) -> (N, 1), as laplace-torch takes regression targets
    if task == Likelihood.BINARY:
        outside = (y < 0) | (y > 1)
        if bool(outside.any()):
            i = int(outside.reshape(len(y), -1).any(1).nonzero()[0])
            raise BadInputError(
                f"{source}: row {i}: binary targets must lie in [0, 1], got "
                f"{y[i].reshape(-1)[outside[i].reshape(-1)][0].item()}"
            )
    return y


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
) -> Dataset:
    """Load one split as a Dataset of ``(x, y)`` pairs.

    Args:
        spec: The dataset spec.
        name: Split name.
        task: Likelihood overriding ``spec.task`` (``--likelihood`` beats ``task:``). It decides
            the target conversion; with neither, targets keep integer / float kind as stored.
        require_labels: Raise when a file split has no targets (predict does not need them).

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
        raise BadInputError(f"{at}.path: file not found: {path}")
    ids: list[Any] | None = None
    if split.format in ARRAY_FORMATS:
        if split.format == "npy" and isinstance(split.y, Path) and not split.y.is_file():
            raise BadInputError(f"{at}.y: file not found: {split.y}")
        x, y = read_arrays(
            path,
            split.format,
            x_key=split.x if isinstance(split.x, str) else None,
            y_key=None if split.format == "npy" else (None if split.y is None else str(split.y)),
            y_path=split.y if split.format == "npy" else None,
            source=src,
        )
        x = x.to(torch.float32)
        check_finite(x, src, "features")
    else:
        table = read_table(
            path,
            fmt=split.format,
            x_key=split.x,
            target=None if split.y is None else str(split.y),
            id_key=split.id,
            source=src,
        )
        x = torch.from_numpy(table.x.astype("float32"))
        y = None if table.y is None else torch.from_numpy(table.y)
        ids = table.ids if table.has_ids else None
    if len(x) == 0:
        raise BadInputError(f"{at}: {src}: empty split (no rows)")
    if y is None:
        if require_labels:
            raise BadInputError(f"{at}: {src} has no targets; name them with y: (or target:)")
    else:
        if len(y) != len(x):
            raise BadInputError(f"{at}: {src}: {len(x)} feature rows but {len(y)} targets")
        y = _convert_targets(y, the_task, spec.n_classes, src)
    return ArrayDataset(x, y, ids=ids, source=src)


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
        ds.y = _convert_targets(y, task, spec.n_classes, str(split.path))
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
    """
    bs = batch_size if batch_size is not None else (spec.batch_size or DEFAULT_BATCH_SIZE)
    if not _positive_int(bs):
        raise BadInputError(f"--batch-size: expected a positive integer, got {bs!r}")
    ds = load_split(spec, name, task=task, require_labels=require_labels)
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
