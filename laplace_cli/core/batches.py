"""Batches as users have them: `(x, y)` tuples or dicts (tokenised text), and a model call for each."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from laplace_cli.core.errors import BadInputError

Inputs = Tensor | Mapping[str, Tensor]


def split_batch(
    batch: Any, x_key: str = "input_ids", y_key: str = "labels"
) -> tuple[Inputs, Tensor]:
    """Return (inputs, targets) from a `(x, y)` tuple/list or a dict batch.

    A dict batch keeps every key except `y_key` as model keyword inputs (so attention masks pass
    through); `x_key` must be present.
    """
    if isinstance(batch, Mapping):
        if y_key not in batch:
            raise BadInputError(f"dict batch has no target key {y_key!r}; keys: {sorted(batch)}")
        if x_key not in batch:
            raise BadInputError(f"dict batch has no input key {x_key!r}; keys: {sorted(batch)}")
        inputs = {k: v for k, v in batch.items() if k != y_key}
        return inputs, batch[y_key]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise BadInputError(
        f"a batch must be an (x, y) tuple or a dict with {x_key!r} and {y_key!r}, got {type(batch).__name__}"
    )


def batch_size(x: Inputs) -> int:
    """Number of samples in a batch of inputs."""
    if isinstance(x, Mapping):
        return int(next(iter(x.values())).shape[0])
    return int(x.shape[0])


def to_device(x: Inputs, device: torch.device, dtype: torch.dtype | None = None) -> Inputs:
    """Move inputs to `device`; floating tensors also to `dtype` (integer token ids stay integers)."""

    def move(t: Tensor) -> Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)

    if isinstance(x, Mapping):
        return {k: move(v) for k, v in x.items()}
    return move(x)


def call_model(model: nn.Module, x: Inputs) -> Tensor:
    """`model(**x)` for dict inputs, `model(x)` otherwise; logits are taken from HF-style outputs."""
    out = model(**x) if isinstance(x, Mapping) else model(x)
    if hasattr(out, "logits"):
        out = out.logits
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def as_2d_output(f: Tensor) -> Tensor:
    """Outputs (B,) become (B, 1); (B, C) stay; anything else is refused (classes on the last axis)."""
    if f.ndim == 1:
        return f.unsqueeze(-1)
    if f.ndim != 2:
        raise BadInputError(
            f"model output has shape {tuple(f.shape)}; expected (batch, outputs). "
            "For sequence outputs use the last-layer subset with a feature_reduction"
        )
    return f
