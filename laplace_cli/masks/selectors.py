"""Choosing a subnetwork from a short text: a mask and its size, or a file of indices.

`laplace fit --subset subnetwork --subnetwork SELECTOR` and the recipe key `fit.subnetwork`
take the same text:

* `largest_magnitude:N`: the N trainable parameters with the largest |θ|;
* `random:N`: N parameters drawn uniformly without replacement (the fit's seed);
* `largest_variance:N`: the N parameters with the largest marginal variance under a diagonal
  Laplace over all weights, fitted on the same split first (Daxberger et al. 2021; one extra
  pass over the data);
* `last_layer` / `last_layer:MODULE`: every trainable entry of the last `nn.Linear` (or of
  MODULE);
* `param:NAME[,NAME...]`, `module:NAME[,NAME...]`: every trainable entry of the named
  parameter tensors / modules;
* a file `*.npy` / `*.pt` / `*.pth` / `*.txt`: integer indices into the flattened trainable
  parameters (`model.parameters()` order, each tensor row-major; the index space of
  `laplace_cli.subsets.subnetwork`), or a boolean mask over all of them. Files are read without
  running code (`numpy.load(allow_pickle=False)`, `torch.load(weights_only=True)`).

`parse_subnetwork` checks the text alone (before any model is loaded); `select_subnetwork`
turns it into sorted int64 indices for a model. Every mistake is a `BadInputError` (exit 2).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from laplace_cli.core.errors import BadInputError
from laplace_cli.core.paths import user_path
from laplace_cli.masks.variance import largest_variance_indices

if TYPE_CHECKING:  # pragma: no cover
    from laplace_cli.laplace.approximation import Laplace

__all__ = [
    "INDEX_FILE_SUFFIXES",
    "MASKS",
    "SubnetworkSelector",
    "load_index_file",
    "parse_subnetwork",
    "select_subnetwork",
    "selector_choices",
]

#: Mask name -> what it selects (shown in errors and help).
MASKS: dict[str, str] = {
    "largest_magnitude": "largest_magnitude:N, the N parameters with the largest |value|",
    "random": "random:N, N parameters drawn at random (seeded by the fit's seed)",
    "largest_variance": "largest_variance:N, the N parameters with the largest variance under "
    "a diagonal Laplace over all weights (one extra pass over the data)",
    "last_layer": "last_layer[:MODULE], every weight of the last nn.Linear (or of MODULE)",
    "param": "param:NAME[,NAME...], every entry of the named parameter tensors",
    "module": "module:NAME[,NAME...], every trainable entry of the named modules",
}
_SIZED = ("largest_magnitude", "random", "largest_variance")
INDEX_FILE_SUFFIXES = (".npy", ".pt", ".pth", ".txt")


def selector_choices() -> str:
    """The masks and file types a selector may name, for error messages."""
    return (
        "masks: "
        + "; ".join(MASKS.values())
        + f"; or a file of indices ({', '.join(INDEX_FILE_SUFFIXES)})"
    )


@dataclass(frozen=True)
class SubnetworkSelector:
    """A parsed selector: a mask with its size or names, or an index file."""

    text: str
    mask: str | None = None  # None: `path` is an index file
    size: int | None = None
    names: tuple[str, ...] = ()
    path: Path | None = None

    @property
    def needs_diag_fit(self) -> bool:
        """Whether selecting needs a diagonal Laplace over all weights fitted first."""
        return self.mask == "largest_variance"


def parse_subnetwork(
    text: str, base_dir: str | Path | None = None, where: str = "--subnetwork"
) -> SubnetworkSelector:
    """Check a selector's syntax (and that an index file exists), before any model is loaded.

    Args:
        text: `MASK:ARG` or a path to an index file.
        base_dir: Folder a relative index file path is resolved against (a recipe's folder).
        where: The option or key named in errors.
    """
    text = str(text).strip()
    if not text:
        raise BadInputError(f"{where}: empty; {selector_choices()}")
    if text.lower().endswith(INDEX_FILE_SUFFIXES):
        path = user_path(text)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise BadInputError(f"{where}: index file {str(path)!r} not found")
        return SubnetworkSelector(text, path=path)
    name, sep, arg = text.partition(":")
    if name not in MASKS:
        hint = ""
        if user_path(text).exists():
            hint = f" ({text!r} is a file, but index files must end in one of "
            hint += f"{', '.join(INDEX_FILE_SUFFIXES)})"
        raise BadInputError(f"{where}: unknown mask {name!r}{hint}; {selector_choices()}")
    if name in _SIZED:
        if not sep or not re.fullmatch(r"[+-]?\d+", arg.strip()):
            raise BadInputError(
                f"{where}: {name} needs a size, the number of parameters to keep, e.g. "
                f"{name}:128; got {text!r}"
            )
        size = int(arg)
        if size <= 0:
            raise BadInputError(f"{where}: the size must be a positive integer, got {size}")
        return SubnetworkSelector(text, mask=name, size=size)
    names = tuple(n.strip() for n in arg.split(",") if n.strip()) if sep else ()
    if name in ("param", "module") and not names:
        raise BadInputError(
            f"{where}: {name} needs names, e.g. {name}:{'0.weight' if name == 'param' else '0'}"
        )
    if name == "last_layer" and len(names) > 1:
        raise BadInputError(f"{where}: last_layer takes one module name, got {arg!r}")
    return SubnetworkSelector(text, mask=name, names=names)


def _n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def select_subnetwork(
    selector: SubnetworkSelector,
    model: nn.Module,
    *,
    seed: int = 0,
    diag_laplace: Callable[[], Laplace] | None = None,
    where: str = "--subnetwork",
) -> Tensor:
    """The sorted int64 indices the selector picks in `model`'s flattened trainable parameters.

    Args:
        selector: From `parse_subnetwork`.
        model: The model the posterior will cover.
        seed: Seeds `random:N`.
        diag_laplace: Returns a fitted diagonal Laplace over all weights (`largest_variance`).
        where: The option or key named in errors.
    """
    from laplace_cli.subsets import subnetwork as sub

    total = _n_trainable(model)
    if total == 0:
        raise BadInputError("the model has no trainable parameters (all requires_grad=False)")
    if selector.path is not None:
        return load_index_file(selector.path, total, where)
    mask = selector.mask
    if selector.size is not None and selector.size > total:
        raise BadInputError(
            f"{where} {selector.text}: the size {selector.size:,} is more than the model's "
            f"{total:,} trainable parameters (use --subset all for every parameter)"
        )
    try:
        if mask == "largest_magnitude":
            return sub.largest_magnitude_indices(model, selector.size)
        if mask == "random":
            generator = torch.Generator().manual_seed(int(seed))
            return sub.random_indices(model, selector.size, generator)
        if mask == "largest_variance":
            if diag_laplace is None:
                raise BadInputError(f"{where}: largest_variance needs data to fit on")
            return largest_variance_indices(diag_laplace(), selector.size)
        if mask == "param":
            return sub.indices_by_param_name(model, list(selector.names))
        if mask == "module":
            return sub.indices_by_module_name(model, list(selector.names))
        if mask == "last_layer":
            if selector.names:
                return sub.indices_by_module_name(model, selector.names[0])
            from laplace_cli.subsets.last_layer import LastLayer

            return sub.indices_by_module_name(model, LastLayer(model).last_layer_name)
    except BadInputError as exc:
        raise BadInputError(f"{where} {selector.text}: {exc}") from exc
    raise AssertionError(f"unhandled mask {mask!r}")  # parse_subnetwork admits only MASKS


def _read_index_file(path: Path, where: str) -> Any:
    """The raw contents (array, tensor or list) of an index file, read without running code."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            import numpy as np

            return torch.from_numpy(np.load(path, allow_pickle=False))
        if suffix in (".pt", ".pth"):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # numpy / torch raise many kinds for a bad or unsafe file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInputError(
            f"{where}: cannot read {path} as {suffix} indices ({first}); save a 1-D integer "
            "array (numpy.save) or tensor (torch.save)"
        ) from exc
    values = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for line_no, line in enumerate(text.splitlines(), 1):
        for token in re.split(r"[\s,]+", line.split("#", 1)[0].strip()):
            if not token:
                continue
            if not re.fullmatch(r"[+-]?\d+", token):
                raise BadInputError(
                    f"{where}: {path}: line {line_no}: {token!r} is not an integer index"
                )
            values.append(int(token))
    return torch.tensor(values, dtype=torch.int64)


