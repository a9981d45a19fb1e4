"""Which laplace-torch flavour class `Laplace(...)` builds for a subset and a structure.

`laplace_cli.laplace` installs `flavour_for` as the factory's resolver
(`approximation.set_flavour_resolver`), so the class module does not import its subclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from laplace_cli.core.enums import Structure, Subset
from laplace_cli.core.errors import BadInputError
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
from laplace_cli.laplace.functional import FunctionalLaplace
from laplace_cli.laplace.functional_ll import FunctionalLLLaplace
from laplace_cli.laplace.precision import check_half_precision, model_dtype_of


def _argument(args: tuple, kwargs: dict, position: int, name: str, default: str) -> Any:
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def _functional_builder(subset: Any) -> Callable[..., Any]:
    """`Laplace(model, likelihood, subset, "gp", **kw)` → FunctionalLaplace / FunctionalLLLaplace."""
    name = str(getattr(subset, "value", subset)).strip().lower()
    classes = {"all": FunctionalLaplace, "last_layer": FunctionalLLLaplace}
    if name not in classes:
        raise BadInputError(
            f"hessian_structure='gp' is for subset_of_weights 'all' or 'last_layer', got {subset!r}"
        )
    cls = classes[name]

    def build(*args: Any, **kwargs: Any) -> Any:
        if len(args) > 4:
            raise BadInputError(
                "function-space Laplace: pass n_subset and the other settings by keyword"
            )
        kwargs.pop("subset_of_weights", None)
        kwargs.pop("hessian_structure", None)
        model = args[0] if args else kwargs.get("model")
        if isinstance(model, nn.Module):
            check_half_precision(model_dtype_of(model), Structure.GP)
        return cls(*args[:2], **kwargs)

    return build


def flavour_for(args: tuple, kwargs: dict) -> Callable[..., Any]:
    """The flavour class for `Laplace(*args, **kwargs)` (Laplace itself if none matches).

    An unknown subset or structure returns `Laplace`, whose `__init__` then gives its usual
    error; `hessian_structure="gp"` returns a builder of function-space Laplace
    (FunctionalLaplace / FunctionalLLLaplace, laplace/functional.py); a
    `functional_approximation` (ELLA, VaLLA) is NotImplementedError.
    """
    subset = _argument(args, kwargs, 2, "subset_of_weights", "last_layer")
    structure = _argument(args, kwargs, 3, "hessian_structure", "kron")
    if kwargs.get("functional_approximation") is not None:
        raise NotImplementedError(FUNCTION_SPACE_MESSAGE)
    if str(getattr(structure, "value", structure)).strip().lower() == "gp":
        return _functional_builder(subset)
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
