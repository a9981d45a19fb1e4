"""The models and data of the realistic benchmark (benchmarks/realistic.py), built at run time.

Every model is trained here, briefly and seeded (a CPU minute or two at most), and its
state_dict is cached under benchmarks/results/cache/ (ignored by git) so that reruns only load
it.  What a benchmark model needs is a realistic *shape* (conv layers with BatchNorm, skip
connections, a wide MLP, a LoRA transformer) and trained weights that are not at init; the
accuracy it reaches is recorded for the record but is not the point.

* ``fmnist_cnn``: 2 × (conv 3×3 + BatchNorm + ReLU + max-pool) + 2 linear, ~106k parameters.
* ``fmnist_resnet20``: CIFAR-style ResNet-20 (3 stages of 3 basic blocks, 16/32/64 channels,
  BatchNorm, identity skips with zero-padded strided shortcuts), ~0.27M parameters.
* ``fmnist_mlp``: 784-1024-256-10 ReLU MLP, ~1.07M parameters.
* ``gpt2_lora``: a 2-layer GPT-2-style sequence classifier (random init from a config, no hub)
  with a LoRA adapter (r=8 on the attention) and a trainable head, on seeded synthetic tokens
  whose class sets the token distribution. Needs transformers + peft.
* ``digits_mlp``, ``digits_cnn``, ``diabetes_mlp``: the sample models of sample_models/.

`fold_bn` builds the BatchNorm-folded twin that laplace-torch gets (it cannot K-FAC BatchNorm):
each Conv2d followed by a BatchNorm2d in the same `nn.Sequential` becomes one Conv2d with the
BatchNorm's eval-mode affine map folded into its weight and bias.  The twin computes the same
function in eval mode (`check_twin` asserts it).
"""

from __future__ import annotations

import copy
import gzip
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "results" / "cache"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
#: Bump when a model's definition or training changes: the cached weights are then retrained.
CACHE_VERSION = 1


# --- data -----------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip): big-endian magic (0, 0, type, ndim), ndim uint32 sizes, then data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {arr.size} values for shape {dims}")
    return arr.reshape(dims)


def fmnist_available() -> bool:
    return all((FMNIST_DIR / f).is_file() for f in FMNIST_FILES.values())


_FMNIST: dict[str, np.ndarray] = {}


def fashion_mnist() -> dict[str, torch.Tensor]:
    """Fashion-MNIST as float32 (N, 1, 28, 28) standardised images and int64 labels.

    Splits: ``train`` (the 60k training images, in a seeded order, so the first n of them are a
    class-balanced-in-expectation sample), ``val`` (the first 2k test images), ``test`` (the
    next 2k).
    """
    if not fmnist_available():
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in {FMNIST_DIR} "
            "(Debian: apt-get install dataset-fashion-mnist)"
        )
    if not _FMNIST:
        for k, f in FMNIST_FILES.items():
            _FMNIST[k] = read_idx(FMNIST_DIR / f)
    order = np.random.default_rng(0).permutation(len(_FMNIST["train_y"]))

    def images(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a.astype(np.float32) / 255.0)
        return ((x - 0.2860) / 0.3530).unsqueeze(1)  # the training set's mean and std

    tx, ty = _FMNIST["test_x"], _FMNIST["test_y"]
    return {
        "train_x": images(_FMNIST["train_x"][order]),
        "train_y": torch.from_numpy(_FMNIST["train_y"][order].astype(np.int64)),
        "val_x": images(tx[:2000]),
        "val_y": torch.from_numpy(ty[:2000].astype(np.int64)),
        "test_x": images(tx[2000:4000]),
        "test_y": torch.from_numpy(ty[2000:4000].astype(np.int64)),
    }


