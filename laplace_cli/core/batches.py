"""Batches as users have them: `(x, y)` tuples or dicts (tokenised text), and a model call for each."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from laplace_cli.core.errors import BadInputError, MissingKeyError

Inputs = Tensor | Mapping[str, Tensor]

#: Extra keyword arguments of every model call made while `model_kwargs(...)` is active
#: (`la(x, **model_kwargs)`); a context variable, so concurrent predictions do not mix them.
_MODEL_KWARGS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "laplace_model_kwargs", default=None
)


@contextlib.contextmanager
def model_kwargs(kwargs: Mapping[str, Any]) -> Iterator[None]:
    """Pass `kwargs` to every model call inside the block (they are not split per row)."""
    token = _MODEL_KWARGS.set(dict(kwargs))
    try:
        yield
    finally:
        _MODEL_KWARGS.reset(token)


def current_model_kwargs() -> dict[str, Any]:
    """The keyword arguments set by the innermost `model_kwargs` block ({} outside one)."""
    return _MODEL_KWARGS.get() or {}


#: True inside `keep_graph()`: predictions stay differentiable in the inputs (`enable_backprop`).
_KEEP_GRAPH: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "laplace_keep_graph", default=False
)


@contextlib.contextmanager
def keep_graph(on: bool = True) -> Iterator[None]:
    """Within the block the subsets neither detach nor disable gradients (`enable_backprop`)."""
    token = _KEEP_GRAPH.set(bool(on))
    try:
        yield
    finally:
        _KEEP_GRAPH.reset(token)


def keeping_graph() -> bool:
    """Whether the innermost `keep_graph` block is on."""
    return _KEEP_GRAPH.get()


def grad_mode() -> contextlib.AbstractContextManager:
    """`torch.no_grad()` for a prediction, `torch.enable_grad()` inside `keep_graph()`."""
    return torch.enable_grad() if keeping_graph() else torch.no_grad()


def detach(t: Tensor) -> Tensor:
    """`t.detach()`, except inside `keep_graph()`."""
    return t if keeping_graph() else t.detach()


def split_batch(
    batch: Any, x_key: str = "input_ids", y_key: str = "labels"
) -> tuple[Inputs, Tensor]:
    """Return (inputs, targets) from a `(x, y)` tuple/list or a dict batch.

    A dict batch keeps every key except `y_key` as model keyword inputs (so attention masks pass
    through); `x_key` must be present.
    """
    if isinstance(batch, Mapping):
        if y_key not in batch:
            raise MissingKeyError(f"dict batch has no target key {y_key!r}; keys: {sorted(batch)}")
        if x_key not in batch:
            raise MissingKeyError(f"dict batch has no input key {x_key!r}; keys: {sorted(batch)}")
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


def _forward_signature(model: nn.Module) -> inspect.Signature | None:
    """The signature of `model.forward`, looking through wrappers that take only `*args`.

    A PEFT `PeftModel` (no task type) and its `LoraModel` forward `*args, **kwargs` to the model
    they wrap (`get_base_model()`); their own signature says nothing about the batch.
    """
    seen = 0
    while seen < 4:
        try:
            sig = inspect.signature(model.forward)
        except (TypeError, ValueError):  # TorchScript and other compiled modules
            return None
        kinds = {p.kind for p in sig.parameters.values()}
        if kinds <= {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}:
            inner = model.get_base_model() if hasattr(model, "get_base_model") else None
            if not isinstance(inner, nn.Module) or inner is model:
                return sig
            model, seen = inner, seen + 1
            continue
        return sig
    return None


def passes_mapping(model: nn.Module, x: Mapping[str, Any]) -> bool:
    """Whether a dict batch goes to the model whole, `model(batch)`, or as `model(**batch)`.

    The one rule for dict batches (every model call of the engine goes through
    `model_call_args`): the mapping is passed whole (laplace-torch's convention) when the
    model's `forward` takes exactly one positional parameter besides `self` and that
    parameter's name is not a key of the batch (`forward(self, data)`); otherwise the keys are
    keyword arguments (Hugging Face style, `forward(self, input_ids, attention_mask=None)`).
    Wrappers that only take `*args, **kwargs` (PEFT) are looked through; a forward whose
    signature cannot be read (TorchScript) gets keyword arguments.
    """
    sig = _forward_signature(model)
    if sig is None:
        return False
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) == 1 and positional[0].name not in x


def model_call_args(model: nn.Module, x: Inputs) -> tuple[tuple, dict[str, Any]]:
    """(args, kwargs) of the model call on inputs `x`: see `passes_mapping` for dict batches."""
    if isinstance(x, Mapping):
        return ((dict(x),), {}) if passes_mapping(model, x) else ((), dict(x))
    return (x,), {}


def call_model(model: nn.Module, x: Inputs) -> Tensor:
    """`model(x)`, or for a dict batch `model(batch)` / `model(**batch)` (see `passes_mapping`);
    logits are taken from HF-style outputs."""
    args, kwargs = model_call_args(model, x)
    out = model(*args, **kwargs, **current_model_kwargs())
    if hasattr(out, "logits"):
        out = out.logits
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


#: Set inside `flat_outputs()`: dense outputs (B, C, *S) are flattened to (B, C·|S|) and
#: their (C, *S) recorded in the list.
_FLAT_OUTPUTS: contextvars.ContextVar[list[tuple[int, ...]] | None] = contextvars.ContextVar(
    "laplace_flat_outputs", default=None
)


@contextlib.contextmanager
def flat_outputs() -> Iterator[list[tuple[int, ...]]]:
    """Within the block `as_2d_output` flattens dense outputs (B, C, *S) to (B, C·|S|).

    Row-major, so entry c·|S| + s is class c at position s, the layout of the per-sample
    Jacobians' `out.reshape(-1)`. Yields a list that receives the (C, *S) of each flattened
    output. `Laplace(output_positions=...)` turns it on for its subset (docs/dense-outputs.md).
    """
    shapes: list[tuple[int, ...]] = []
    token = _FLAT_OUTPUTS.set(shapes)
    try:
        yield shapes
    finally:
        _FLAT_OUTPUTS.reset(token)


def as_2d_output(f: Tensor) -> Tensor:
    """Outputs (B,) become (B, 1); (B, C) stay; (B, C, *S) are flattened inside `flat_outputs()`
    and refused elsewhere (classes on the last axis)."""
    if f.ndim == 1:
        return f.unsqueeze(-1)
    shapes = _FLAT_OUTPUTS.get()
    if f.ndim > 2 and shapes is not None:
        shapes.append(tuple(f.shape[1:]))
        return f.flatten(1)
    if f.ndim != 2:
        raise BadInputError(
            f"model output has shape {tuple(f.shape)}; expected (batch, outputs). "
            "For sequence outputs use the last-layer subset with a feature_reduction; for "
            "per-position outputs (B, C, *S) Laplace(..., output_positions='independent' or "
            "'mean') in Python (docs/dense-outputs.md)"
        )
    return f
