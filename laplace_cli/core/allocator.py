"""Keep freed host memory in the process instead of returning it to the OS after every tensor.

A K-FAC / diag fit back-propagates one output direction at a time, and every direction
allocates and frees the same few activation-sized gradients (a BN CNN's first block: 6 MB
each). With glibc's default thresholds those blocks are mmapped or trimmed back to the OS when
freed and page-faulted in again, zero-filled by the kernel, on the next direction: 33–39k
minor page faults and ~20 % of the benchmark zoo's Fashion-MNIST CNN fit (0.50 → 0.41 s on 256
images, one thread, measured with `resource.getrusage` around warm fits). laplace-torch's fit, whose heap stays busy, loses little to this.

`retain_freed_memory()` raises glibc's mmap and trim thresholds (`mallopt`), once per process,
so blocks up to `MMAP_THRESHOLD` come from the heap and freed memory stays there for reuse. The
price is that the process keeps its peak heap after the work (its RSS stays at the peak; the
peak itself does not grow). The `laplace` CLI and every `fit` call it; set
``LAPLACE_CLI_MALLOC=system`` to keep the C library's defaults. A no-op off glibc (macOS,
Windows, musl): it reports False.

Importing this module does not import torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "retain_freed_memory"]

#: Blocks at most this large come from the heap (glibc's own dynamic threshold stops at 32 MiB).
MMAP_THRESHOLD = 512 * 2**20
#: Free memory at the top of the heap is returned to the OS only beyond this.
TRIM_THRESHOLD = 1024 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers

_state: dict[str, bool] = {}


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they are raised.

    False when the C library is not glibc, when ``LAPLACE_CLI_MALLOC=system`` asks for the
    defaults, or when `mallopt` refuses the values.
    """
    if "done" in _state:
        return _state["done"]
    _state["done"] = _apply()
    return _state["done"]


def _apply() -> bool:
    if os.environ.get("LAPLACE_CLI_MALLOC", "").strip().lower() == "system":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 — glibc only (musl has no such symbol)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Setting either turns glibc's dynamic thresholds off for good: set both.
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return ok and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
