"""Synthetic-shapes segmentation sample: data and a trained `models.seg_unet`.

Images (N, 1, 12, 12): Gaussian noise (σ 0.35) with one to two shapes of intensity 1 drawn on it,
a disc (class 1) or an axis-aligned square (class 2); background class 0; a later shape covers an
earlier one. Same intensity for both shapes, so only their outline tells them apart and the
edges are genuinely uncertain. Masks (N, 12, 12) int64. Splits 512 / 128 / 128 (seeds 0, 1, 2).

    python sample_models/make_seg_unet.py        # ~1 CPU minute; writes sample_models/seg_unet/
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import seg_unet  # noqa: E402

SIZE = 12


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.35, size=(n, 1, SIZE, SIZE)).astype(np.float32)
    y = np.zeros((n, SIZE, SIZE), dtype=np.int64)
    ii, jj = np.mgrid[0:SIZE, 0:SIZE]
    for k in range(n):
        for _ in range(rng.integers(1, 3)):
            if rng.random() < 0.5:
                r = rng.uniform(2.0, 3.5)
                ci, cj = rng.uniform(r, SIZE - r, size=2)
                inside = (ii - ci) ** 2 + (jj - cj) ** 2 <= r**2
                cls = 1
            else:
                side = int(rng.integers(3, 7))
                i0, j0 = rng.integers(0, SIZE - side + 1, size=2)
                inside = (ii >= i0) & (ii < i0 + side) & (jj >= j0) & (jj < j0 + side)
                cls = 2
            x[k, 0][inside] += 1.0
            y[k][inside] = cls
    return x, y


def main(out: Path = HERE / "seg_unet") -> None:
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": make_split(512, 0), "val": make_split(128, 1), "test": make_split(128, 2)}
    for name, (x, y) in splits.items():
        np.savez_compressed(out / f"{name}.npz", x=x, y=y)
    torch.manual_seed(0)
    model = seg_unet()
    x, y = (torch.from_numpy(a) for a in splits["train"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    start = time.perf_counter()
    for _epoch in range(40):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    metrics = {"train_seconds": round(time.perf_counter() - start, 1)}
    with torch.no_grad():
        for name, (xs, ys) in splits.items():
            logits = model(torch.from_numpy(xs))
            t = torch.from_numpy(ys)
            metrics[name] = {
                "pixel_acc": float((logits.argmax(1) == t).double().mean()),
                "pixel_nll": float(torch.nn.functional.cross_entropy(logits, t)),
            }
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors")
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
