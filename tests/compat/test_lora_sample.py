"""laplace-torch's LoRA code sample, run as written (module renamed) on a tiny random GPT-2.

The sample's model takes the whole dict batch, `forward(self, data)`, as laplace-torch passes
it; `batches.passes_mapping` gives such a model the mapping and a Hugging Face style model the
keywords. The only change from the sample: the GPT-2 comes from a tiny local config with random
weights (nothing is downloaded), and the loader is a list of dict batches.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from laplace_cli import Laplace  # noqa: E402
from laplace_cli.curvature import AsdlGGN  # noqa: E402

VOCAB, SEQ, N = 40, 6, 12


def _config():
    config = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ
    )
    config.pad_token_id = 0
    config.num_labels = 2
    return config


class MyGPT2(nn.Module):
    def __init__(self):
        super().__init__()
        self.hf_model = transformers.GPT2ForSequenceClassification(_config())

    def forward(self, data):
        device = next(self.parameters()).device
        input_ids = data["input_ids"].to(device)
        attn_mask = data["attention_mask"].to(device)
        return self.hf_model(input_ids=input_ids, attention_mask=attn_mask).logits


def _batches():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (N, SEQ), generator=g)
    mask = torch.ones(N, SEQ, dtype=torch.long)
    mask[::3, -2:] = 0  # some right padding
    ids[mask == 0] = 0
    labels = torch.randint(0, 2, (N,), generator=g)
    return [
        {
            "input_ids": ids[i : i + 4],
            "attention_mask": mask[i : i + 4],
            "labels": labels[i : i + 4],
        }
        for i in range(0, N, 4)
    ]


def _lora_model():
    torch.manual_seed(0)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], lora_dropout=0.0)
    return peft.get_peft_model(MyGPT2(), config).double()


def test_lora_sample_runs_and_matches_laplace_torch():
    lora_model = _lora_model()
    train_loader = _batches()
    lora_la = Laplace(
        lora_model,
        likelihood="classification",
        subset_of_weights="all",
        hessian_structure="diag",
        backend=AsdlGGN,
    )
    lora_la.fit(train_loader)
    test_data = next(iter(train_loader))
    lora_pred = lora_la(test_data)
    assert lora_pred.shape == (4, 2)
    assert torch.allclose(lora_pred.sum(-1), torch.ones(4, dtype=lora_pred.dtype))

    laplace = pytest.importorskip("laplace")
    curv = pytest.importorskip("laplace.curvature")

    class Loader(list):
        dataset = list(range(N))  # laplace-torch reads N from `len(loader.dataset)`

    ref = laplace.Laplace(
        _lora_model(),
        likelihood="classification",
        subset_of_weights="all",
        hessian_structure="diag",
        backend=curv.CurvlinopsGGN,
    )
    ref.fit(Loader(train_loader))
    torch.testing.assert_close(
        # the diag posterior precision is the vector (P,), as laplace-torch's
        lora_la.posterior_precision,
        ref.posterior_precision,
        rtol=1e-4,
        atol=1e-8,
    )
    ref_pred = ref(test_data, pred_type="glm", link_approx="probit")
    torch.testing.assert_close(lora_pred, ref_pred, rtol=1e-4, atol=1e-8)


def test_keyword_model_still_gets_keywords():
    """A Hugging Face style forward (several named inputs) is called as `model(**batch)`."""

    class KwModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = MyGPT2()

        def forward(self, input_ids, attention_mask=None):
            return self.inner({"input_ids": input_ids, "attention_mask": attention_mask})

    torch.manual_seed(0)
    model = KwModel().double()
    for p in model.parameters():
        p.requires_grad_(False)
    model.inner.hf_model.score.weight.requires_grad_(True)
    la = Laplace(model, "classification", "all", "diag").fit(_batches())
    inputs = {k: v for k, v in _batches()[0].items() if k != "labels"}  # no `labels` keyword
    assert la(inputs).shape == (4, 2)
