"""Which laplace-torch flavour class `Laplace(...)` builds for a subset and a structure.

`laplace_cli.laplace` installs `flavour_for` as the factory's resolver
(`approximation.set_flavour_resolver`), so the class module does not import its subclasses.
"""

from __future__ import annotations

from typing import Any

from laplace_cli.core.enums import Structure, Subset
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.laplace.flavours import (
    FUNCTION_SPACE_MESSAGE,
    DiagLaplace,
    FullLaplace,
    KronLaplace,
    LowRankLaplace,
)
from laplace_cli.laplace.flavours_last_layer import (
    DiagLLLaplace,
    FullLLLaplace,
    KronLLLaplace,
    LLLaplace,
)
from laplace_cli.laplace.flavours_subnet import DiagSubnetLaplace, FullSubnetLaplace


def _argument(args: tuple, kwargs: dict, position: int, name: str, default: str) -> Any:
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def flavour_for(args: tuple, kwargs: dict) -> type[Laplace]:
    """The flavour class for `Laplace(*args, **kwargs)` (Laplace itself if none matches).

    An unknown subset or structure returns `Laplace`, whose `__init__` then gives its usual
    error; `hessian_structure="gp"` (or a `functional_approximation`) is function-space
    Laplace: NotImplementedError.
    """
    subset = _argument(args, kwargs, 2, "subset_of_weights", "last_layer")
    structure = _argument(args, kwargs, 3, "hessian_structure", "kron")
    if str(getattr(structure, "value", structure)).strip().lower() == "gp" or (
        kwargs.get("functional_approximation") is not None
    ):
        raise NotImplementedError(FUNCTION_SPACE_MESSAGE)
    try:
        key = (Subset.parse(subset, "subset").value, Structure.parse(structure, "structure").value)
    except Exception:  # Laplace.__init__ reports it with its own message
        return Laplace
    flavours: dict[tuple[str, str], type[Laplace]] = {
        cls._key: cls  # type: ignore[misc]
        for cls in (
            DiagLaplace,
            KronLaplace,
            FullLaplace,
            LowRankLaplace,
            DiagLLLaplace,
            KronLLLaplace,
            FullLLLaplace,
            DiagSubnetLaplace,
            FullSubnetLaplace,
        )
    }
    flavours.setdefault(("last_layer", "lowrank"), LLLaplace)  # no laplace-torch flavour
    cls = flavours.get(key, Laplace)
    return cls
