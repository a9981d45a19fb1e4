"""Array data files (``.npz``, ``.npy``, ``.pt``, ``.safetensors``, IDX): read whole, or by row
slices for ``.npy`` (memory-mapped) and ``.safetensors`` where only features are streamed.

Split out of `laplace_cli.io.tabular`, which re-exports `read_arrays`.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.data_formats import did_you_mean


def _to_tensor(value: Any, source: str, key: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value
    else:
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise BadInputError(f"{source}: {key}: expected a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex() or not (t.is_floating_point() or t.dtype == torch.bool or is_int(t)):
        raise BadInputError(f"{source}: {key}: expected a numeric array, got {t.dtype}")
    if t.dim() == 0:
        raise BadInputError(
            f"{source}: {key}: expected an array with one row per example, got a scalar"
        )
    return t


def is_int(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _pick(
    mapping: dict[str, Any], key: str | None, default: str, source: str, what: str, required: bool
) -> tuple[Any, str | None]:
    """mapping[key]; the default key is optional unless ``required``."""
    name = key if key is not None else default
    if name in mapping:
        return mapping[name], name
    if key is None and not required:
        return None, None
    raise BadInputError(
        f"{source}: no {what} key {name!r}; keys: {', '.join(sorted(mapping)) or '(none)'}"
        f"{did_you_mean(name, mapping)}"
    )


def safe_torch_load(path: Path, source: str) -> Any:
    try:
        # mmap keeps a streamed input from being read whole; only zip-format files support it.
        mmap = zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise BadInputError(
            f"{source}: holds pickled objects, not only tensors; data files are read with "
            "weights_only=True and never run code: save tensors, a dict of tensors or an (x, y) "
            "tuple of tensors"
        ) from None
    except Exception as err:
        raise BadInputError(
            f"{source}: unreadable .pt file ({type(err).__name__}: {err})"
        ) from None


def read_arrays(
    path: str | Path,
    fmt: str,
    x_key: str | None = None,
    y_key: str | None = None,
    *,
    y_path: str | Path | None = None,
    source: str | None = None,
    rows: tuple[int | None, int | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read features (and targets) from an array file.

    Args:
        path: The file.
        fmt: ``npz``, ``npy``, ``pt``, ``safetensors`` or ``idx`` (plain or ``.gz``).
        x_key: Key of the features (default ``x``). Unused for ``npy``.
        y_key: Key of the targets; default ``y`` when present, else no targets.
        y_path: For ``npy`` / ``idx`` only: a second file of the same format holding the
            targets (IDX images and labels come as two files).
        source: Name for messages (default: the path).
        rows: For ``idx`` only: ``(start, stop)`` rows to read (the others are not kept in
            memory); other formats are read whole (the caller selects rows).

    Returns:
        ``(x, y)`` as stored (dtype unchanged); ``y`` is None when there are no targets.
        A ``.pt`` file may hold a tensor (features), a dict of tensors, or an ``(x, y)`` tuple.
    """
    src = source or str(path)
    p = Path(path)
    # Each reader returns (x, x's key, y, y's key); the keys only name the arrays in messages.
    if fmt == "npz":
        x, xk, y, yk = _read_npz(p, src, x_key, y_key)
    elif fmt == "npy":
        x, xk = load_npy(p, src), "x"
        y, yk = (None if y_path is None else load_npy(Path(y_path), str(y_path))), "y"
    elif fmt == "idx":
        x, xk, y, yk = _read_idx_pair(p, src, x_key, y_path, rows)
    elif fmt == "pt":
        x, xk, y, yk = _read_pt(p, src, x_key, y_key)
    elif fmt == "safetensors":
        x, xk, y, yk = _read_safetensors(p, src, x_key, y_key)
    else:
        raise BadInputError(f"{src}: {fmt!r} is not an array format")
    xt = _to_tensor(x, src, xk or "x")
    yt = None if y is None else _to_tensor(y, src if y_path is None else str(y_path), yk or "y")
    return xt, yt


