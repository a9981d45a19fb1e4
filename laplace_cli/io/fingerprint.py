"""The model fingerprint stored in posteriors: SHA-256 of the parameter bytes (docs/design.md §2).

Re-exported by :mod:`laplace_cli.io.checkpoints` (the historical import path).
"""

from __future__ import annotations

import hashlib
import struct

import torch
from torch import nn

__all__ = ["model_fingerprint"]


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the model's parameters: names, shapes, dtypes and bytes, in sorted name order.

    Each parameter contributes its qualified name, its shape, its dtype and the raw bytes of a
    contiguous CPU copy (so the device and memory layout do not matter, but the dtype does).
    Buffers (e.g. BatchNorm running statistics) are not included, as docs/design.md §2 says
    "parameter bytes".

    Names are part of the hash because they agree across the forms: ``torch.export`` /
    ``unflatten``, ``ExportedProgram.module()`` and TorchScript keep the original qualified
    names (``0.weight``, ``features.0.weight``, ``head.bias``), and :func:`restore_layer_types`
    keeps them too, so the same weights give the same fingerprint in every form (the tests
    check this for an MLP and a CNN). Sorting makes the hash independent of registration order.

    Args:
        model: Any module.

    Returns:
        A 64-character lowercase hex digest.
    """
    h = hashlib.sha256(b"laplace-cli/fingerprint/v1\0")
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        t = param.detach().to("cpu").contiguous()
        header = f"{name}\0{tuple(t.shape)}\0{str(t.dtype).removeprefix('torch.')}\0"
        h.update(header.encode())
        # Reinterpret as bytes through torch (numpy has no bfloat16); reshape first because
        # a 0-d tensor cannot be viewed as another dtype.
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        h.update(struct.pack("<Q", len(raw)))
        h.update(raw)
    return h.hexdigest()