def synthetic_tokens(n: int, seed: int, vocab: int = 512, length: int = 32, classes: int = 4):
    """Token sequences whose class k draws half its tokens from the k-th band of the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    band = vocab // classes
    uniform = torch.randint(0, vocab, (n, length), generator=g)
    in_band = y[:, None] * band + torch.randint(0, band, (n, length), generator=g)
    pick = torch.rand(n, length, generator=g) < 0.5
    return torch.where(pick, in_band, uniform), y


# --- models ---------------------------------------------------------------------------------
def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv without bias followed by BatchNorm (the pair `fold_bn` folds)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)
    )


def fmnist_cnn() -> nn.Module:
    """2 × (conv + BN + ReLU + pool) → 1568 → 64 → 10; 106k parameters."""
    return nn.Sequential(
        conv_bn(1, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 16, 14, 14)
        conv_bn(16, 32),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 32, 7, 7)
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


class Shortcut(nn.Module):
    """Option-A shortcut of CIFAR ResNets: stride-2 subsampling and zero-padded channels."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.pad, self.stride = cout - cin, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride), nn.ReLU(), conv_bn(cout, cout))
        self.shortcut = Shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def fmnist_resnet20() -> nn.Module:
    """ResNet-20 (He et al. 2016, CIFAR variant) for 1×28×28 inputs; 0.27M parameters."""
    layers: list[nn.Module] = [conv_bn(1, 16), nn.ReLU()]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def fmnist_mlp(classes: int = 10) -> nn.Module:
    """784-1024-256-C ReLU MLP: 1.07M parameters for C = 10."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 1024),
        nn.ReLU(),
        nn.Linear(1024, 256),
        nn.ReLU(),
        nn.Linear(256, classes),
    )


def transformers_available() -> str | None:
    """None when transformers and peft import, else why not."""
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"gpt2_lora needs transformers and peft ({e}); pip install 'laplace-cli[llm]'"
    return None


class TokenClassifier(nn.Module):
    """(B, L) token ids → (B, C) logits, so both libraries see a plain tensor-in model."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=x).logits


def gpt2_lora(classes: int = 4) -> nn.Module:
    """2 layers, width 64, 2 heads, vocab 512; LoRA r=8 on c_attn, trainable `score` head."""
    import transformers
    from peft import LoraConfig, get_peft_model

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)  # the base is a random init: seeded, so every build is the same
    config = transformers.GPT2Config(
        vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=2, num_labels=classes,
        pad_token_id=0,
    )  # fmt: skip
    base = transformers.GPT2ForSequenceClassification(config)
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=["c_attn"], modules_to_save=["score"],
        lora_dropout=0.0, task_type="SEQ_CLS",
    )  # fmt: skip
    return TokenClassifier(get_peft_model(base, lora))


