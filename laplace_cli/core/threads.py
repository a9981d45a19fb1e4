"""How many CPU threads torch uses: the CPUs this process may really use, capped.

torch's own default is the machine's physical core count, which is wrong in two common cases:
a container limited by a CPU quota (cgroup `cpu.max`) or an affinity mask sees the whole host,
and a shared machine whose cores are busy. Either way OpenMP threads end up waiting for each
other on cores they do not get: `laplace predict` ran ~10x slower with torch's default than
with one thread on a shared 2-core machine. `default_threads()` counts what this process may
use; `set_threads()` applies a count (the CLI's `--threads`).

Importing this module does not import torch (the CLI's `--help` must stay fast).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = [
    "MAX_DEFAULT_THREADS",
    "available_cpus",
    "default_threads",
    "prefer_passive_wait",
    "set_threads",
]

MAX_DEFAULT_THREADS = 8
"""Cap of the default (not of an explicit `--threads`). The work here is many small matrix
products per batch (Jacobians of C outputs, Kronecker factors of one layer), whose intra-op
speed-up flattens after a few threads while every parallel region's barrier costs more with
each thread, and much more when a thread's core is taken by another process. A bigger
machine is better used by several processes (torchrun) or an explicit `--threads`."""

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cgroup_cpu_limit(
    v2: Path = _CGROUP_V2, v1_quota: Path = _CGROUP_V1_QUOTA, v1_period: Path = _CGROUP_V1_PERIOD
) -> int | None:
    """CPUs allowed by the cgroup's CPU quota, rounded up; None when there is no quota."""
    try:
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period or "100000")))
        return None
    except (OSError, ValueError):
        pass
    try:
        q, p = int(v1_quota.read_text()), int(v1_period.read_text())
        return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, limited by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(cpus, limit) if limit is not None else cpus)


def _env_int(name: str) -> int | None:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def default_threads() -> int:
    """The thread count used when none is given.

    `OMP_NUM_THREADS` when set (the user's or torchrun's explicit choice); else the available
    CPUs, shared among the processes torchrun started on this node (`LOCAL_WORLD_SIZE`), capped
    at `MAX_DEFAULT_THREADS`.
    """
    explicit = _env_int("OMP_NUM_THREADS")
    if explicit is not None:
        return explicit
    per_process = available_cpus() // (_env_int("LOCAL_WORLD_SIZE") or 1)
    return max(1, min(per_process, MAX_DEFAULT_THREADS))


def prefer_passive_wait() -> bool:
    """Make OpenMP threads sleep, not spin, between parallel regions, unless the user chose.

    Only takes effect before torch (its OpenMP runtime) is loaded: the CLI calls it first
    thing. Why: a spinning thread burns the time slice that the thread it waits for needs,
    and on a machine whose cores are busy with other processes each small parallel region
    then costs a scheduler quantum. Measured on a shared 2-core machine (load ~13), `laplace
    predict` on digits: 2 threads ~300 rows/s spinning, ~2,800 sleeping, 1 thread ~2,500. On
    an idle machine sleeping costs one wake-up per parallel region (microseconds).

    Returns whether it set `OMP_WAIT_POLICY` (False: the user set it or `GOMP_SPINCOUNT`, or
    torch was already loaded).
    """
    import sys

    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def set_threads(threads: int | None = None) -> int:
    """Make torch use `threads` intra-op threads (`None`: `default_threads()`); returns the count.

    The inter-op pool (TorchScript forks, async ops) is sized the same, so that N means N busy
    threads. torch lets that be set only once per process, before any inter-op work starts;
    later calls (several commands in one process, as in tests) keep the first size.
    """
    import torch

    if threads is not None and threads < 1:
        from laplace_cli.core.errors import BadInputError

        raise BadInputError(f"--threads: expected an integer >= 1, got {threads}")
    n = default_threads() if threads is None else threads
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:
        pass  # already set, or inter-op work has started: torch refuses a second size
    return n
