"""The structure table: which posterior structures exist and what each can do, in one place.

Every question the rest of the library asks about a structure (its class, the subsets it
supports, whether it passes over the data several times, its memory estimate, whether the
tuning cache and the ASDL adapter serve it, how it is stored) is answered here, so adding a
structure means one new module (its `Posterior` subclass) and one `register_structure` call:

    register_structure(StructureSpec("iso", build=IsoPosterior, subsets=frozenset({"all"}),
                                     memory=lambda groups, itemsize, rank: itemsize))
    Laplace(model, "regression", "all", "iso").fit(loader)

Built-in structures keep their `core.enums.Structure` member as name; others are named by a
`StructureName` (a `str` with `.value`, like the enum members).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from laplace_cli.core.enums import KronApprox, Structure, Subset
from laplace_cli.core.errors import BadInputError
from laplace_cli.posterior.base import Posterior
from laplace_cli.posterior.diag import DiagPosterior
from laplace_cli.posterior.full import FullPosterior
from laplace_cli.posterior.kron import KronPosterior
from laplace_cli.posterior.lowrank import (
    DEFAULT_N_ITER,
    DEFAULT_OVERSAMPLE,
    DEFAULT_RANK,
    LowRankPosterior,
    krylov_basis_size,
)
from laplace_cli.subsets.base import ParamGroup

__all__ = [
    "STRUCTURES",
    "StructureName",
    "StructureSpec",
    "parse_structure",
    "register_structure",
    "structure_spec",
    "supported_combinations",
    "unregister_structure",
]

#: (groups, dtype, device, *, kron_approx, rank) -> an empty posterior.
Builder = Callable[..., Posterior]
#: (groups, itemsize, rank) -> bytes held by the curvature (one copy).
MemoryEstimate = Callable[[Sequence[ParamGroup], int, "int | None"], int]

_ALL_SUBSETS = frozenset(s.value for s in Subset)


class StructureName(str):
    """The name of a structure outside `core.enums.Structure` (a `str` with `.value`)."""

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True)
class StructureSpec:
    """What one structure is and can do.

    name: its `hessian_structure` value.
    build: builds an empty posterior, `build(groups, dtype, device, kron_approx=..., rank=...)`.
    subsets: the `subset_of_weights` values it supports.
    memory: bytes its curvature holds (one copy), `memory(groups, itemsize, rank)`.
    memory_advice: what to use instead when it does not fit the memory budget.
    needs_loader: fitting passes over the data several times (a re-iterable loader; no shards,
        no resume).
    tuning_cache: `tuning.cache.PredictiveCache` implements it (else grid search calls `la(x)`).
    asdl: the ASDL adapter (`backend="asdl"`) fits it.
    state_keys: prefix of the tensor keys it owns in a posterior file (docs/posterior-format.md).
    load_with_n_data: its `load_state` also takes `n_data` (K-FAC's factor averages).
    records_rank: the `rank` setting is recorded in the file's metadata.
    """

    name: str
    build: Builder
    subsets: frozenset[str]
    memory: MemoryEstimate
    memory_advice: str = "use subset_of_weights=last_layer"
    needs_loader: bool = False
    tuning_cache: bool = False
    asdl: bool = False
    state_keys: str = ""
    load_with_n_data: bool = False
    records_rank: bool = False

    def supports(self, subset: Subset | str) -> bool:
        return str(getattr(subset, "value", subset)) in self.subsets


# --- the built-in structures' memory estimates and builders ----------------------------------
def _n_params(groups: Sequence[ParamGroup]) -> int:
    return sum(g.numel for g in groups)


def diag_bytes(groups: Sequence[ParamGroup], itemsize: int, rank: int | None = None) -> int:
    return _n_params(groups) * itemsize


def full_bytes(groups: Sequence[ParamGroup], itemsize: int, rank: int | None = None) -> int:
    n = _n_params(groups)
    return n * n * itemsize


def kron_bytes(groups: Sequence[ParamGroup], itemsize: int, rank: int | None = None) -> int:
    total = 0
    for g in groups:
        if g.kind == "weight":
            d_out, d_in = g.kron_shape
            total += d_out * d_out + d_in * d_in
        elif g.kind == "bias":
            total += g.numel * g.numel
        else:
            total += g.numel
    return total * itemsize


def lowrank_bytes(groups: Sequence[ParamGroup], itemsize: int, rank: int | None = None) -> int:
    """The block Krylov basis and its image under H (P × (k + 10)·5 each, at most P × P), plus
    U: see posterior/lowrank.py."""
    n = _n_params(groups)
    k = min(rank or DEFAULT_RANK, n)
    basis = krylov_basis_size(n, k, DEFAULT_OVERSAMPLE, DEFAULT_N_ITER)
    return n * (2 * basis + k + 2) * itemsize


# Module-level builders (not closures), so that a spec, and a `Laplace` holding one, pickles.
def _build_diag(groups, dtype, device, *, kron_approx=KronApprox.EXPAND, rank=None) -> Posterior:
    return DiagPosterior(groups, dtype, device)


def _build_full(groups, dtype, device, *, kron_approx=KronApprox.EXPAND, rank=None) -> Posterior:
    return FullPosterior(groups, dtype, device)


def _build_kron(groups, dtype, device, *, kron_approx=KronApprox.EXPAND, rank=None) -> Posterior:
    return KronPosterior(groups, dtype, device, kron_approx=kron_approx)


def _build_lowrank(groups, dtype, device, *, kron_approx=KronApprox.EXPAND, rank=None):
    return LowRankPosterior(groups, dtype, device, rank=rank)


_LAYERED = frozenset({Subset.ALL.value, Subset.LAST_LAYER.value})

#: name -> spec, in the order the built-in structures are listed to users.
STRUCTURES: dict[str, StructureSpec] = {
    spec.name: spec
    for spec in (
        StructureSpec(
            Structure.DIAG.value,
            _build_diag,
            _ALL_SUBSETS,
            diag_bytes,
            tuning_cache=True,
            asdl=True,
            state_keys="diag.",
        ),
        StructureSpec(
            Structure.KRON.value,
            _build_kron,
            _LAYERED,
            kron_bytes,
            "use diag or subset_of_weights=last_layer",
            tuning_cache=True,
            asdl=True,
            state_keys="kron.",
            load_with_n_data=True,
        ),
        StructureSpec(
            Structure.FULL.value,
            _build_full,
            _ALL_SUBSETS,
            full_bytes,
            "use kron, diag or subset_of_weights=last_layer",
            tuning_cache=True,
            state_keys="full.",
        ),
        StructureSpec(
            Structure.LOWRANK.value,
            _build_lowrank,
            _LAYERED,
            lowrank_bytes,
            "use a smaller rank, diag or subset_of_weights=last_layer",
            needs_loader=True,
            state_keys="lowrank.",
            records_rank=True,
        ),
    )
}


# --- look-ups ----------------------------------------------------------------------------------
def _key(name: Structure | str) -> str:
    return str(getattr(name, "value", name)).lower().replace("-", "_")


def parse_structure(name: Structure | str, what: str = "hessian_structure") -> Structure | str:
    """The table's name for `name`: the `Structure` member of a built-in, else a `StructureName`."""
    key = _key(name)
    if key not in STRUCTURES:
        raise BadInputError(f"{what}: expected one of {', '.join(STRUCTURES)}, got {name!r}")
    try:
        return Structure(key)
    except ValueError:
        return StructureName(key)


def structure_spec(name: Structure | str) -> StructureSpec:
    """The spec of a structure (BadInputError for an unknown name)."""
    return STRUCTURES[_key(parse_structure(name))]


def supported_combinations() -> str:
    """`"all: diag, full, ...; last_layer: ...; subnetwork: ..."` for error messages."""
    return "; ".join(
        f"{s.value}: {', '.join(sorted(n for n, spec in STRUCTURES.items() if spec.supports(s)))}"
        for s in Subset
    )


def register_structure(spec: StructureSpec) -> StructureSpec:
    """Add a structure to the table; its name must be new."""
    key = _key(spec.name)
    if key in STRUCTURES:
        raise BadInputError(f"structure {key!r} is already registered")
    STRUCTURES[key] = spec
    return spec


def unregister_structure(name: str) -> None:
    """Remove a structure added with `register_structure` (the built-ins stay)."""
    key = _key(name)
    if key in {s.value for s in Structure}:
        raise BadInputError(f"structure {key!r} is built in and cannot be removed")
    STRUCTURES.pop(key, None)


def build_from_table(
    structure: Structure | str,
    groups: Sequence[ParamGroup],
    dtype: torch.dtype,
    device: torch.device,
    *,
    kron_approx: KronApprox = KronApprox.EXPAND,
    rank: int | None = None,
) -> Posterior:
    """An empty posterior of `structure` over `groups`."""
    return structure_spec(structure).build(
        groups, dtype, device, kron_approx=kron_approx, rank=rank
    )
