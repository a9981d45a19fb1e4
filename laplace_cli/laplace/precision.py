"""The dtypes of a Laplace approximation: the model's, and the posterior's.

The model runs in its own dtype (forward and backward passes, Jacobian pieces); the curvature,
its decomposition, the prior, the marginal likelihood and every prediction use the posterior's
dtype: the model's for float32 / float64 models, float32 for bfloat16 / float16 models, or what
`curvature_dtype=` asks for. Structures that cannot be done stably from a half-precision model
are refused here, with the reason (docs/half-precision.md).
"""

from __future__ import annotations

import torch

from laplace_cli.core.enums import Structure
from laplace_cli.core.errors import BadInputError
from laplace_cli.subsets.precision import is_half

_NAMES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

#: Why a structure is refused for a half-precision model.
HALF_REFUSED: dict[Structure, str] = {
    Structure.LOWRANK: (
        "its eigensolver runs Jacobian-vector products through the model in the model's dtype "
        "(forward-mode AD, no float32 cast possible in between), and their rounding error "
        "(~4e-3 relative in bfloat16) is larger than the eigenvalue gaps it must resolve"
    ),
    Structure.GP: (
        "function-space Laplace keeps its kernel J Jᵀ and its predictive in the model's dtype "
        "(no float32 path), and a kernel rounded to 8-11 mantissa bits is in general not "
        "positive definite"
    ),
}


def parse_dtype(value: torch.dtype | str | None, name: str) -> torch.dtype | None:
    """A torch floating dtype from a dtype or its name ("float32", "torch.bfloat16", ...)."""
    if value is None or isinstance(value, torch.dtype):
        dt = value
    else:
        dt = _NAMES.get(str(getattr(value, "value", value)).strip().lower().removeprefix("torch."))
        if dt is None:
            raise BadInputError(
                f"{name}: expected float32, float64, bfloat16 or float16, got {value!r}"
            )
    if dt is not None and dt not in _NAMES.values():
        raise BadInputError(f"{name}: expected float32, float64, bfloat16 or float16, got {dt}")
    return dt


def posterior_dtype(
    model_dtype: torch.dtype, curvature_dtype: torch.dtype | str | None
) -> torch.dtype:
    """The dtype of the curvature, the posterior and the predictions.

    Default: the model's dtype, or float32 for a half-precision model. A half `curvature_dtype`
    is refused: sums over a data set need more than 8 (bfloat16) or 11 (float16) mantissa bits.
    """
    dt = parse_dtype(curvature_dtype, "curvature_dtype")
    if dt is not None and is_half(dt):
        raise BadInputError(
            f"curvature_dtype {str(dt).removeprefix('torch.')}: the curvature is a sum over the "
            "data and cannot be accumulated in half precision; use float32 or float64"
        )
    if dt is not None:
        return dt
    return torch.float32 if is_half(model_dtype) else model_dtype


def check_half_precision(
    model_dtype: torch.dtype, structure: Structure | str, backend: str = "native"
) -> None:
    """Refuse what cannot be done stably from a bfloat16 / float16 model (BadInputError)."""
    if not is_half(model_dtype):
        return
    name = str(model_dtype).removeprefix("torch.")
    key = str(getattr(structure, "value", structure))
    why = {k.value: v for k, v in HALF_REFUSED.items()}.get(key)
    if why is not None:
        raise BadInputError(
            f"structure {key!r} is not available for a {name} model: {why}; "
            "use diag, kron or full (curvature in float32), or load the model with --dtype float32"
        )
    if backend == "asdl":
        raise BadInputError(
            f"backend 'asdl' cannot fit a {name} model (it accumulates the curvature in the "
            "model's dtype); use the native backend, or load the model with --dtype float32"
        )


def model_dtype_of(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter (float32 without one)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()
