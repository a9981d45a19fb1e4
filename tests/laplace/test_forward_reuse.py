"""One forward pass per batch where the work allows it.

* `LastLayer.reuse_forward`: within the block, the MAP outputs, the model check, the predictive
  (its one-row probe and its row chunks included) of the same batch share one forward pass;
  a new batch, a modified input or leaving the block computes afresh; results are unchanged.
* `evaluation.collect_outputs` runs the model once per batch for a last-layer posterior.
* Text splits loaded with `by_length=True` (fit, tune, evaluate) batch rows of similar length.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_cli import Laplace
from laplace_cli.pipeline.evaluation import collect_outputs
from laplace_cli.pipeline.stages import PredictOptions
from laplace_cli.subsets.base import iter_rows


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.head = nn.Linear(8, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.head(self.body(x))


def fitted() -> tuple[Laplace, Counting, DataLoader]:
    model = Counting()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    la = Laplace(model, "classification", "last_layer", "kron")
    la.fit(loader)
    return la, model, loader


def test_reuse_forward_shares_one_pass_per_batch_and_changes_no_result() -> None:
    la, model, _ = fitted()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    model.calls = 0
    f_plain = la.subset.output(x)
    mu_plain, var_plain = la.functional_variance(x)
    plain_calls = model.calls
    assert plain_calls >= 2
    model.calls = 0
    with la.subset.reuse_forward():
        f = la.subset.output(x)
        mu, var = la.functional_variance(x)
        for chunk in iter_rows(x, 4):  # row slices of the batch come from the memo
            la.subset.output(chunk)
        assert model.calls == 1
        torch.testing.assert_close(f, f_plain)
        torch.testing.assert_close(mu, mu_plain)
        torch.testing.assert_close(var, var_plain)
        la.subset.output(x.clone())  # another tensor: a new pass
        assert model.calls == 2
        x2 = x.clone()
        la.subset.output(x2)
        x2.add_(1.0)  # modified in place: the memo no longer applies
        torch.testing.assert_close(la.subset.output(x2), model(x2).detach())
    calls = model.calls
    la.subset.output(x)  # outside the block nothing is kept
    assert model.calls == calls + 1 and la.subset._memo is None


def test_collect_outputs_runs_the_model_once_per_batch() -> None:
    la, model, loader = fitted()
    model.calls = 0
    out = collect_outputs(la, loader, PredictOptions())
    assert model.calls == len(loader)
    assert out.f_map.shape == (40, 3) and out.probs.shape == (40, 3)
    model.calls = 0
    plain = torch.cat([la.subset.output(x) for x, _ in loader])
    torch.testing.assert_close(out.f_map, plain)


def test_text_splits_by_length_batch_similar_lengths(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from laplace_cli.io.datasets import load_dataset_spec, make_loader
    from tests.laplace.test_llm import write_tokenizer

    write_tokenizer(tmp_path / "tok")
    texts = ["good movie very bad", "bad", "very very good movie not bad", "not good", "movie"]
    rows = [{"id": f"r{i}", "text": t, "label": i % 2} for i, t in enumerate(texts)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "data.yaml").write_text(
        "task: classification\nsplits:\n  train: {path: r.jsonl, text: text, y: label, tokenizer: tok}\n"
    )
    spec = load_dataset_spec(tmp_path / "data.yaml")
    plain = make_loader(spec, "train", batch_size=2)
    grouped = make_loader(spec, "train", batch_size=2, by_length=True)
    assert plain.dataset.ids == ["r0", "r1", "r2", "r3", "r4"]
    assert grouped.dataset.ids == ["r1", "r4", "r3", "r0", "r2"]  # 3, 3, 4, 6, 8 tokens (stable)
    widths = [b["input_ids"].shape[1] for b in grouped]
    assert widths == [3, 6, 8]
    labels = torch.cat([b["labels"] for b in grouped]).tolist()
    assert labels == [1, 0, 1, 0, 0]
    padded = lambda loader: sum(int((b["attention_mask"] == 0).sum()) for b in loader)  # noqa: E731
    assert padded(grouped) < padded(plain)
    assert make_loader(spec, "train", shuffle=True, by_length=True).dataset.ids[0] == "r0"
