"""Tiny models saved in every checkpoint form `laplace fit` takes, with data specs to fit them on.

Used by `test_advertised_matrix.py`. Everything is built at test time in a temporary folder:

* an MLP 6 → 8 → k (tanh), k = 1, 2 or 3 outputs, saved as a `torch.export` archive (`.pt2`),
  a scripted and a traced TorchScript archive, safetensors and a `torch.save`'d state dict (both
  with the factory `nets.py:mlp` written next to them, passed as `path/to/nets.py:mlp`), and a
  pickled module (`nn.Sequential` of torch classes, so unpickling needs no user module);
* a Hugging Face model folder: a randomly initialised BertForSequenceClassification (hidden 4,
  one layer, vocabulary of the tiny local tokenizer of `tests/laplace/test_llm.py`; no download);
* data specs (40 train / 20 val / 20 test rows): 6 numeric features in `.npz` splits for the
  MLP, short snippets in `.jsonl` splits for BERT.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

N_FEATURES = 6
HIDDEN = 8
ROWS = {"train": 40, "val": 20, "test": 20}
MLP_FORMS = ("export", "scripted", "traced", "safetensors", "state_dict", "pickle")
HF_FORM = "hf"
WORDS = ["good", "bad", "movie", "very", "not"]

FACTORY_SOURCE = f'''"""The factory `--model-factory path/to/nets.py:mlp` names."""
import torch
from torch import nn


def mlp(n_out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear({N_FEATURES}, {HIDDEN}), nn.Tanh(), nn.Linear({HIDDEN}, n_out))
'''


@dataclass(frozen=True)
class Likelihood:
    """A likelihood of `fit --likelihood` with the number of model outputs it is tried with."""

    name: str  # the CLI's value
    n_out: int
    id: str

    def targets(self, n: int, g: torch.Generator) -> torch.Tensor:
        if self.name == "classification":
            return torch.randint(0, self.n_out, (n,), generator=g)
        if self.name == "binary":
            return torch.randint(0, 2, (n, self.n_out), generator=g).float()
        return torch.randn(n, self.n_out, generator=g)


CLASSIFICATION = Likelihood("classification", 3, "classification")
REGRESSION = Likelihood("regression", 1, "regression")
REGRESSION_2 = Likelihood("regression", 2, "regression-2out")
BINARY = Likelihood("binary", 2, "binary")
# A text split's target is one number per row (a class or a value), so BERT's binary head has a
# single output; multi-output targets are tried on the MLP (REGRESSION_2, BINARY).
BINARY_TEXT = Likelihood("binary", 1, "binary")


@dataclass
class Checkpoint:
    """A saved model: the MODEL argument, the options it needs, and its parameter counts."""

    path: Path
    options: list[str]
    n_params: int  # trainable parameters ("all")
    n_last_layer: int  # parameters of the last nn.Linear


@dataclass
class World:
    """Every checkpoint form and data spec, built once per test module."""

    root: Path
    data: dict[str, Path] = field(default_factory=dict)  # likelihood id → data spec
    text_data: dict[str, Path] = field(default_factory=dict)
    checkpoints: dict[tuple[str, int], Checkpoint] = field(default_factory=dict)  # (form, n_out)
    hf: dict[str, Checkpoint] = field(default_factory=dict)  # likelihood id → HF folder

    def checkpoint(self, form: str, lik: Likelihood) -> Checkpoint:
        if form == HF_FORM:
            return self.hf[lik.id]
        return self.checkpoints[(form, lik.n_out)]

    def data_spec(self, form: str, lik: Likelihood) -> Path:
        return self.text_data[lik.id] if form == HF_FORM else self.data[lik.id]


def _mlp(n_out: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, n_out)).eval()


def write_tabular_data(root: Path, lik: Likelihood) -> Path:
    g = torch.Generator().manual_seed(1)
    lines = [f"task: {lik.name}", "batch_size: 16", "splits:"]
    for split, n in ROWS.items():
        x = torch.randn(n, N_FEATURES, generator=g)
        name = f"{lik.id}_{split}.npz"
        np.savez(root / name, x=x.numpy(), y=lik.targets(n, g).numpy())
        lines.append(f"  {split}: {{path: {name}, x: x, y: y}}")
    spec = root / f"{lik.id}.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def write_text_data(root: Path, lik: Likelihood) -> Path:
    g = torch.Generator().manual_seed(2)
    lines = [f"task: {lik.name}", "batch_size: 16", "splits:"]
    if lik.name == "classification":
        lines.insert(1, f"n_classes: {lik.n_out}")
    for split, n in ROWS.items():
        rows = []
        y = lik.targets(n, g).reshape(n).tolist()
        for i in range(n):
            k = int(torch.randint(1, 6, (1,), generator=g))
            words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=g)]
            rows.append({"id": f"{split}{i}", "text": " ".join(words), "label": y[i]})
        name = f"text_{lik.id}_{split}.jsonl"
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        lines.append(
            f"  {split}: {{path: {name}, text: text, y: label, tokenizer: tok, max_length: 8}}"
        )
    spec = root / f"text_{lik.id}.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def save_mlp_forms(root: Path, n_out: int) -> dict[str, Checkpoint]:
    from safetensors.torch import save_file

    folder = root / f"mlp{n_out}"
    folder.mkdir()
    model = _mlp(n_out)
    n_params = sum(p.numel() for p in model.parameters())
    n_last = HIDDEN * n_out + n_out
    factory = [
        "--model-factory",
        f"{root / 'nets.py'}:mlp",
        "--model-kwargs",
        json.dumps({"n_out": n_out}),
    ]
    x = torch.randn(4, N_FEATURES)
    save_file(model.state_dict(), folder / "model.safetensors")
    torch.save(model.state_dict(), folder / "state_dict.pt")
    torch.save(model, folder / "pickle.pt")
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program, folder / "model.pt2")
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript, but users still hand us such archives.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), folder / "scripted.pt")
        torch.jit.save(torch.jit.trace(model, x), folder / "traced.pt")
    paths = {
        "export": (folder / "model.pt2", []),
        "scripted": (folder / "scripted.pt", []),
        "traced": (folder / "traced.pt", []),
        "safetensors": (folder / "model.safetensors", factory),
        "state_dict": (folder / "state_dict.pt", factory),
        "pickle": (folder / "pickle.pt", ["--trust-checkpoint"]),
    }
    return {form: Checkpoint(p, opts, n_params, n_last) for form, (p, opts) in paths.items()}


def save_hf_folder(root: Path, lik: Likelihood) -> Checkpoint:
    from transformers import BertConfig, BertForSequenceClassification

    problem = {
        "classification": "single_label_classification",
        "regression": "regression",
        "binary": "multi_label_classification",
    }[lik.name]
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=10,  # the tiny tokenizer's 10 words
        hidden_size=4,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=8,
        num_labels=lik.n_out,
        problem_type=problem,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    folder = root / f"hf_{lik.id}"
    model.save_pretrained(str(folder))
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Checkpoint(folder, [], n_params, 4 * lik.n_out + lik.n_out)


def build_world(root: Path, with_hf: bool) -> World:
    world = World(root)
    (root / "nets.py").write_text(FACTORY_SOURCE)
    for lik in (CLASSIFICATION, REGRESSION, REGRESSION_2, BINARY):
        world.data[lik.id] = write_tabular_data(root, lik)
    for n_out in sorted({lik.n_out for lik in (CLASSIFICATION, REGRESSION, REGRESSION_2, BINARY)}):
        for form, ckpt in save_mlp_forms(root, n_out).items():
            world.checkpoints[(form, n_out)] = ckpt
    if with_hf:
        from tests.laplace.test_llm import write_tokenizer

        write_tokenizer(root / "tok")
        for lik in (CLASSIFICATION, REGRESSION, BINARY_TEXT):
            world.text_data[lik.id] = write_text_data(root, lik)
            world.hf[lik.id] = save_hf_folder(root, lik)
    return world
