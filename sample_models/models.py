"""Model factories for the bundled sample models.

Each factory returns a plain ``nn.Sequential`` of standard layers, so every form of checkpoint
(``model.pt2``, ``model.safetensors`` + factory, ``model.pt`` + factory) has the same module
structure and parameter names.  Referenced on the command line as, e.g.,
``--model-factory sample_models/models.py:digits_mlp``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["digits_mlp", "digits_cnn", "diabetes_mlp", "fmnist_cnn", "seg_unet"]


def digits_mlp(hidden: int = 64) -> nn.Module:
    """MLP for sklearn's 8x8 digits: 64 inputs in [0, 1] -> 10 logits (ReLU)."""
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def digits_cnn() -> nn.Module:
    """Small CNN for the digits as images of shape (N, 1, 8, 8) -> 10 logits."""
    return nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 16, 4, 4)
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def fmnist_cnn() -> nn.Module:
    """CNN with BatchNorm for Fashion-MNIST, inputs (N, 28, 28) in [0, 1] (as an IDX spec with
    `scale: 1/255` loads them) -> 10 logits. 55,434 parameters."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28)),  # (N, 28, 28) -> (N, 1, 28, 28): IDX images have no channel axis
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 16, 14, 14)
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 32, 7, 7)
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def diabetes_mlp(hidden: int = 32) -> nn.Module:
    """Regression MLP for sklearn's diabetes data: 10 standardised features -> 1 output (tanh)."""
    return nn.Sequential(
        nn.Linear(10, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 1),
    )


def seg_unet(width: int = 16, n_classes: int = 3) -> nn.Module:
    """Tiny U-Net-like segmentation net, images (N, 1, H, W) (H, W even) -> per-pixel logits
    (N, n_classes, H, W), ending in a 1×1 convolution (the dense last layer). 16,419 parameters
    with the defaults (sample_models/seg_unet)."""
    return SegUNet(width, n_classes)


class SegUNet(nn.Module):
    """Encoder (two 3×3 convs), a half-resolution block, nearest upsampling, a skip
    concatenation, a 3×3 decoder conv and the 1×1 head."""

    def __init__(self, width: int = 16, n_classes: int = 3) -> None:
        super().__init__()
        w = width
        self.enc = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU()
        )
        self.mid = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * w, w, 3, padding=1),
            nn.ReLU(),
        )
        self.dec = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(w, n_classes, 1)

    def forward(self, x):  # noqa: D102
        e = self.enc(x)
        return self.head(self.dec(torch.cat([e, self.mid(e)], 1)))
