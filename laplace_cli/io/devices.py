"""Devices and dtypes from the user's words: ``--device auto|cpu|cuda[:N]|mps``, ``--dtype``.

Re-exported by :mod:`laplace_cli.io.checkpoints` (the historical import path).
"""

from __future__ import annotations

import torch

from laplace_cli.core.errors import BadInputError

__all__ = ["resolve_device", "resolve_dtype"]


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """Turn ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` / ``"mps"`` into a device.

    Args:
        device: ``"auto"`` picks CUDA when available, else CPU.

    Returns:
        The device.

    Raises:
        BadInputError: The string names no device, or one that is not available here.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        text = str(device).strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            raise BadInputError(
                f"--device: expected auto, cpu, cuda, cuda:N or mps, got {device!r}"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInputError(f"--device: {device!s} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInputError(
                f"--device: {device!s} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    elif dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise BadInputError(f"--device: {device!s} requested but MPS is not available")
    return dev


_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    # Half precision: the model runs in it, the Laplace maths in float32 (docs/half-precision.md).
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Turn ``"float32"`` / ``"float64"`` / ``"bfloat16"`` / ``"float16"`` (or a torch dtype, or
    None) into a dtype.

    Raises:
        BadInputError: Any other value.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and dtype not in _DTYPES.values():
            raise BadInputError(
                f"--dtype: expected float32, float64, bfloat16 or float16, got {dtype}"
            )
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise BadInputError(
            f"--dtype: expected float32, float64, bfloat16 or float16, got {dtype!r}"
        )
    return _DTYPES[key]
