"""Dense-output Laplace on the synthetic-shapes segmentation sample (docs/dense-outputs.md).

Fits K-FAC over all weights and over the 1×1-conv head of `sample_models/seg_unet` with
`output_positions="independent"`, tunes the prior precision by marginal likelihood, scores
MAP vs Laplace on the test split at pixel level (accuracy, NLL, ECE, Brier, mean IoU), writes
per-pixel predictive variance maps (NPZ, atomically) and a figure image / truth / prediction /
variance.

    python sample_models/make_seg_unet.py            # once: data + trained model
    python benchmarks/dense_segmentation.py --figure /tmp/seg_figure.png
"""

from __future__ import annotations

import argparse
import io
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sample_models"))
from models import seg_unet  # noqa: E402

from laplace_cli import Laplace  # noqa: E402
from laplace_cli.io.atomic import atomic_write  # noqa: E402
from laplace_cli.laplace.dense_outputs import position_variance  # noqa: E402
from laplace_cli.metrics.segmentation import segmentation_metrics  # noqa: E402

SAMPLE = ROOT / "sample_models" / "seg_unet"


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(SAMPLE / f"{split}.npz")
    return torch.from_numpy(d["x"]), torch.from_numpy(d["y"])


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, ...]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-train", type=int, default=512, help="training images used by the fit")
    ap.add_argument("--n-test", type=int, default=128, help="test images scored")
    ap.add_argument("--subsets", nargs="+", default=["all", "last_layer"])
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--npz", type=Path, default=Path("/tmp/seg_variance.npz"))
    ap.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks/results/dense_segmentation.json"
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    model = seg_unet()
    model.load_state_dict(load_file(str(SAMPLE / "model.safetensors")))
    model.eval()
    xtr, ytr = load("train")
    xtr, ytr = xtr[: args.n_train], ytr[: args.n_train]
    xte, yte = load("test")
    xte, yte = xte[: args.n_test], yte[: args.n_test]
    with torch.no_grad():
        p_map = model(xte).softmax(1)
    results: dict = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_train": len(xtr),
        "n_test": len(xte),
        "batch_size": args.batch_size,
        "image": list(xte.shape[2:]),
        "map": segmentation_metrics(p_map, yte),
    }
    maps = {}
    for subset in args.subsets:
        la = Laplace(model, "classification", subset, "kron", output_positions="independent")
        t0 = time.perf_counter()
        la.fit(batches(xtr, ytr, args.batch_size))
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        la.optimize_prior_precision(method="marglik", n_steps=100)
        t_tune = time.perf_counter() - t0
        t0 = time.perf_counter()
        probs, var = [], []
        for xb, _ in batches(xte, yte, args.batch_size):
            # One GLM pass per batch: probit per pixel, softmax(μ / sqrt(1 + π/8 · var)),
            # as la(xb) computes it from the same (B, C, *S) mean and (B, C, C, *S) covariance.
            f_mu, f_var = position_variance(la, xb)
            v = f_var.diagonal(dim1=1, dim2=2).movedim(-1, 1)  # (B, C, H, W)
            probs.append(torch.softmax(f_mu / torch.sqrt(1 + math.pi / 8 * v), dim=1))
            var.append(v.sum(1))
        t_pred = time.perf_counter() - t0
        probs_t, var_t = torch.cat(probs), torch.cat(var)  # (N, C, H, W), (N, H, W)
        maps[subset] = var_t
        results[f"laplace_kron_{subset}"] = {
            **segmentation_metrics(probs_t, yte),
            "prior_precision": float(la.prior_precision.reshape(-1)[0]),
            "log_marglik": float(la.log_marginal_likelihood()),
            "fit_seconds": round(t_fit, 2),
            "tune_seconds": round(t_tune, 2),
            "predict_seconds": round(t_pred, 2),
            "mean_pixel_variance": float(var_t.mean()),
            "variance_error_vs_correct": [
                float(var_t[probs_t.argmax(1) != yte].mean()),
                float(var_t[probs_t.argmax(1) == yte].mean()),
            ],
        }
        maps[f"probs_{subset}"] = probs_t
    results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: v.numpy() for k, v in maps.items()})
    with atomic_write(args.npz) as f:
        f.write(buf.getvalue())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.json, "w") as f:
        f.write(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    if args.figure is not None:
        figure(xte, yte, p_map, maps, args.figure)


def figure(x, y, p_map, maps, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [0, 1, 2, 3]
    cols = [
        "image",
        "truth",
        "MAP pred",
        "Laplace pred (kron all)",
        "variance kron all",
        "variance last layer",
    ]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.2 * len(cols), 2.2 * len(rows)))
    for r, i in enumerate(rows):
        panels = [
            (x[i, 0], "gray", None),
            (y[i], "viridis", (0, 2)),
            (p_map[i].argmax(0), "viridis", (0, 2)),
            (maps["probs_all"][i].argmax(0), "viridis", (0, 2)),
            (maps["all"][i], "magma", None),
            (maps["last_layer"][i], "magma", None),
        ]
        for c, (img, cmap, lim) in enumerate(panels):
            ax = axes[r, c]
            kw = {"vmin": lim[0], "vmax": lim[1]} if lim else {}
            im = ax.imshow(img.numpy(), cmap=cmap, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
            if c >= 4:
                fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
