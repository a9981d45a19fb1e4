"""Fits and predictions over several processes with `torch.distributed` (launched by torchrun).

    torchrun --nproc-per-node 2 -m laplace_cli fit model.pt2 --data data.yaml -o post.st

Fitting is a sum over data (docs/design.md §5): with the training split cut into disjoint shards
D = D_0 ∪ … ∪ D_{W-1}, every raw quantity of the fit adds up over the shards,

    H = Σ_r H_r,   K-FAC B = Σ_r B_r,  Σaaᵀ = Σ_r Σaaᵀ_r,  N = Σ_r N_r,  loss = Σ_r loss_r,

so each process (rank) fits its shard, the raw sums are all-reduced (`Laplace.fit(reduce=...)`)
just before the structure is decomposed (K-FAC divides Σaaᵀ by the *global* N only then), and
every rank ends with the posterior of the whole split; rank 0 writes the file.

Shards are contiguous row ranges of sizes differing by at most one, *without* padding:
`torch.utils.data.DistributedSampler` repeats samples to make the shards equal, which would
count those samples twice in the curvature. Contiguous shards also keep predictions in input
order: rank r's rows follow rank r−1's.

A run is distributed when the environment says so (`WORLD_SIZE` > 1 with `RANK`, as torchrun
sets it); the process group is created lazily on first use, gloo on CPU and NCCL on CUDA
(each rank on `cuda:LOCAL_RANK`).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, Subset

from laplace_cli.core.errors import BadInputError

__all__ = [
    "DistContext",
    "all_reduce_sum",
    "broadcast_from_main",
    "context",
    "gather_to_main",
    "gather_rounds",
    "round_robin",
    "shard_loader",
    "shard_range",
]


@dataclass(frozen=True)
class DistContext:
    """This process's place in a distributed run."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()


_CONTEXT: DistContext | None = None


def env_world_size() -> int:
    """`WORLD_SIZE` from the environment (1 when unset or not a positive integer)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def context(device: str | torch.device | None = None) -> DistContext | None:
    """The distributed context of this process, or None when it runs alone.

    On the first call under torchrun (`WORLD_SIZE` > 1) the default process group is created:
    NCCL when `device` is CUDA (or "auto" with CUDA available), gloo otherwise. Later calls
    return the same context.

    Args:
        device: The device the run uses ("cpu", "cuda", "auto", a torch.device, or None).
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    if env_world_size() <= 1:
        return None
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as exc:
        raise BadInputError(
            "WORLD_SIZE > 1 but RANK is missing or not an integer; launch with torchrun"
        ) from exc
    dev = str(device or "auto")
    cuda = dev.startswith("cuda") or (dev == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)  # "cuda" now means cuda:LOCAL_RANK
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        atexit.register(_shutdown)
    _CONTEXT = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    return _CONTEXT


