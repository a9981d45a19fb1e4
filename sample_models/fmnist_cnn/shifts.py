"""Shifted Fashion-MNIST sets for out-of-distribution checks, made on the fly (nothing stored).

Named by the ``ood_*.yaml`` specs next to this file (``callable: shifts.py:shifted``). Each set
takes test-file rows the model's test split does not use (t10k rows 2,000-2,999 by default),
as ``(N, 28, 28)`` float32 in [0, 1] like ``data.yaml`` loads them:

* ``rot90``  -- the images turned by 90 degrees (same objects, unseen orientation);
* ``noise``  -- the images plus Gaussian pixel noise (``sigma``, seeded), clipped to [0, 1];
* ``digits`` -- scikit-learn's 8x8 handwritten digits resized to 20x20 and centred in 28x28
  (MNIST-like, a different domain), as many as ``rows`` asks for.

The labels are returned as well (the OOD tables ignore them): Fashion-MNIST classes for
``rot90`` / ``noise``, the digit for ``digits``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
KINDS = ("rot90", "noise", "digits")


def _rows(rows: str) -> slice:
    start, stop = (int(v) for v in rows.split(":"))
    return slice(start, stop)


def shifted(kind: str, rows: str = "2000:3000", seed: int = 0, sigma: float = 0.3) -> TensorDataset:
    """A shifted set of ``rows`` images (see the module docstring for the kinds)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    part = _rows(rows)
    if kind == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        n = part.stop - part.start
        x8 = torch.from_numpy(digits.images[:n] / 16.0).float()[:, None]  # (n, 1, 8, 8) in [0, 1]
        # MNIST's layout: the digit in a 20x20 box centred in 28x28.
        x20 = torch.nn.functional.interpolate(x8, size=(20, 20), mode="bilinear")[:, 0]
        x = torch.nn.functional.pad(x20, (4, 4, 4, 4))
        return TensorDataset(x.clamp(0, 1), torch.from_numpy(digits.target[:n]).long())

    from laplace_cli.io.idx_files import read_idx

    images = read_idx(FMNIST_DIR / "t10k-images-idx3-ubyte.gz")[part]
    labels = read_idx(FMNIST_DIR / "t10k-labels-idx1-ubyte.gz")[part]
    x = torch.from_numpy(images).float() / 255.0
    if kind == "rot90":
        x = torch.rot90(x, 1, dims=(1, 2))
    else:
        gen = torch.Generator().manual_seed(seed)
        x = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    return TensorDataset(x.contiguous(), torch.from_numpy(labels).long())
