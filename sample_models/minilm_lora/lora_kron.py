"""K-FAC (reduce) Laplace over the LoRA adapter of the MiniLM sample, on a slice of the data.

The recipe uses the last layer (forward passes only); this script shows the "all trainable
weights" path on the real model: 24 LoRA A/B matrices (one Kronecker block each, inputs reduced
over the sequence) plus the head, 74,498 parameters. It fits on the first `--n-train` training
snippets, tunes the prior precision by marginal likelihood, and scores MAP vs Laplace (GLM,
probit) on the first `--n-test` test snippets. Prints JSON with fit time and peak memory.

    python sample_models/minilm_lora/lora_kron.py --n-train 256 --n-test 256
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from laplace_cli import Laplace
from laplace_cli.core.batches import split_batch
from laplace_cli.io.checkpoints import load_model
from laplace_cli.io.datasets import load_dataset_spec, load_split

HERE = Path(__file__).resolve().parent


def scores(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    conf, pred = probs.max(-1)
    onehot = torch.nn.functional.one_hot(y, probs.shape[1]).to(probs.dtype)
    return {
        "acc": (pred == y).double().mean().item(),
        "nll": -probs[torch.arange(len(y)), y].clamp_min(1e-12).log().mean().item(),
        "brier": ((probs - onehot) ** 2).sum(-1).mean().item(),
        "mean_conf": conf.mean().item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--n-test", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--structure", default="kron")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, _ = load_model(HERE / "adapter")
    spec = load_dataset_spec(HERE / "data.yaml")
    train, test = load_split(spec, "train"), load_split(spec, "test")

    def loader(ds, n):
        return DataLoader(Subset(ds, range(n)), batch_size=args.batch_size, collate_fn=ds.collate)

    la = Laplace(model, "classification", "all", args.structure, kron_approx="reduce")
    start = time.perf_counter()
    la.fit(loader(train, args.n_train))
    fit_s = time.perf_counter() - start
    la.optimize_prior_precision(method="marglik")
    rows: dict[str, dict[str, float]] = {}
    probs_map, probs_la, ys = [], [], []
    start = time.perf_counter()
    for batch in loader(test, args.n_test):
        x, y = split_batch(batch)
        with torch.no_grad():
            probs_map.append(torch.softmax(la.subset.output(x), -1))
        probs_la.append(la(x, pred_type="glm", link_approx="probit").detach())
        ys.append(y)
    pred_s = time.perf_counter() - start
    y = torch.cat(ys)
    rows["map"] = scores(torch.cat(probs_map).double(), y)
    rows["laplace"] = scores(torch.cat(probs_la).double(), y)
    print(
        json.dumps(
            {
                "structure": args.structure,
                "kron_approx": "reduce",
                "n_params": la.n_params,
                "n_train": args.n_train,
                "n_test": args.n_test,
                "fit_seconds": round(fit_s, 1),
                "predict_seconds": round(pred_s, 1),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "prior_precision": la.prior_precision.tolist(),
                "log_marglik": la.log_marginal_likelihood().item(),
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
