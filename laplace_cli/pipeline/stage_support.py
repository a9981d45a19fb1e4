"""What the stages share: progress wrappers, the model-input check, the data splits.

Nothing here prints or knows about the terminal: long loops take an optional
`progress(iterable, total, description)` wrapper that the CLI fills with a progress bar.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from laplace_cli.core.batches import to_device
from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError, LaplaceCliError, OutOfMemory
from laplace_cli.io.datasets import DatasetSpec, make_loader
from laplace_cli.laplace.approximation import Laplace

Progress = Callable[[Iterable[Any], int | None, str], Iterable[Any]]


def no_progress(
    it: Iterable[Any], total: int | None = None, description: str = ""
) -> Iterable[Any]:
    return it


def len_or_none(obj: Any) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


class ProgressView:
    """A loader seen through `progress`, re-iterable: each pass starts a fresh progress wrapper.

    `progress(loader, ...)` is a one-shot generator, so handing it to code that walks the data
    more than once (lowrank's Krylov passes) would see the data once and then nothing. This
    view calls `progress` again on every `iter()`, keeps `len()`, and passes other attributes
    (`dataset`, `batch_size`, `sampler`) through to the loader.
    """

    def __init__(self, loader: Iterable[Any], progress: Progress, description: str) -> None:
        self.loader = loader
        self._progress = progress
        self._description = description
        self.passes = 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: a pass (and its bar) starts at the first batch asked for, so `iter(view)`
        # alone (Laplace.fit's is-it-an-iterator check) starts nothing.
        self.passes += 1
        label = self._description if self.passes == 1 else f"{self._description} ({self.passes})"
        yield from self._progress(self.loader, len_or_none(self.loader), label)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (copy / unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


def check_model_accepts(la: Laplace, x: Any, source: str) -> None:
    """Raise `BadInputError` (exit 2) when the model cannot run on inputs like `x`.

    Features of the wrong shape for the model (64 flat CSV columns for a CNN that takes
    (1, 8, 8) images, a data spec of another model) would otherwise fail deep inside the
    curvature or predictive code as an internal error (exit 70). One forward pass of the model
    on the first batch tells the two apart before any work starts; the engine's own input
    errors (`LaplaceCliError`, e.g. sequence outputs) keep their class and get `source` in front.

    Args:
        la: The Laplace approximation whose model will run on the inputs.
        x: A batch of inputs (tensor, or dict of tensors for text models), as the loader gives it.
        source: Where the inputs come from, for the message (file, split).
    """
    try:
        la.subset.output(to_device(x, la.device, getattr(la, "model_dtype", la.dtype)))
    except LaplaceCliError as exc:
        raise type(exc)(f"{source}: {exc}") from exc
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        if is_out_of_memory(exc):
            raise  # not the inputs' fault: the callers say what to lower
        shape = (
            {k: tuple(v.shape[1:]) for k, v in x.items()}
            if isinstance(x, Mapping)
            else tuple(x.shape[1:])
        )
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInputError(
            f"{source}: the model does not accept inputs of shape {shape} per row ({first})"
        ) from exc


# --- out of memory ------------------------------------------------------------------------------
OOM_ADVICE = (
    "lower --batch-size, choose a cheaper structure (--structure kron or diag, or --subset "
    "last_layer), or lower --max-memory (the budget the dense Jacobians are chunked to)"
)


def is_out_of_memory(exc: BaseException) -> bool:
    """A real allocation failure, not the memory guard's refusal (exit 2): CUDA's
    `torch.OutOfMemoryError`, Python's / NumPy's `MemoryError`, or the `RuntimeError` that
    torch's CPU allocator raises ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, LaplaceCliError):
        return False
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate" in str(exc)


def free_device_cache() -> None:
    """Give the CUDA caching allocator's free blocks back after an out-of-memory error."""
    if torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.empty_cache()


def out_of_memory(
    step: str, batch_size: int | None, device: Any, exc: BaseException
) -> OutOfMemory:
    """The exit-3 error for an allocation that failed during `step`."""
    kind = "CUDA" if isinstance(exc, torch.OutOfMemoryError) else "host (CPU)"
    facts = [f"device {device}"] if device is not None else []
    if batch_size is not None:
        facts.append(f"batch size {batch_size}")
    where = f" ({', '.join(facts)})" if facts else ""
    return OutOfMemory(f"out of {kind} memory during {step}{where}; {OOM_ADVICE}")


@contextlib.contextmanager
def out_of_memory_is_exit_3(
    step: str, batch_size: int | None, device: Any = None
) -> Iterator[None]:
    """Turn a CUDA / host out-of-memory error inside the block into `OutOfMemory` (exit 3)
    naming `step` and `batch_size`, instead of a traceback (exit 70)."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(exc):
            raise  # the memory guard's own refusal (exit 2), and every other error
        free_device_cache()
        raise out_of_memory(step, batch_size, device, exc) from exc


# --- data ---------------------------------------------------------------------------------------
def resolve_likelihood(flag: str | None, spec: DatasetSpec | None) -> Likelihood:
    """CLI flag over the spec's `task`, classification by default."""
    if flag:
        return Likelihood.parse(flag, "--likelihood")
    if spec is not None and spec.task is not None:
        return Likelihood.parse(spec.task, "task")
    return Likelihood.CLASSIFICATION


def split_loader(
    spec: DatasetSpec,
    split: str,
    likelihood: Likelihood,
    batch_size: int | None = None,
    *,
    any_order: bool = False,
    require_labels: bool = True,
    label_maps: int | None = None,
) -> Any:
    """The split's loader; `any_order=True` (fit, tune, evaluate: results that do not depend on
    the row order) lets text splits batch rows of similar length together (less padding).
    `require_labels=False` (predict, out-of-distribution data) accepts a split without targets.
    `label_maps`: the ignore_index of per-position labels (dense outputs, `dense_labels`)."""
    return make_loader(
        spec,
        split,
        batch_size=batch_size,
        task=likelihood,
        by_length=any_order,
        require_labels=require_labels,
        label_maps=label_maps,
    )


def dense_labels(la: Any, spec: DatasetSpec) -> int | None:
    """`split_loader`'s `label_maps` for a posterior: its ignore_index when it was fitted on
    dense outputs (`output_positions`), else None (one label per row).

    A spec that names another `ignore_index` than the posterior's is refused: its masked
    positions would be scored as a class, or real labels dropped."""
    if getattr(la, "output_positions", None) is None:
        return None
    if spec.ignore_index is not None and spec.ignore_index != la.ignore_index:
        raise BadInputError(
            f"{spec.source}: ignore_index: {spec.ignore_index} differs from the posterior's "
            f"{la.ignore_index} (fitted with it); make them equal, or refit with "
            f"--ignore-index {spec.ignore_index}"
        )
    return int(la.ignore_index)


def likelihood_note(flag: str | None, spec: DatasetSpec, data_path: str | Path) -> str | None:
    """The line saying classification was assumed (no `--likelihood`, no `task:`), else None."""
    if flag or spec.task is not None:
        return None
    return (
        f"likelihood: classification (assumed: {data_path} has no task: and no --likelihood "
        "was given; for real-valued targets add `task: regression` to the spec)"
    )
