"""Model factories for the bundled sample models.

Each factory returns a plain ``nn.Sequential`` of standard layers, so every form of checkpoint
(``model.pt2``, ``model.safetensors`` + factory, ``model.pt`` + factory) has the same module
structure and parameter names.  Referenced on the command line as, e.g.,
``--model-factory sample_models/models.py:digits_mlp``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["digits_mlp", "digits_cnn", "diabetes_mlp"]


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


def diabetes_mlp(hidden: int = 32) -> nn.Module:
    """Regression MLP for sklearn's diabetes data: 10 standardised features -> 1 output (tanh)."""
    return nn.Sequential(
        nn.Linear(10, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 1),
    )
