"""Regenerate the bundled sample models deterministically.

    python sample_models/make_samples.py [--out DIR]

Trains three small models on data that ships inside scikit-learn (no downloads):

* ``digits_mlp``   -- MLP on the 8x8 digits (64 features in [0, 1]), 10 classes
* ``digits_cnn``   -- small CNN on the same digits as (N, 1, 8, 8) images
* ``diabetes_mlp`` -- regression MLP on the diabetes data (standardised features and target)
* ``fmnist_cnn``   -- CNN with BatchNorm on 14,000 Fashion-MNIST images read from the IDX files
  of the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
  its ``data.yaml`` names rows of those files, so no data is written for it

    python sample_models/make_samples.py --models fmnist_cnn   # made only when named

For each it writes ``<out>/<name>/{model.pt2, model.safetensors, model.pt, data.yaml,
train.npz, val.npz, test.npz}`` (``fmnist_cnn``: no ``.npz``), and it writes
``<out>/metrics.json``; the metrics are also printed as JSON on stdout (timings go to stderr).
Only torch, numpy, scikit-learn, safetensors and pyyaml are used, and laplace_cli's dataset-spec
reader for ``fmnist_cnn`` (so the model is trained on exactly what ``laplace fit`` reads).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file
from sklearn.datasets import load_diabetes, load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
SPLIT_SEED = 0
TORCH_SEED = 0


def _load_factories():
    spec = importlib.util.spec_from_file_location("laplace_sample_models", HERE / "models.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


models = _load_factories()


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def _split_60_20_20(n: int, stratify: np.ndarray | None) -> dict[str, np.ndarray]:
    """Index sets for a fixed 60/20/20 train/val/test split."""
    idx = np.arange(n)
    rest, test = train_test_split(idx, test_size=0.2, random_state=SPLIT_SEED, stratify=stratify)
    train, val = train_test_split(
        rest,
        test_size=0.25,  # 0.25 * 0.8 = 0.2
        random_state=SPLIT_SEED,
        stratify=None if stratify is None else stratify[rest],
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def digits_splits(image: bool) -> dict[str, dict[str, np.ndarray]]:
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)  # pixel values 0..16 -> [0, 1]
    y = data.target.astype(np.int64)
    if image:
        x = x.reshape(-1, 1, 8, 8)
    idx = _split_60_20_20(len(y), stratify=y)
    return {name: {"x": x[i], "y": y[i]} for name, i in idx.items()}


def diabetes_splits() -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    data = load_diabetes(scaled=False)
    x = data.data.astype(np.float64)
    y = data.target.astype(np.float64).reshape(-1, 1)
    idx = _split_60_20_20(len(y), stratify=None)
    tr = idx["train"]
    x_mean, x_std = x[tr].mean(0), x[tr].std(0)
    y_mean, y_std = float(y[tr].mean()), float(y[tr].std())
    splits = {
        name: {
            "x": ((x[i] - x_mean) / x_std).astype(np.float32),
            "y": ((y[i] - y_mean) / y_std).astype(np.float32),
        }
        for name, i in idx.items()
    }
    stats = {
        "x_mean": [round(float(v), 6) for v in x_mean],
        "x_std": [round(float(v), 6) for v in x_std],
        "y_mean": round(y_mean, 6),
        "y_std": round(y_std, 6),
    }
    return splits, stats


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def classification_metrics(logits: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> dict:
    logits = logits.double()
    probs = logits.softmax(-1)
    conf, pred = probs.max(-1)
    correct = (pred == y).double()
    nll = nn.functional.cross_entropy(logits, y).item()
    onehot = nn.functional.one_hot(y, probs.shape[-1]).double()
    brier = ((probs - onehot) ** 2).sum(-1).mean().item()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.double().mean().item() * abs(
                correct[in_bin].mean().item() - conf[in_bin].mean().item()
            )
    return {"acc": correct.mean().item(), "nll": nll, "ece": ece, "brier": brier}


@torch.no_grad()
def regression_metrics(pred: torch.Tensor, y: torch.Tensor, sigma: float) -> dict:
    """RMSE/MAE/R^2 and the Gaussian NLL with a fixed observation noise ``sigma``."""
    err = (pred.double() - y.double()).flatten()
    y = y.double().flatten()
    mse = (err**2).mean().item()
    nll = 0.5 * math.log(2 * math.pi * sigma**2) + 0.5 * mse / sigma**2
    r2 = 1.0 - mse / ((y - y.mean()) ** 2).mean().item()
    return {"rmse": math.sqrt(mse), "mae": err.abs().mean().item(), "r2": r2, "nll": nll}


def _rounded(d: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in d.items()}


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
) -> nn.Module:
    gen = torch.Generator().manual_seed(TORCH_SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    n = len(x)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            i = perm[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[i]), y[i]).backward()
            opt.step()
        sched.step()
    return model.eval()


CONFIGS = {
    "digits_mlp": {
        "task": "classification",
        "factory": "digits_mlp",
        "kwargs": {"hidden": 64},
        "train": {"epochs": 60, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4},
        "description": "MLP 64-64-64-10 (ReLU) on sklearn digits, inputs (N, 64) in [0, 1]",
    },
    "digits_cnn": {
        "task": "classification",
        "factory": "digits_cnn",
        "kwargs": {},
        "train": {"epochs": 40, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4},
        "description": "CNN conv8-conv16-maxpool-32-10 (ReLU) on sklearn digits, inputs (N, 1, 8, 8)",
    },
    "fmnist_cnn": {
        "task": "classification",
        "factory": "fmnist_cnn",
        "kwargs": {},
        "train": {"epochs": 5, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4},
        "description": "CNN conv16-BN-pool-conv32-BN-pool-32-10 on Fashion-MNIST, inputs (N, 28, 28)",
    },
    "diabetes_mlp": {
        "task": "regression",
        "factory": "diabetes_mlp",
        "kwargs": {"hidden": 32},
        "train": {"epochs": 60, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-2},
        "description": "MLP 10-32-32-1 (tanh) on sklearn diabetes, standardised x and y",
    },
}


DATA_YAML = """\
# {description}
# Generated by sample_models/make_samples.py; paths are relative to this file.
task: {task}
batch_size: 256
splits:
  train: {{path: train.npz, x: x, y: y}}
  val: {{path: val.npz, x: x, y: y}}
  test: {{path: test.npz, x: x, y: y}}
