"""laplace-torch 0.3's way of calling `optimize_prior_precision` (positional order, `verbose`,
`progress_bar`, `log_prior_prec_base`) turned into this project's keywords; `tuning.api`
re-exports it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from laplace_cli.core.enums import TuneMethod
from laplace_cli.core.errors import BadInputError

__all__ = ["LAPLACE_TORCH_ORDER", "laplace_torch_arguments"]


#: laplace-torch 0.3's positional order of `optimize_prior_precision`'s arguments.
LAPLACE_TORCH_ORDER = (
    "pred_type",
    "method",
    "n_steps",
    "lr",
    "init_prior_prec",
    "prior_structure",
    "val_loader",
    "loss",
    "log_prior_prec_min",
    "log_prior_prec_max",
    "grid_size",
    "link_approx",
    "n_samples",
    "verbose",
    "progress_bar",
    "log_prior_prec_base",
)


def laplace_torch_arguments(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keywords of `optimize_prior_precision` from a call written for laplace-torch 0.3.

    Positional arguments take laplace-torch's order (`pred_type` first), except that a first
    argument "marglik" / "gridsearch" is the method (this project's earlier signature, kept).
    `verbose` prints the result; `progress_bar` shows a tqdm bar over the marglik steps (when
    tqdm is installed); `log_prior_prec_base` is the base of the grid (default 10). The other
    keywords pass through (see `optimize_prior_precision`).
    """
    kwargs = dict(kwargs)
    args = tuple(args)
    if args and isinstance(args[0], str) and args[0] in {m.value for m in TuneMethod}:
        kwargs.setdefault("method", args[0])
        args = args[1:]
        order = LAPLACE_TORCH_ORDER[2:]
    else:
        order = LAPLACE_TORCH_ORDER
    if len(args) > len(order):
        raise BadInputError(
            f"optimize_prior_precision takes at most {len(order)} positional arguments "
            f"({', '.join(order)}), got {len(args)}"
        )
    for name, value in zip(order, args):
        if name in kwargs:
            raise BadInputError(f"optimize_prior_precision got {name!r} twice")
        kwargs[name] = value
    verbose = bool(kwargs.pop("verbose", False))
    progress_bar = bool(kwargs.pop("progress_bar", False))
    base = float(kwargs.pop("log_prior_prec_base", 10.0))
    if base != 10.0 and kwargs.get("grid") is None:
        import torch

        lo = float(kwargs.pop("log_prior_prec_min", -4.0))
        hi = float(kwargs.pop("log_prior_prec_max", 4.0))
        size = int(kwargs.pop("grid_size", 100))
        kwargs["grid"] = torch.logspace(lo, hi, size, base=base, dtype=torch.float64)
    if progress_bar and "progress" not in kwargs:
        kwargs["progress"] = _tqdm_progress
    if verbose:
        kwargs["_verbose"] = True
    return kwargs


def _tqdm_progress(it: Iterable[Any], total: int | None = None, description: str = "") -> Any:
    try:
        import tqdm
    except ImportError:  # the bar is cosmetic: without tqdm the tuning runs silently
        return it
    return tqdm.tqdm(it, total=total, desc=description)
