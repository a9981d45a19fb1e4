"""Large vocabularies: last-layer Laplace on a per-token GPT-2 LM, and MC-Fisher kron cost vs C.

1. ``lm``: a tiny GPT-2 (transformers ``GPT2Model`` from a config, random init, no hub) with its
   own linear head over a vocabulary of ``--vocab`` (default 5000) tokens. Per-token outputs
   are flattened to rows by this script's wrapper, (B·T, V): the dense-output support of
   issue #22 part 1 (``output_positions``) flattens positions into the class axis instead, and
   the rows form is what the last-layer closed form wants. Last-layer kron (GGN) is fitted on
   ``--train-seqs`` sequences of ``--seq-len`` tokens, then the probit GLM predictive of every
   token of ``--test-seqs`` sequences. The generic (per-class) path would hold a Hessian root
   (rows, V, V) per batch; its size is printed, it is not run.
2. ``mc_vs_c``: a token MLP (frozen embedding, two trainable Linear layers of width 64, a head
   of C classes), kron over all trainable weights with ``curvature="mc_fisher"`` (1 sample),
   at C = 100, 1000, 5000, on the same token rows; the exact GGN path at C = 100, 1000 for
   comparison. Fit seconds, peak RSS, and the C×C factor's eigendecomposition time alone.

Peak memory: VmHWM reset before each phase (/proc/self/clear_refs; ru_maxrss where refused), so
a phase's peak is the process's highest RSS during it, model and data included.

    python benchmarks/large_vocab.py            # ~2-4 min on 2 CPU cores
    python benchmarks/large_vocab.py --vocab 5000 --train-seqs 32

Prints a table and writes benchmarks/results/large_vocab.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

SCHEMA = 1


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    hwm = _status_kib("VmHWM")
    kib = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024.0


def _rss_mib() -> float:
    return (_status_kib("VmRSS") or 0) / 1024.0


class FlatTokenLM(nn.Module):
    """GPT-2 body + linear head; (B, T) token ids → (B·T, V) next-token logits (rows)."""

    def __init__(self, vocab: int, seq_len: int) -> None:
        super().__init__()
        import transformers

        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            vocab_size=vocab, n_positions=seq_len, n_embd=64, n_layer=2, n_head=2
        )
        self.body = transformers.GPT2Model(config)
        self.head = nn.Linear(64, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.body(input_ids=ids).last_hidden_state  # (B, T, d)
        return self.head(h.reshape(-1, h.shape[-1]))


class TokenMLP(nn.Module):
    """Frozen embedding, two trainable Linear layers, head of C classes; (N,) ids → (N, C)."""

    def __init__(self, vocab: int, classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, 32)
        self.emb.weight.requires_grad_(False)
        self.net = nn.Sequential(
            nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, classes)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.net(self.emb(ids))


def _timed_finalize(la) -> list[float]:
    """Time the posterior's finalize (the kron factors' eigendecompositions) inside `fit`."""
    spent: list[float] = []
    inner = la.posterior.finalize

    def finalize() -> None:
        t0 = time.perf_counter()
        inner()
        spent.append(time.perf_counter() - t0)

    la.posterior.finalize = finalize
    return spent


def bench_lm(args: argparse.Namespace, structure: str) -> dict:
    from laplace_cli import Laplace

    g = torch.Generator().manual_seed(0)
    V, T = args.vocab, args.seq_len
    seqs = torch.randint(0, V, (args.train_seqs + args.test_seqs, T + 1), generator=g)
    x, y = seqs[:, :-1], seqs[:, 1:]
    model = FlatTokenLM(V, T).eval()
    bs = args.batch_seqs
    train = [(x[i : i + bs], y[i : i + bs].reshape(-1)) for i in range(0, args.train_seqs, bs)]
    test_x = x[args.train_seqs :]
    rows_per_batch = bs * T
    out: dict = {
        "structure": structure,
        "vocab": V,
        "seq_len": T,
        "train_tokens": args.train_seqs * T,
        "test_tokens": args.test_seqs * T,
        "head_params": sum(p.numel() for p in model.head.parameters()),
        "generic_root_bytes_per_batch": rows_per_batch * V * V * 4,
    }
    _reset_peak()
    base = _rss_mib()
    t0 = time.perf_counter()
    la = Laplace(model, "classification", "last_layer", structure, last_layer_name="head")
    spent = _timed_finalize(la)
    la.fit(train)
    out["fit_s"] = time.perf_counter() - t0
    out["finalize_s"] = sum(spent)
    out["fit_peak_mib"] = _peak_mib()
    out["rss_before_fit_mib"] = base
    out["closed_form"] = bool(la.softmax_closed_form())
    _reset_peak()
    t0 = time.perf_counter()
    probs = torch.cat([la(test_x[i : i + bs]) for i in range(0, args.test_seqs, bs)])
    out["predict_s"] = time.perf_counter() - t0
    out["predict_peak_mib"] = _peak_mib()
    out["predict_shape"] = list(probs.shape)
    out["probs_rows_sum_to_one"] = bool(torch.allclose(probs.sum(-1), torch.ones(len(probs))))
    out["mean_max_prob"] = float(probs.max(-1).values.mean())
    _, var = la.functional_variance_diag(test_x[:1])
    out["var_shape_one_seq"] = list(var.shape)
    out["var_min"] = float(var.min())
    return out


def bench_mc_vs_c(args: argparse.Namespace, on_row=lambda row: None) -> list[dict]:
    from laplace_cli import Laplace

    g = torch.Generator().manual_seed(1)
    n = args.mc_rows
    ids = torch.randint(0, 1000, (n,), generator=g)
    rows = []
    for C in args.classes:
        y = torch.randint(0, C, (n,), generator=g)
        loader = [
            (ids[i : i + args.mc_batch], y[i : i + args.mc_batch])
            for i in range(0, n, args.mc_batch)
        ]
        for curvature in ("mc_fisher", "ggn"):
            if curvature == "ggn" and C > args.ggn_max_classes:
                continue
            model = TokenMLP(1000, C).eval()
            _reset_peak()
            t0 = time.perf_counter()
            la = Laplace(model, "classification", "all", "kron", curvature=curvature)
            spent = _timed_finalize(la)
            la.fit(loader)
            fit_s = time.perf_counter() - t0
            peak = _peak_mib()
            eig_s = sum(spent)
            rows.append(
                {
                    "classes": C,
                    "curvature": curvature,
                    "fit_s": fit_s,
                    "finalize_s": eig_s,
                    "accumulate_s": max(fit_s - eig_s, 0.0),
                    "peak_mib": peak,
                    "rows": n,
                }
            )
            on_row(rows[-1])
            print(
                f"  C={C:5d} {curvature:9s} fit {fit_s:7.2f}s (eigendecompositions {eig_s:5.2f}s) "
                f"peak {peak:7.0f} MiB",
                flush=True,
            )
    return rows


def _slope(rows: list[dict], key: str, curvature: str) -> float | None:
    pts = [(r["classes"], r[key]) for r in rows if r["curvature"] == curvature and r[key] > 0]
    if len(pts) < 2:
        return None
    (c0, t0), (c1, t1) = pts[-2], pts[-1]
    return math.log(t1 / t0) / math.log(c1 / c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--vocab", type=int, default=5000)
    ap.add_argument("--lm-structures", nargs="*", default=["diag", "kron"])
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--train-seqs", type=int, default=64)
    ap.add_argument("--test-seqs", type=int, default=16)
    ap.add_argument("--batch-seqs", type=int, default=8)
    ap.add_argument("--classes", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--mc-rows", type=int, default=2048)
    ap.add_argument("--mc-batch", type=int, default=256)
    ap.add_argument("--ggn-max-classes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "large_vocab.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")
    result: dict = {
        "schema": SCHEMA,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "load_average": list(load),
        # False: /proc/self/clear_refs was refused, each peak is the process's peak so far.
        "peak_is_per_phase": _reset_peak(),
        "lm_last_layer": [],
        "note": (
            "per-token outputs flattened to rows (B*T, V) by the benchmark's wrapper; "
            "the C x C kron factor of the head is O(C^2) memory and its eigendecomposition "
            "O(C^3) time whatever the curvature: finalize_s times the eigendecompositions"
        ),
    }

    def save() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    for structure in args.lm_structures:
        print(f"1. per-token GPT-2 LM, vocab {args.vocab}, last-layer {structure} (GGN)")
        lm = bench_lm(args, structure)
        print(
            f"  fit {lm['fit_s']:.2f}s (eigendecompositions {lm['finalize_s']:.2f}s) peak "
            f"{lm['fit_peak_mib']:.0f} MiB ({lm['train_tokens']} tokens); predict "
            f"{lm['predict_s']:.2f}s peak {lm['predict_peak_mib']:.0f} MiB "
            f"({lm['test_tokens']} tokens); closed form: {lm['closed_form']}; the generic "
            f"path's Hessian root alone would be "
            f"{lm['generic_root_bytes_per_batch'] / 2**30:.1f} GiB per batch",
            flush=True,
        )
        result["lm_last_layer"].append(lm)
        save()
    print("2. kron over all trainable weights of a token MLP, cost vs C")
    partial: list[dict] = []
    result["mc_vs_classes"] = partial  # saved after every row
    rows = bench_mc_vs_c(args, lambda row: (partial.append(row), save()))
    slopes = {
        "mc_accumulate": _slope(rows, "accumulate_s", "mc_fisher"),
        "mc_fit": _slope(rows, "fit_s", "mc_fisher"),
        "ggn_fit": _slope(rows, "fit_s", "ggn"),
    }
    print(
        f"  log-log slopes (last two C): {json.dumps({k: None if v is None else round(v, 2) for k, v in slopes.items()})}"
    )
    result.update(mc_vs_classes=rows, slopes=slopes, load_average_end=list(os.getloadavg()))
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
