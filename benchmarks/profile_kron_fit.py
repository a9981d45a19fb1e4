"""Timing of the all-weights diag / kron fit (and GLM prediction) on BatchNorm conv nets.

A Fashion-MNIST-shaped CNN (two conv+BN blocks) and a small ResNet (BN + skip connections),
random init, random 1×28×28 inputs; this project against laplace-torch 0.3 on the BN-folded
twin (laplace-torch cannot K-FAC BatchNorm), alternating, median of `--repeats`. "passes" is the
time of one forward+backward epoch over the same data. Not a test; prints a table (and JSON
with --json).

    python benchmarks/profile_kron_fit.py [--models cnn,resnet] [--structures diag,kron]
        [--n 1024] [--batch 128] [--repeats 3] [--predict] [--profile kron:cnn]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F


class CNN(nn.Module):
    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3)
        self.b1 = nn.BatchNorm2d(32) if bn else nn.Identity()
        self.c2 = nn.Conv2d(32, 64, 3)
        self.b2 = nn.BatchNorm2d(64) if bn else nn.Identity()
        self.l1 = nn.Linear(64 * 5 * 5, 64)
        self.l2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.l2(F.relu(self.l1(x.flatten(1))))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, bn: bool) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not bn)
        self.b1 = norm(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not bn)
        self.b2 = norm(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not bn), norm(cout))

    def forward(self, x):
        out = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(out + (x if self.short is None else self.short(x)))


class ResNet(nn.Module):
    """ResNet-(6n+2)-style: 3 stages of n blocks, 16/32/64 channels."""

    def __init__(self, n: int = 3, bn: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, 1, 1, bias=not bn)
        self.bn = nn.BatchNorm2d(16) if bn else nn.Identity()
        blocks, cin = [], 16
        for i, c in enumerate((16, 32, 64)):
            for j in range(n):
                blocks.append(Block(cin, c, 2 if (i > 0 and j == 0) else 1, bn))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BN statistics and affine parameters (as after training)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))


def fold_bn(model: nn.Module, folded: nn.Module) -> nn.Module:
    """Copy `model` into `folded` (same architecture without BN), each BN folded into its conv."""
    mods = dict(model.named_modules())
    fmods = dict(folded.named_modules())
    convs = [(n, m) for n, m in mods.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    names = list(mods)
    for name, conv in convs:
        target = fmods[name]
        w = conv.weight.detach().clone()
        b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(w.shape[0])
        # The BN that follows a conv is the next module in registration order.
        nxt = names[names.index(name) + 1] if names.index(name) + 1 < len(names) else None
        bn = mods.get(nxt) if nxt else None
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            w = w * s.reshape(-1, 1, 1, 1)
            b = bn.bias.detach() + (b - bn.running_mean) * s
        with torch.no_grad():
            target.weight.copy_(w)
            target.bias.copy_(b)
    return folded


def build(name: str, resnet_n: int) -> tuple[nn.Module, nn.Module]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "cnn":
        model, twin = CNN(True), CNN(False)
    else:
        model, twin = ResNet(resnet_n, True), ResNet(resnet_n, False)
    randomise_bn(model, gen)
    model.eval()
    fold_bn(model, twin).eval()
    return model, twin


#: "wall" or "cpu": process CPU time (all threads) is steadier on a machine shared with other
#: jobs; compare ratios, not absolute values, across the two.
CLOCK = {"fn": time.perf_counter}


def timed(fn, repeats: int) -> list[float]:
    out = []
    clock = CLOCK["fn"]
    for _ in range(repeats):
        t = clock()
        fn()
        out.append(clock() - t)
    return out


def fit(cls, model: nn.Module, structure: str, loader):
    la = cls(model, "classification", subset_of_weights="all", hessian_structure=structure)
    la.fit(loader)  # laplace-torch's fit returns None
    return la


def fit_and_marglik(cls, model: nn.Module, structure: str, loader) -> float:
    """fit, then the log marginal likelihood: both libraries eigendecompose K-FAC factors on
    first use, so this row includes that cost where plain "fit" does not."""
    return float(fit(cls, model, structure, loader).log_marginal_likelihood())


def predict(la, X: torch.Tensor) -> torch.Tensor:
    return la(X, pred_type="glm", link_approx="probit")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn,resnet")
    ap.add_argument("--structures", default="diag,kron")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resnet-n", type=int, default=3, help="blocks per stage (3: ResNet-20)")
    ap.add_argument("--no-torch-laplace", action="store_true")
    ap.add_argument("--predict", action="store_true", help="also time GLM probit prediction")
    ap.add_argument("--profile", default="", help="structure:model to cProfile, e.g. kron:cnn")
    ap.add_argument("--json", default="")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args()
    if args.clock == "cpu":
        CLOCK["fn"] = time.process_time

    from laplace_cli import Laplace

    gen = torch.Generator().manual_seed(1)
    X = torch.randn(args.n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (args.n,), generator=gen)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=args.batch, shuffle=False
    )
    rows = []
    for mname in args.models.split(","):
        model, twin = build(mname, args.resnet_n)
        with torch.no_grad():
            assert torch.allclose(model(X[:64]), twin(X[:64]), atol=1e-4), "BN fold is wrong"
        n_params = sum(p.numel() for p in model.parameters())

        def epoch(model=model):
            for xb, yb in loader:
                model.zero_grad()
                F.cross_entropy(model(xb), yb, reduction="sum").backward()

        t_pass = statistics.median(timed(epoch, args.repeats))
        print(f"{mname}: {n_params} params; one fwd+bwd epoch {t_pass:.3f}s", flush=True)
        for structure in args.structures.split(","):
            ours_fit = partial(fit, Laplace, model, structure, loader)
            if args.profile == f"{structure}:{mname}":
                prof = cProfile.Profile()
                prof.enable()
                ours_fit()
                prof.disable()
                pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
                pstats.Stats(prof).sort_stats("tottime").print_stats(20)
            for what, fn in (("fit", fit), ("fit+lml", fit_and_marglik)):
                t_ours, t_lt = [], []
                for _ in range(args.repeats):
                    t_ours += timed(partial(fn, Laplace, model, structure, loader), 1)
                    if not args.no_torch_laplace:
                        import laplace

                        t_lt += timed(partial(fn, laplace.Laplace, twin, structure, loader), 1)
                ours = statistics.median(t_ours)
                lt = statistics.median(t_lt) if t_lt else float("nan")
                row = {
                    "model": mname,
                    "params": n_params,
                    "what": f"{what} {structure}",
                    "ours_s": ours,
                    "laplace_torch_s": lt,
                    "speedup": lt / ours,
                    "passes": ours / t_pass,
                }
                rows.append(row)
                print(
                    f"  {what:7s} {structure:5s} ours {ours:7.3f}s  laplace-torch {lt:7.3f}s  "
                    f"speedup {lt / ours:5.2f}x  passes {ours / t_pass:5.1f}",
                    flush=True,
                )
            if args.predict:
                la = fit(Laplace, model, structure, loader)
                Xp = X[:256]
                t_ours = timed(partial(predict, la, Xp), args.repeats)
                t_lt = []
                if not args.no_torch_laplace:
                    import laplace

                    lt_la = fit(laplace.Laplace, twin, structure, loader)
                    t_lt = timed(partial(predict, lt_la, Xp), args.repeats)
                ours = statistics.median(t_ours)
                lt = statistics.median(t_lt) if t_lt else float("nan")
                rows.append(
                    {
                        "model": mname,
                        "params": n_params,
                        "what": f"glm {structure}",
                        "ours_s": ours,
                        "laplace_torch_s": lt,
                        "speedup": lt / ours,
                    }
                )
                print(
                    f"  glm {structure:5s} ours {ours:7.3f}s  laplace-torch {lt:7.3f}s  "
                    f"speedup {lt / ours:5.2f}x  (256 inputs)",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