def _shutdown() -> None:
    """Leave the process group together at exit.

    A rank that tears its group down while a peer still talks to it can die in C++
    ("terminate called without an active exception", SIGABRT) on a loaded machine; a bounded
    barrier first lets every rank reach this point. A peer that is gone (it failed) makes the
    barrier fail or time out: then tear down anyway, the run has already failed.
    """
    if not dist.is_initialized():
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        else:
            dist.barrier()
    except Exception:  # noqa: BLE001 - best effort at exit; the exit code is already decided
        pass
    dist.destroy_process_group()


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of rank `rank`: contiguous, sizes ⌊n/W⌋ or ⌈n/W⌉, no padding.

    The first n mod W ranks get one row more; the ranges tile [0, n) in rank order.
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_loader(loader: DataLoader, ctx: DistContext | None) -> DataLoader:
    """The same DataLoader over this rank's contiguous shard of its dataset (no padding).

    Batch size, collation and workers are kept; the loader must not shuffle (a fit or a
    prediction over a shard must see the rows in a fixed order to be resumable and ordered).
    """
    if ctx is None:
        return loader
    ds = loader.dataset
    if isinstance(ds, IterableDataset):
        raise BadInputError(
            "a distributed run needs a map-style dataset (rows by index) to cut into shards; "
            "this split is an iterable (streamed) dataset"
        )
    start, stop = shard_range(len(ds), ctx.rank, ctx.world_size)
    return DataLoader(
        Subset(ds, range(start, stop)),
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


def _comm_device(ctx: DistContext) -> torch.device:
    return torch.device("cuda", ctx.local_rank) if ctx.backend == "nccl" else torch.device("cpu")


def all_reduce_sum(tensors: Sequence[Tensor], ctx: DistContext | None = None) -> None:
    """Sum each tensor across all ranks, in place (a no-op outside a distributed run).

    Tensors of one dtype are flattened into one buffer, so a fit costs one collective per
    dtype (curvature and loss in the model's dtype, counts in int64), whatever the number of
    layers. The sum order across ranks is the backend's; in float64 the result matches one
    process to rounding (≈1e-15 relative).
    """
    ctx = ctx if ctx is not None else _CONTEXT
    if ctx is None or not tensors:
        return
    device = _comm_device(ctx)
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for dtype in sorted(by_dtype, key=str):  # the same order on every rank
        group = by_dtype[dtype]
        flat = torch.cat([t.reshape(-1).to(device) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset : offset + n].reshape(t.shape).to(t.device))
            offset += n


def all_gather_ints(value: int, ctx: DistContext | None = None) -> list[int]:
    """One integer per rank, in rank order, on every rank ([value] when running alone)."""
    ctx = ctx if ctx is not None else _CONTEXT
    if ctx is None:
        return [int(value)]
    device = _comm_device(ctx)
    mine = torch.tensor([int(value)], dtype=torch.int64, device=device)
    out = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(out, mine)
    return [int(t) for t in out]


def gather_to_main(obj: Any, ctx: DistContext | None = None) -> list[Any] | None:
    """Every rank's `obj` (picklable; tensors moved to CPU first) on rank 0, in rank order.

    Returns the list on rank 0 and None on the others; `[obj]` when running alone.
    """
    ctx = ctx if ctx is not None else _CONTEXT
    if ctx is None:
        return [obj]
    if ctx.backend == "nccl":
        # NCCL object collectives pickle through the current CUDA device; keep it explicit.
        torch.cuda.set_device(ctx.local_rank)
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any, ctx: DistContext | None = None) -> Any:
    """Rank 0's `obj` (picklable; keep tensors on the CPU) on every rank; `obj` when alone.

    For a result only rank 0 computes (a tuned prior precision) that every rank then needs.
    """
    ctx = ctx if ctx is not None else _CONTEXT
    if ctx is None:
        return obj
    if ctx.backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def round_robin(chunks: Iterable[Any], ctx: DistContext | None) -> Iterator[Any]:
    """This rank's chunks of a stream: chunk i goes to rank i mod W (all chunks when alone).

    Every rank reads the whole stream (cheap next to the predictive) and keeps its own chunks,
    so streamed inputs of unknown length need no index.
    """
    for i, chunk in enumerate(chunks):
        if ctx is None or i % ctx.world_size == ctx.rank:
            yield chunk


def gather_rounds(items: Iterable[Any], ctx: DistContext | None) -> Iterator[Any]:
    """Every rank's items on rank 0, round by round: rank 0's k-th, rank 1's k-th, ...

    With chunks dealt by `round_robin`, this is the input order. Each round is one
    `all_gather_object`, so memory holds one item per rank and rank 0 can stream what it gets.
    This is a collective: every rank must iterate it to the end (the others get nothing).
    When running alone it yields `items` unchanged.
    """
    if ctx is None:
        yield from items
        return
    if ctx.backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    it = iter(items)
    alive = True
    while True:
        mine = next(it, _END) if alive else _END
        alive = mine is not _END
        got: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(got, (alive, mine if alive else None))
        if not any(a for a, _ in got):
            return
        if ctx.is_main:
            for a, obj in got:
                if a:
                    yield obj


_END = object()
