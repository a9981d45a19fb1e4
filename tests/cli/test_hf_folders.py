"""The CLI takes Hugging Face model folders and PEFT adapter folders wherever it takes a model.

`laplace fit DIR` and the `--model DIR` override of tune / evaluate / predict accept a folder
holding `config.json` (a transformers model) or `adapter_config.json` (a PEFT adapter); any other
folder is refused with exit 2 and a message that says what a model folder must hold. The model
is the tiny randomly initialised BERT + LoRA of `tests/laplace/test_llm.py` (no download), on text
tokenised by a tiny local tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("transformers")
pytest.importorskip("peft")

from laplace_cli.cli.app import app  # noqa: E402
from laplace_cli.io.posterior_file import read_posterior  # noqa: E402
from tests.laplace.test_llm import tiny_lora_bert, write_tokenizer  # noqa: E402

HEAD = "base_model.model.classifier.modules_to_save.default"
WORDS = ["good", "bad", "movie", "very", "not"]


def invoke(args: list[Any]) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base/ (config.json + weights), adapter/ (adapter_config.json), tok/, data.yaml."""
    root = tmp_path_factory.mktemp("hf")
    model = tiny_lora_bert(save_base_to=root / "base")
    model.float().save_pretrained(str(root / "adapter"))
    write_tokenizer(root / "tok")
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("val", 8), ("test", 8)):
        rows = []
        for i in range(n):
            k = int(torch.randint(1, 6, (1,), generator=g))
            words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=g)]
            rows.append({"id": f"{split}{i}", "text": " ".join(words), "label": i % 3})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = "{{path: {0}.jsonl, text: text, y: label, tokenizer: tok, max_length: 8}}"
    (root / "data.yaml").write_text(
        "task: classification\nn_classes: 3\nbatch_size: 4\nsplits:\n"
        + "".join(f"  {s}: {split.format(s)}\n" for s in ("train", "val", "test"))
    )
    return {
        "root": root,
        "base": root / "base",
        "adapter": root / "adapter",
        "data": root / "data.yaml",
        "kwargs": json.dumps({"base_model": str(root / "base")}),
    }


def test_fit_takes_a_peft_adapter_folder_and_tune_evaluate_take_it_as_model(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    post = tmp_path / "post.st"
    fit = invoke(
        ["fit", folders["adapter"], "--data", folders["data"], "-o", post, "--json", "-q"]
        + ["--model-kwargs", folders["kwargs"], "--last-layer-name", HEAD]
    )
    assert fit.exit_code == 0, fit.output
    meta = read_posterior(post).metadata
    assert meta["model"]["form"] == "hf"
    # Recorded relative to the posterior's folder (laplace_cli.io.model_paths).
    assert (post.parent / meta["model"]["path"]).resolve() == folders["adapter"].resolve()
    override = ["--model", folders["adapter"], "--model-kwargs", folders["kwargs"]]
    tune = invoke(
        ["tune", "-p", post, "--data", folders["data"], "--method", "gridsearch", "-q"] + override
    )
    assert tune.exit_code == 0, tune.output
    evaluate = invoke(
        ["evaluate", "-p", post, "--data", folders["data"], "--json", "-q"] + override
    )
    assert evaluate.exit_code == 0, evaluate.output
    rows = json.loads(evaluate.stdout)["rows"]
    assert set(rows) >= {"map", "laplace"} and 0 <= rows["laplace"]["acc"] <= 1
    # predict on a text split (dict batches): one row per test snippet, in file order
    predict = invoke(
        ["predict", "-p", post, "--data", folders["data"], "--split", "test"] + override
    )
    assert predict.exit_code == 0, predict.output
    preds = [json.loads(line) for line in predict.stdout.splitlines()]
    assert [p["id"] for p in preds] == list(range(8))
    assert all(len(p["probs"]) == 3 for p in preds)


def test_fit_takes_lora_weights_of_an_adapter_folder(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    """subset all = the LoRA matrices and the head (K-FAC reduce over the tokens)."""
    post = tmp_path / "lora.st"
    fit = invoke(
        ["fit", folders["adapter"], "--data", folders["data"], "-o", post, "-q"]
        + ["--model-kwargs", folders["kwargs"], "--subset", "all", "--structure", "diag"]
    )
    assert fit.exit_code == 0, fit.output
    names = read_posterior(post).metadata["param_names"]
    assert names and all("lora_" in n or "modules_to_save" in n for n in names)


def test_fit_takes_a_hugging_face_model_folder(folders: dict[str, Path], tmp_path: Path) -> None:
    post = tmp_path / "base.st"
    fit = invoke(["fit", folders["base"], "--data", folders["data"], "-o", post, "-q"])
    assert fit.exit_code == 0, fit.output
    assert read_posterior(post).metadata["model"]["form"] == "hf"


def test_other_folders_are_refused_with_a_clear_message(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    fit = invoke(["fit", empty, "--data", folders["data"], "-o", tmp_path / "p.st"])
    assert fit.exit_code == 2
    assert f"{empty}: is a folder without config.json or adapter_config.json (MODEL)" in (
        fit.stderr
    )
    evaluate = invoke(["evaluate", "-p", tmp_path / "p.st", "--data", folders["data"]])
    assert evaluate.exit_code == 2  # (no posterior) checked before the model
    post = tmp_path / "post.st"
    assert (
        invoke(["fit", folders["base"], "--data", folders["data"], "-o", post, "-q"]).exit_code == 0
    )
    for cmd in (["evaluate", "--data", folders["data"]], ["predict", "--data", folders["data"]]):
        result = invoke([*cmd, "-p", post, "--model", empty])
        assert result.exit_code == 2, result.output
        assert "is a folder without config.json or adapter_config.json (--model)" in result.stderr
    data_dir = invoke(["fit", folders["base"], "--data", tmp_path, "-o", post])
    assert data_dir.exit_code == 2
    assert "is a folder, expected a file (--data)" in data_dir.stderr