def load_index_file(path: str | Path, total: int, where: str = "--subnetwork") -> Tensor:
    """Sorted int64 indices from an index file, checked against `total` trainable parameters.

    A boolean array of length `total` is a mask (its True entries are the indices).
    """
    path = Path(path)
    raw = _read_index_file(path, where)
    if isinstance(raw, (list, tuple)):
        try:
            raw = torch.as_tensor(raw)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise BadInputError(f"{where}: {path}: expected a list of integers ({exc})") from exc
    if not isinstance(raw, Tensor):
        raise BadInputError(
            f"{where}: {path}: expected a 1-D integer tensor or list, got {type(raw).__name__}"
        )
    if raw.ndim != 1:
        raise BadInputError(
            f"{where}: {path}: expected a 1-D list of indices, got shape {tuple(raw.shape)}"
        )
    if raw.dtype == torch.bool:
        if raw.numel() != total:
            raise BadInputError(
                f"{where}: {path}: a boolean mask must have one entry per trainable parameter "
                f"({total:,}), got {raw.numel():,}"
            )
        raw = raw.nonzero().reshape(-1)
    elif raw.is_floating_point() or raw.is_complex():
        raise BadInputError(
            f"{where}: {path}: indices must be integers, got dtype {raw.dtype}; save them as "
            "an integer array (e.g. numpy int64)"
        )
    idx = raw.to(torch.int64)
    if idx.numel() == 0:
        raise BadInputError(f"{where}: {path}: no indices (the subnetwork would be empty)")
    bad = idx[(idx < 0) | (idx >= total)]
    if bad.numel():
        raise BadInputError(
            f"{where}: {path}: indices must lie in [0, {total}) (the model's trainable "
            f"parameters), got {bad.numel():,} outside, e.g. {int(bad[0])}"
        )
    idx = torch.sort(idx).values
    repeated = idx[1:][idx[1:] == idx[:-1]]
    if repeated.numel():
        shown = ", ".join(str(int(i)) for i in torch.unique(repeated)[:5])
        raise BadInputError(f"{where}: {path}: indices repeat ({shown})")
    return idx
