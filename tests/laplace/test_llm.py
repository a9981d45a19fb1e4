"""Laplace on LoRA-adapted transformers: tiny random BERT + PEFT LoRA, built here (no download).

References are brute force in float64: the exact GGN J_ᵀ Λ J from `torch.func.jacrev` over the
LoRA parameters, and an independent "reduce" Kronecker computed from hooks and a bias-like probe
(∂f/∂ε for z_t + ε equals Σ_t ∂f/∂z_t).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from laplace_cli import Laplace  # noqa: E402
from laplace_cli.core.batches import call_model  # noqa: E402
from laplace_cli.core.errors import BadInputError  # noqa: E402
from laplace_cli.io.checkpoints import load_model  # noqa: E402
from laplace_cli.io.datasets import load_dataset_spec, make_loader  # noqa: E402
from laplace_cli.io.hf import CausalLMLogits  # noqa: E402
from tests import reference as ref  # noqa: E402

N_CLASSES = 3
VOCAB = 100


def tiny_lora_bert(seed: int = 0, save_base_to: Path | None = None) -> nn.Module:
    """BERT (hidden 16, 2 layers, vocab 100) for 3 classes, LoRA r=2 on query/value, head trained.

    `save_base_to`: also save the base model (before LoRA is injected) as a Hugging Face folder.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=N_CLASSES,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    base = BertForSequenceClassification(cfg)
    if save_base_to is not None:
        base.save_pretrained(str(save_base_to))
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=2,
        lora_alpha=4,
        lora_dropout=0.1,
        target_modules=["query", "value"],
    )
    model = get_peft_model(base, lora)
    # PEFT initialises lora_B at zero (so Jacobians of lora_A vanish); move off that point.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return model.double().eval()