"""


FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_YAML = """\
# {description}
# Generated by sample_models/make_samples.py. Reads the IDX files of the Debian package
# dataset-fashion-mnist (apt-get install dataset-fashion-mnist); nothing is copied here.
# train: rows 0-9,999 of the training file, val: rows 10,000-11,999, test: rows 0-1,999 of t10k.
task: classification
n_classes: 10
batch_size: 256
splits:
  train:
    path: {d}/train-images-idx3-ubyte.gz
    y: {d}/train-labels-idx1-ubyte.gz
    rows: "0:10000"
    scale: 0.00392156862745098  # 1/255: 8-bit pixels to [0, 1]
  val:
    path: {d}/train-images-idx3-ubyte.gz
    y: {d}/train-labels-idx1-ubyte.gz
    rows: "10000:12000"
    scale: 0.00392156862745098
  test:
    path: {d}/t10k-images-idx3-ubyte.gz
    y: {d}/t10k-labels-idx1-ubyte.gz
    rows: "0:2000"
    scale: 0.00392156862745098
"""


def fmnist_splits(folder: Path) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """The Fashion-MNIST splits as ``laplace`` reads them from the spec written to ``folder``."""
    from laplace_cli.io.datasets import load_dataset_spec, load_split

    text = FMNIST_YAML.format(description=CONFIGS["fmnist_cnn"]["description"], d=FMNIST_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.yaml").write_text(text)
    spec = load_dataset_spec(folder / "data.yaml", check_files=True)
    splits = {}
    for name in ("train", "val", "test"):
        ds = load_split(spec, name)
        splits[name] = {"x": ds.x.numpy(), "y": ds.y.numpy()}  # type: ignore[attr-defined]
    return splits, text


def export_checkpoints(model: nn.Module, example: torch.Tensor, folder: Path) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    os.chmod(folder / "model.safetensors", 0o644)  # safetensors creates it 0600
    torch.save(state, folder / "model.pt")

    batch = torch.export.Dim("batch", min=1)
    ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(ep, folder / "model.pt2")

    # check the round trip on batch sizes 1 and 37
    loaded = torch.export.load(folder / "model.pt2").module()
    reps = (37 + len(example) - 1) // len(example)
    big = example.repeat(reps, *([1] * (example.dim() - 1)))[:37]
    with torch.no_grad():
        for xb in (example[:1], big):
            out, ref = loaded(xb), model(xb)
            if out.shape != ref.shape or not torch.allclose(out, ref, atol=1e-6):
                raise RuntimeError(f"{folder / 'model.pt2'}: round trip mismatch at {len(xb)}")


def make_one(
    name: str, out: Path, splits: dict, extra: dict | None = None, data_yaml: str | None = None
) -> dict:
    """Train one model; ``data_yaml``: the spec's text when the data stays where it is (no .npz)."""
    cfg = CONFIGS[name]
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    if data_yaml is None:
        for split, arrays in splits.items():
            np.savez_compressed(folder / f"{split}.npz", x=arrays["x"], y=arrays["y"])
        data_yaml = DATA_YAML.format(description=cfg["description"], task=cfg["task"])
    (folder / "data.yaml").write_text(data_yaml)
    yaml.safe_load((folder / "data.yaml").read_text())  # sanity check

    t = {s: {k: torch.from_numpy(v) for k, v in a.items()} for s, a in splits.items()}
    torch.manual_seed(TORCH_SEED)
    model = getattr(models, cfg["factory"])(**cfg["kwargs"])
    n_params = sum(p.numel() for p in model.parameters())

    classification = cfg["task"] == "classification"
    loss_fn = nn.functional.cross_entropy if classification else nn.functional.mse_loss
    start = time.perf_counter()
    train(model, t["train"]["x"], t["train"]["y"], loss_fn, **cfg["train"])
    seconds = time.perf_counter() - start

    with torch.no_grad():
        outputs = {s: model(a["x"]) for s, a in t.items()}
    result: dict = {
        "task": cfg["task"],
        "factory": f"sample_models/models.py:{cfg['factory']}",
        "kwargs": cfg["kwargs"],
        "n_params": n_params,
        "n": {s: len(a["y"]) for s, a in splits.items()},
        "train_config": cfg["train"],
    }
    if classification:
        metrics = {s: classification_metrics(outputs[s], t[s]["y"]) for s in t}
    else:
        # MAP estimate of the observation noise: RMSE on the training split
        sigma = regression_metrics(outputs["train"], t["train"]["y"], 1.0)["rmse"]
        result["sigma_noise"] = round(sigma, 6)
        metrics = {s: regression_metrics(outputs[s], t[s]["y"], sigma) for s in t}
    result.update({s: _rounded(m) for s, m in metrics.items()})
    if extra:
        result.update(extra)

    export_checkpoints(model, t["train"]["x"][:8].clone(), folder)  # clone: no shared storage
    print(f"{name}: {n_params} parameters, trained in {seconds:.2f} s", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=HERE, help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(CONFIGS),
        default=None,
        help="models to (re)make; others keep their metrics.json entries (default: the three "
        "scikit-learn models; fmnist_cnn, a few CPU minutes, only when named)",
    )
    args = parser.parse_args(argv)
    wanted = args.models or ["digits_mlp", "digits_cnn", "diabetes_mlp"]

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    results = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if "digits_mlp" in wanted:
        results["digits_mlp"] = make_one("digits_mlp", out, digits_splits(image=False))
    if "digits_cnn" in wanted:
        results["digits_cnn"] = make_one("digits_cnn", out, digits_splits(image=True))
    if "diabetes_mlp" in wanted:
        d_splits, stats = diabetes_splits()
        results["diabetes_mlp"] = make_one(
            "diabetes_mlp", out, d_splits, extra={"standardisation": stats}
        )
    if "fmnist_cnn" in wanted:
        f_splits, text = fmnist_splits(out / "fmnist_cnn")
        results["fmnist_cnn"] = make_one("fmnist_cnn", out, f_splits, data_yaml=text)
    order = ("digits_mlp", "digits_cnn", "diabetes_mlp", "fmnist_cnn")
    results = {n: results[n] for n in order if n in results}  # a stable order

    text = json.dumps(results, indent=2) + "\n"
    (out / "metrics.json").write_text(text)
    print(text, end="")
    print(f"total: {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