# --- folding ----------------------------------------------------------------------------------
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    out = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True,
    ).to(conv.weight)  # fmt: skip
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        out.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        out.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return out


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy with every (Conv2d, BatchNorm2d) pair of an `nn.Sequential` folded into one conv."""
    twin = copy.deepcopy(model).eval()
    for mod in twin.modules():
        if not isinstance(mod, nn.Sequential):
            continue
        keys = list(mod._modules)
        for a, b in zip(keys, keys[1:]):
            conv, bn = mod._modules[a], mod._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                mod._modules[a] = _fold(conv, bn)
                mod._modules[b] = nn.Identity()
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in twin.modules()):
        raise ValueError("fold_bn: a BatchNorm layer does not follow a Conv2d in a Sequential")
    return twin


def check_twin(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Relative error max|model(x) − twin(x)| / max|model(x)| in eval mode.

    In float64 (the model and its fold both in float64) the two must agree to 1e-10: the fold
    is exact algebra; in float32 (the twin the benchmark uses) to 1e-5 (rounding of the fold).
    """
    errs = {}
    for label, dtype, tol in (("float64", torch.float64, 1e-10), ("float32", torch.float32, 1e-5)):
        a = copy.deepcopy(model).to(dtype).eval()
        b = fold_bn(a)
        with torch.no_grad():
            ya, yb = a(x.to(dtype)), b(x.to(dtype))
        err = float((ya - yb).abs().max() / ya.abs().max())
        if not err <= tol:
            raise AssertionError(f"BN-folded twin differs ({label}): relative error {err:.3g}")
        errs[label] = err
    return errs


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --- the zoo ----------------------------------------------------------------------------------
@dataclass
class Bench:
    """A trained benchmark model and its data (float32, CPU)."""

    name: str
    model: nn.Module
    likelihood: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    info: dict = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def twin(self) -> nn.Module:
        """The model laplace-torch gets: BN-folded where the model has BatchNorm."""
        return fold_bn(self.model) if has_batchnorm(self.model) else self.model


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> None:
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def _cached(
    name: str, build: Callable[[], nn.Module], train: Callable[[nn.Module], None], log
) -> tuple[nn.Module, dict]:
    """Build the model; load its cached weights, or train it and cache them (atomically)."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = build()
    path, meta = CACHE / f"{name}.safetensors", CACHE / f"{name}.json"
    if path.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        if info.get("version") == CACHE_VERSION:
            model.load_state_dict(load_file(path))
            return model.eval(), info
    t = time.perf_counter()
    log(f"training {name} (cached afterwards in {CACHE.relative_to(ROOT)}) ...")
    train(model)
    CACHE.mkdir(parents=True, exist_ok=True)
    trainable = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(trainable, tmp)
    tmp.replace(path)
    info = {"version": CACHE_VERSION, "train_seconds": round(time.perf_counter() - t, 1)}
    meta.write_text(json.dumps(info) + "\n")
    return model.eval(), info


FMNIST_MODELS = {
    # name: (factory, training steps, Adam learning rate)
    "fmnist_cnn": (fmnist_cnn, 400, 2e-3),
    "fmnist_resnet20": (fmnist_resnet20, 120, 2e-3),
    "fmnist_mlp": (fmnist_mlp, 400, 1e-3),
}
SAMPLE_MODELS = ("digits_mlp", "digits_cnn", "diabetes_mlp")
ALL_MODELS = (*FMNIST_MODELS, "gpt2_lora", *SAMPLE_MODELS)


def unavailable(name: str) -> str | None:
    """Why `name` cannot be built here (None when it can)."""
    if name in FMNIST_MODELS and not fmnist_available():
        return f"{name}: Fashion-MNIST not found in {FMNIST_DIR} (apt-get install dataset-fashion-mnist)"
    if name == "gpt2_lora":
        return transformers_available()
    if name not in ALL_MODELS:
        return f"unknown model {name!r}; known: {', '.join(ALL_MODELS)}"
    return None


def load(name: str, n_train: int, n_test: int, log=print) -> Bench:
    """The trained model `name` with the first `n_train` training and `n_test` val/test rows."""
    why = unavailable(name)
    if why:
        raise RuntimeError(why)
    if name in FMNIST_MODELS:
        factory, steps, lr = FMNIST_MODELS[name]
        d = fashion_mnist()
        tx, ty = d["train_x"][:10000], d["train_y"][:10000]  # the models train on 10k images
        model, info = _cached(name, factory, lambda m: _train(m, tx, ty, steps, lr), log)
        bench = Bench(
            name, model, "classification",
            (d["train_x"][:n_train], d["train_y"][:n_train]),
            (d["val_x"][:n_test], d["val_y"][:n_test]),
            (d["test_x"][:n_test], d["test_y"][:n_test]),
            info,
        )  # fmt: skip
    elif name == "gpt2_lora":
        tx, ty = synthetic_tokens(4000, seed=0)
        model, info = _cached(name, gpt2_lora, lambda m: _train(m, tx, ty, 300, 3e-3), log)
        vx, vy = synthetic_tokens(n_test, seed=1)
        sx, sy = synthetic_tokens(n_test, seed=2)
        # GPT-2's sequence head pools the last non-pad token (pad id 0); with no pad in the last
        # position that is the last token, the feature a last-layer Laplace takes with
        # feature_reduction="pick_last" (`laplace_feature_reduction` below).
        for t in (tx, vx, sx):
            t[:, -1].clamp_(min=1)
        model.laplace_feature_reduction = "pick_last"
        bench = Bench(
            name, model, "classification", (tx[:n_train], ty[:n_train]), (vx, vy), (sx, sy), info
        )
    else:
        import sys

        from safetensors.torch import load_file

        sys.path.insert(0, str(ROOT))
        from sample_models import models

        model = getattr(models, name)()
        model.load_state_dict(load_file(ROOT / "sample_models" / name / "model.safetensors"))
        model.eval()

        def split(s: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
            z = np.load(ROOT / "sample_models" / name / f"{s}.npz")
            return torch.from_numpy(z["x"][:n]), torch.from_numpy(z["y"][:n])

        lik = "regression" if name == "diabetes_mlp" else "classification"
        bench = Bench(
            name, model, lik, split("train", n_train), split("val", n_test),
            split("test", n_test), {},
        )  # fmt: skip
    if bench.likelihood == "classification":
        bench.info["test_accuracy"] = round(_accuracy(bench.model, *bench.test), 4)
    if has_batchnorm(bench.model):
        bench.info["twin_rel_err"] = check_twin(bench.model, bench.test[0][:64])
    return bench
