"""Memory guard: estimate what a choice needs before allocating, and refuse with advice.

A dense P×P matrix for a million parameters is terabytes; failing fast with a message that names
the alternatives beats an out-of-memory kill half way through a nightly job.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from laplace_cli.core.enums import Structure
from laplace_cli.core.errors import BadInputError, MemoryBudgetError
from laplace_cli.posterior.table import structure_spec
from laplace_cli.subsets.base import ParamGroup

DEFAULT_FRACTION = 0.5


def format_bytes(n: float) -> str:
    """Human-readable size with binary prefixes: 3.6 TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def format_count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str, name: str = "--max-memory") -> int:
    """Bytes from `4GiB`, `512MB`, `1.5g` or a plain number of bytes; `BadInputError` (exit
    2, naming `name`) for anything else."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise BadInputError(
            f"{name}: expected a size such as 4GiB, 512MB or a number of bytes, got {text!r}"
        )
    return int(float(m.group(1)) * _UNITS[unit])


def available_memory(device: torch.device) -> int:
    """Free memory on the device in bytes (CUDA: free device memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3


def default_budget(device: torch.device) -> int:
    """The default `max_memory`: half of what is free now."""
    return int(DEFAULT_FRACTION * available_memory(device))


def structure_bytes(
    structure: Structure | str,
    groups: Sequence[ParamGroup],
    itemsize: int,
    rank: int | None = None,
) -> int:
    """Bytes held by the curvature of a structure (one copy; decompositions roughly double it);
    each structure's estimate is in `posterior.table`."""
    return structure_spec(structure).memory(groups, itemsize, rank)


def check_structure_memory(
    structure: Structure | str,
    groups: Sequence[ParamGroup],
    itemsize: int,
    budget: int,
    rank: int | None = None,
) -> None:
    """Refuse a structure whose curvature (×3 for factorisations) does not fit in `budget` bytes.

    The message leads with what the choice needs and what to use instead, e.g.
    "full needs 7.3 TiB for 1.0M parameters; use kron, diag or subset_of_weights=last_layer
    (budget 16.0 GiB; or raise max_memory)". Called before anything is allocated.
    """
    need = structure_bytes(structure, groups, itemsize, rank)
    if 3 * need <= budget:
        return
    n_params = sum(g.numel for g in groups)
    spec = structure_spec(structure)
    alternatives = spec.memory_advice
    raise MemoryBudgetError(
        f"{spec.name} needs {format_bytes(need)} for {format_count(n_params)} parameters; "
        f"{alternatives} (budget {format_bytes(budget)}; or raise max_memory)"
    )


def jacobian_rows(n_outputs: int, n_params: int, itemsize: int, budget: int) -> int:
    """Rows of a batch whose dense Jacobian (rows, C, P) fits a quarter of the budget (≥ 1)."""
    per_row = 4 * n_outputs * n_params * itemsize  # Jacobian, projections and temporaries
    rows = (budget // 4) // max(per_row, 1)
    if rows < 1:
        raise MemoryBudgetError(
            f"one row of the dense Jacobian needs {format_bytes(per_row)} "
            f"({n_outputs} outputs × {format_count(n_params)} parameters), more than the budget "
            f"{format_bytes(budget)}; use kron or diag, or subset_of_weights=last_layer"
        )
    return int(rows)