_Read = tuple[Any, str | None, Any, str | None]  # (x, x's key, y, y's key)


def _read_npz(p: Path, src: str, x_key: str | None, y_key: str | None) -> _Read:
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as err:  # object arrays need pickle, which is refused
        raise BadInputError(f"{src}: unreadable .npz ({err})") from None
    except Exception as err:
        raise BadInputError(f"{src}: unreadable .npz ({type(err).__name__}: {err})") from None
    x, xk = _pick(arrays, x_key, "x", src, "feature", required=True)
    y, yk = _pick(arrays, y_key, "y", src, "target", required=False)
    return x, xk, y, yk


def _read_idx_pair(
    p: Path,
    src: str,
    x_key: str | None,
    y_path: str | Path | None,
    rows: tuple[int | None, int | None] | None,
) -> _Read:
    """Features from one IDX file, targets (optional) from a second: IDX has no keys."""
    from laplace_cli.io.idx_files import read_idx

    if x_key is not None:
        raise BadInputError(f"{src}: an IDX file holds one array (the features); it has no keys")
    from laplace_cli.io.idx_files import read_idx_header

    if y_path is not None and rows is not None:
        # With `rows`, both reads stop early: compare the declared counts instead.
        n_x, n_y = read_idx_header(p, src)[0][0], read_idx_header(y_path)[0][0]
        if n_x != n_y:
            raise BadInputError(f"{src}: {n_x} feature rows but {n_y} targets in {y_path}")
    x = read_idx(p, src, rows)
    y = None if y_path is None else read_idx(Path(y_path), str(y_path), rows)
    return x, "x", y, "y"


def _read_pt(p: Path, src: str, x_key: str | None, y_key: str | None) -> _Read:
    """A tensor (features only), an (x, y) pair, or a dict of tensors read by key."""
    obj = safe_torch_load(p, src)
    if isinstance(obj, torch.Tensor):
        if y_key is not None:
            raise BadInputError(f"{src}: holds a single tensor, so it has no key {y_key!r}")
        return obj, "x", None, None
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], "[0]", obj[1], "[1]"
    if isinstance(obj, dict):
        x, xk = _pick(obj, x_key, "x", src, "feature", required=True)
        y, yk = _pick(obj, y_key, "y", src, "target", required=False)
        return x, xk, y, yk
    raise BadInputError(
        f"{src}: expected a tensor, a dict of tensors or an (x, y) tuple, got {type(obj).__name__}"
    )


def _read_safetensors(p: Path, src: str, x_key: str | None, y_key: str | None) -> _Read:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        arrays = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise BadInputError(f"{src}: unreadable safetensors file ({err})") from None
    x, xk = _pick(arrays, x_key, "x", src, "feature", required=True)
    y, yk = _pick(arrays, y_key, "y", src, "target", required=False)
    return x, xk, y, yk


def load_npy(p: Path, src: str, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as err:
        raise BadInputError(f"{src}: unreadable .npy ({err})") from None
    except Exception as err:
        raise BadInputError(f"{src}: unreadable .npy ({type(err).__name__}: {err})") from None


class safetensors_slicer:  # noqa: N801 - behaves like an array, named like a helper
    """Row slices of one safetensors tensor without reading the rest of the file."""

    def __init__(self, p: Path, key: str, source: str) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            self._fh = safe_open(str(p), framework="pt", device="cpu")
            keys = list(self._fh.keys())
        except (SafetensorError, OSError, ValueError) as err:
            raise BadInputError(f"{source}: unreadable safetensors file ({err})") from None
        if key not in keys:
            raise BadInputError(
                f"{source}: no feature key {key!r}; keys: {', '.join(sorted(keys))}"
                f"{did_you_mean(key, keys)}"
            )
        self._slice = self._fh.get_slice(key)
        shape = self._slice.get_shape()
        if not shape:
            raise BadInputError(f"{source}: {key}: expected an array with one row per example")
        self._n = int(shape[0])

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: slice) -> torch.Tensor:
        return self._slice[index]