def batch(n: int, length: int, seed: int = 1, pad_last: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    if pad_last:
        ids[-1, -pad_last:] = 0
        mask[-1, -pad_last:] = 0
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": y}


def lora_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def dense_ggn(model: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n over the trainable parameters, in parameter order."""
    params = {k: v.detach() for k, v in lora_params(model).items()}
    x = {k: v for k, v in b.items() if k != "labels"}

    def f(p):
        return functional_call(model, p, (), x).logits  # (N, C)

    jac = jacrev(f)(params)
    J = torch.cat([jac[k].reshape(*jac[k].shape[:2], -1) for k in params], -1)  # (N, C, P)
    prob = torch.softmax(f(params), -1)
    lam = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]  # (N, C, C)
    return torch.einsum("ncp,ncd,ndq->pq", J, lam, J)


def group_slices(la: Laplace) -> list[slice]:
    out, start = [], 0
    for g in la.subset.groups:
        out.append(slice(start, start + g.numel))
        start += g.numel
    return out


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    err = (actual - expected).abs()
    scale = expected.abs().max().clamp_min(1e-12)
    assert err.max() <= 1e-5 * scale, (
        f"{what}: max abs error {err.max():.3e} (rel {err.max() / scale:.3e}) at "
        f"{tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))}"
    )


# --------------------------------------------------------------------------- subset, gradients


def test_subset_is_lora_and_head_only_and_frozen_weights_get_no_grad(float64):
    model = tiny_lora_bert()
    b = batch(4, 6)
    la = Laplace(model, "classification", "all", "kron", kron_approx="reduce")
    names = la.subset.names
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and not set(frozen) & set(names)
    assert all("lora_" in n or "modules_to_save" in n for n in names), names
    # 2 layers × (query, value) × (lora_A, lora_B), plus the head's weight and bias.
    assert sum("lora_" in n for n in names) == 8
    # Every LoRA A/B matrix is found as an nn.Linear and gets a Kronecker block.
    assert [g.kind for g in la.subset.groups if "lora_" in g.name] == ["weight"] * 8
    la.fit([b])
    assert all(p.grad is None for p in model.parameters())
    assert model.training is False


# --------------------------------------------------------------------------- exactness


def test_kron_on_lora_is_exact_for_one_token_one_example(float64):
    """One example, one token: each weight's GGN block is exactly B ⊗ A (a is shared by all c)."""
    model = tiny_lora_bert()
    b = batch(1, 1, seed=3)
    H = dense_ggn(model, b)
    for approx in ("expand", "reduce"):
        la = Laplace(
            model, "classification", "all", "kron", kron_approx=approx, prior_precision=0.5
        )
        la.fit([b])
        P = ref.dense_precision(la)
        for g, s in zip(la.subset.groups, group_slices(la)):
            expected = H[s, s] + 0.5 * torch.eye(g.numel, dtype=H.dtype)
            assert_close(P[s, s], expected, f"{approx}: block {g.name}")


def test_diag_on_lora_matches_dense_ggn_diagonal(float64):
    model = tiny_lora_bert()
    b = batch(3, 5, pad_last=2)
    la = Laplace(model, "classification", "all", "diag", prior_precision=0.0 + 1e-3)
    la.fit([b])
    H = dense_ggn(model, b)
    assert_close(ref.dense_precision(la).diagonal() - 1e-3, H.diagonal(), "diag GGN")


@pytest.mark.parametrize("with_mask", [False, True])
def test_full_on_lora_matches_dense_ggn(float64, with_mask):
    # full takes its Jacobians from the layer factors (forward hooks + one batched backward),
    # not torch.func.vmap, so batches with a padded attention mask work too.
    model = tiny_lora_bert()
    b = batch(3, 5, pad_last=2 if with_mask else 0)
    if not with_mask:
        del b["attention_mask"]
    la = Laplace(model, "classification", "all", "full", prior_precision=1.0)
    la.fit([b])
    reference = b if not with_mask else {k: v[:2] for k, v in b.items()}
    H = dense_ggn(model, reference)
    if with_mask:  # the padded example alone, unpadded: padding must not change its curvature
        last = {k: v[2:, :3] if v.ndim == 2 else v[2:] for k, v in b.items()}
        H = H + dense_ggn(model, last)
    assert_close(ref.dense_precision(la), H + torch.eye(H.shape[0], dtype=H.dtype), "full GGN")
    if with_mask:  # the GLM predictive of the padded batch row by row, as without padding
        x = {k: v for k, v in b.items() if k != "labels"}
        _, var = la.functional_variance(x)
        _, var_unpadded = la.functional_variance({k: v[2:, :3] for k, v in x.items()})
        assert_close(var[2:], var_unpadded, "f_var of the padded example")


def reduce_kron_reference(model: nn.Module, b: dict[str, torch.Tensor], name: str):
    """Independent K-FAC-reduce factors of the Linear `name`: (B, A) with
    A = (1/N) Σ_n ā_n ā_nᵀ, ā_n = mean_t a_nt, and B = Σ_n Gᵀ Λ_n G, G[c] = Σ_t ∂f_c/∂z_nt
    obtained as ∂f_c/∂ε of a probe ε (N, d_out) added to the layer's output at every t."""
    layer = dict(model.named_modules())[name]
    n = b["input_ids"].shape[0]
    eps = torch.zeros(n, layer.out_features, requires_grad=True)
    seen = {}

    def hook(mod, args, out):
        seen["a"] = args[0].detach()  # (N, T, d_in)
        return out + eps[:, None, :]

    h = layer.register_forward_hook(hook)
    try:
        logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits  # (N, C)
    finally:
        h.remove()
    G = torch.stack(
        [
            torch.autograd.grad(logits[:, c].sum(), eps, retain_graph=True)[0]
            for c in range(N_CLASSES)
        ],
        1,
    )  # (N, C, d_out)
    prob = torch.softmax(logits.detach(), -1)
    lam = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    B = torch.einsum("nco,ncd,ndp->op", G, lam, G)
    abar = seen["a"].mean(1)  # (N, d_in)
    A = abar.T @ abar / n
    return B, A


def test_kron_reduce_on_lora_matches_independent_reduce_kronecker(float64):
    model = tiny_lora_bert()
    b = batch(4, 6, seed=5)
    la = Laplace(model, "classification", "all", "kron", kron_approx="reduce", prior_precision=0.7)
    la.fit([b])
    P = ref.dense_precision(la)
    checked = 0
    for g, s in zip(la.subset.groups, group_slices(la)):
        if g.kind != "weight" or "lora_" not in g.name:
            continue
        B, A = reduce_kron_reference(model, b, g.module_name)
        expected = torch.kron(B.contiguous(), A.contiguous()) + 0.7 * torch.eye(
            g.numel, dtype=B.dtype
        )
        assert_close(P[s, s], expected, f"reduce block {g.name}")
        checked += 1
    assert checked == 8


def test_kron_blocks_are_not_the_dense_ggn_with_many_tokens(float64):
    """Guard against a vacuous reference: with T > 1 and N > 1 K-FAC is an approximation."""
    model = tiny_lora_bert()
    b = batch(4, 6, seed=5)
    la = Laplace(model, "classification", "all", "kron", kron_approx="reduce", prior_precision=1.0)
    la.fit([b])
    H = dense_ggn(model, b)
    P = ref.dense_precision(la)
    rel = []
    for g, s in zip(la.subset.groups, group_slices(la)):
        if "lora_" in g.name:
            diff = P[s, s] - torch.eye(g.numel) - H[s, s]
            rel.append(float(diff.abs().max() / H[s, s].abs().max()))
    assert max(rel) > 1e-2, rel


def test_last_layer_on_lora_head_matches_dense_reference(float64):
    model = tiny_lora_bert()
    b = batch(3, 5, seed=7)
    la = Laplace(model, "classification", "last_layer", "full", prior_precision=1.0)
    assert la.subset.last_layer_name.endswith("classifier.modules_to_save.default")
    la.fit([b])
    H = dense_ggn(model, b)
    names = [n for n in lora_params(model)]
    idx = [i for i, n in enumerate(names) if "modules_to_save" in n]
    sizes = [lora_params(model)[n].numel() for n in names]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    cols = torch.cat([torch.arange(starts[i], starts[i] + sizes[i]) for i in idx])
    expected = H[cols][:, cols] + torch.eye(len(cols), dtype=H.dtype)
    assert_close(ref.dense_precision(la), expected, "last-layer GGN")


# --------------------------------------------------------------------------- files: text + HF folders


def write_tokenizer(folder: Path) -> None:
    from transformers import BertTokenizerFast

    folder.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "very", "not"]
    if int(transformers.__version__.split(".")[0]) >= 5:
        tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    else:
        (folder / "vocab.txt").write_text("\n".join(words) + "\n")
        tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    tok.save_pretrained(str(folder))


def test_text_split_tokenises_locally_and_pads_per_batch(tmp_path: Path):
    write_tokenizer(tmp_path / "tok")
    rows = [
        {"id": "a", "text": "good movie", "label": 1},
        {"id": "b", "text": "very very bad movie not good", "label": 0},
        {"id": "c", "text": "bad", "label": 0},
    ]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "data.yaml").write_text(
        "task: classification\nsplits:\n"
        "  train: {path: r.jsonl, text: text, y: label, tokenizer: tok, max_length: 6}\n"
    )
    spec = load_dataset_spec(tmp_path / "data.yaml")
    loader = make_loader(spec, "train", batch_size=2)
    b1, b2 = list(loader)
    assert loader.dataset.ids == ["a", "b", "c"]
    # [CLS] good movie [SEP] padded to the 6 tokens of row b (truncated at max_length 6).
    assert b1["input_ids"].tolist() == [[2, 5, 7, 3, 0, 0], [2, 8, 8, 6, 7, 3]]
    assert b1["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert b1["labels"].tolist() == [1, 0] and b1["labels"].dtype == torch.int64
    assert b2["input_ids"].tolist() == [[2, 6, 3]]  # padded per batch, not to max_length


def test_text_split_errors_name_file_row_and_key(tmp_path: Path):
    write_tokenizer(tmp_path / "tok")
    (tmp_path / "r.jsonl").write_text('{"text": "good", "label": 1}\n{"txt": "bad", "label": 0}\n')
    (tmp_path / "data.yaml").write_text(
        "splits:\n  train: {path: r.jsonl, text: text, y: label, tokenizer: tok}\n"
        "  other: {path: r.jsonl, text: text, y: label, tokenizer: nowhere}\n"
    )
    spec = load_dataset_spec(tmp_path / "data.yaml")
    with pytest.raises(BadInputError, match=r"r\.jsonl: row 1: text field 'text'"):
        make_loader(spec, "train")
    (tmp_path / "r.jsonl").write_text('{"text": "good", "label": 1}\n')
    with pytest.raises(BadInputError, match="tokenizer 'nowhere': not a folder"):
        make_loader(spec, "other")


def test_hf_folder_and_peft_adapter_load_as_checkpoint(tmp_path: Path, float64):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    model = tiny_lora_bert(save_base_to=base_dir)
    model.save_pretrained(str(adapter_dir))
    b = batch(3, 5, seed=2)
    x = {k: v for k, v in b.items() if k != "labels"}
    with torch.no_grad():
        want = model(**x).logits
    loaded, ref = load_model(
        adapter_dir, factory_kwargs={"base_model": str(base_dir)}, dtype="float64"
    )
    assert ref.form == "hf" and ref.kwargs == {"base_model": str(base_dir)}
    with torch.no_grad():
        got = call_model(loaded, x)
    assert_close(got, want, "adapter reload logits")
    assert sorted(lora_params(loaded)) == sorted(lora_params(model))
    with pytest.raises(BadInputError, match="unknown key"):
        load_model(adapter_dir, factory_kwargs={"base": "x"})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match="not a file, and not a Hugging Face model folder"):
        load_model(empty)


def test_causal_lm_logits_pick_the_last_real_token(float64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=8, n_layer=1, n_head=2, n_positions=16))
    wrapped = CausalLMLogits(lm.double().eval(), label_token_ids=[7, 9])
    ids = torch.tensor([[3, 4, 5, 0, 0], [3, 4, 5, 6, 8]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        out = wrapped(ids, attention_mask=mask)
        alone = lm(input_ids=ids[:1, :3]).logits[0, -1, [7, 9]]
    assert out.shape == (2, 2)
    assert_close(out[0], alone, "last real token")
