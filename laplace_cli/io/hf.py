"""Hugging Face model folders (plus an optional PEFT adapter) as a checkpoint form.

``load_model(DIR)`` lands here when DIR is a folder:

* a model folder (``config.json`` + weights): loaded with
  ``AutoModelForSequenceClassification.from_pretrained(DIR, local_files_only=True)``; an adapter
  may be named with the kwarg ``adapter``;
* a PEFT adapter folder (``adapter_config.json``): its base model is the kwarg ``base_model``
  or else the adapter config's ``base_model_name_or_path``; the adapter is attached with
  ``PeftModel.from_pretrained(..., is_trainable=True)`` so that its LoRA weights (and any
  ``modules_to_save`` head) keep ``requires_grad=True`` and form the "all" subset, while the
  base weights stay frozen and are never differentiated.

Folders are local paths or ``package:NAME/sub/dir`` (a folder inside an installed package, see
:func:`laplace_cli.io.text.resolve_local_dir`); nothing is fetched from the hub.

Kwargs (``--model-kwargs`` / ``model.kwargs``): ``base_model``, ``adapter``, ``num_labels``
(default: the classifier rows stored in the adapter, else the model config), ``task``
(``"sequence_classification"``, default, or ``"causal_lm"``) and, for a causal LM,
``label_token_ids`` (the vocabulary ids whose next-token logits are the class logits; default:
all). A causal LM is wrapped in :class:`CausalLMLogits`, which returns the logits at the last
non-padding position, (B, C).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.text import resolve_local_dir

__all__ = ["CausalLMLogits", "is_hf_dir", "load_hf_model"]

KWARGS = ("base_model", "adapter", "num_labels", "task", "label_token_ids")
TASKS = ("sequence_classification", "causal_lm")


def is_hf_dir(path: str | Path) -> bool:
    """A folder holding a Hugging Face model (config.json) or a PEFT adapter (adapter_config.json)."""
    p = Path(path)
    return p.is_dir() and ((p / "config.json").is_file() or (p / "adapter_config.json").is_file())


class CausalLMLogits(nn.Module):
    """A causal LM as a classifier: next-token logits at the last real token, (B, C).

    With right padding the last real token of row b is at ``attention_mask[b].sum() - 1``; the
    logits there, restricted to ``label_token_ids`` (C ids) if given, are the class logits.
    """

    def __init__(self, lm: nn.Module, label_token_ids: list[int] | None = None) -> None:
        super().__init__()
        self.lm = lm
        ids = torch.tensor(label_token_ids or [], dtype=torch.long)
        self.register_buffer("label_token_ids", ids, persistent=False)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]  # (B, L, V)
        if attention_mask is None:
            last = torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=logits.device)
        else:
            last = attention_mask.long().sum(1) - 1
        picked = logits[torch.arange(logits.shape[0], device=logits.device), last]  # (B, V)
        if self.label_token_ids.numel():
            picked = picked[:, self.label_token_ids]
        return picked


def _check_kwargs(kwargs: Mapping[str, Any]) -> None:
    unknown = sorted(set(kwargs) - set(KWARGS))
    if unknown:
        raise BadInputError(
            f"model kwargs: unknown key(s) {', '.join(unknown)} for a Hugging Face folder; "
            f"expected some of {', '.join(KWARGS)}"
        )
    task = kwargs.get("task", "sequence_classification")
    if task not in TASKS:
        raise BadInputError(f"model kwargs: task: expected one of {', '.join(TASKS)}, got {task!r}")


def _adapter_num_labels(adapter: Path) -> int | None:
    """Rows of the classifier head stored in an adapter (``modules_to_save``), if any."""
    f = adapter / "adapter_model.safetensors"
    if not f.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(f), "pt") as fh:
        for key in fh.keys():
            if key.endswith(("classifier.weight", "score.weight", "classifier.out_proj.weight")):
                return int(fh.get_slice(key).get_shape()[0])
    return None


def load_hf_model(path: str | Path, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Load a Hugging Face model folder or a PEFT adapter folder (see the module docstring).

    Returns:
        The model in eval mode; with an adapter, only the adapter's parameters require grad.

    Raises:
        BadInputError: transformers / peft missing, unknown kwargs, a base model or adapter that
            is not a local folder, or a folder transformers cannot load.
    """
    kw = dict(kwargs or {})
    _check_kwargs(kw)
    try:
        import transformers
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    except ImportError:
        raise BadInputError(
            f"{path}: Hugging Face folders need transformers (and peft for adapters): "
            "pip install 'laplace-cli[llm]'"
        ) from None
    p = Path(path)
    base, adapter = _base_and_adapter(p, kw)
    task = kw.get("task", "sequence_classification")
    num_labels = kw.get("num_labels") or (adapter and _adapter_num_labels(adapter))
    load_kw: dict[str, Any] = {"local_files_only": True}
    if task == "sequence_classification" and num_labels:
        load_kw["num_labels"] = int(num_labels)
    auto = AutoModelForSequenceClassification if task == "sequence_classification" else None
    auto = auto or AutoModelForCausalLM
    verbosity = transformers.logging.get_verbosity()
    bars_off = transformers.utils.logging.is_progress_bar_enabled() is False
    transformers.logging.set_verbosity_error()  # the "newly initialised head" report is noise
    transformers.utils.logging.disable_progress_bar()  # stderr belongs to our own progress
    try:
        # The head may be new (adapter supplies it); seed it so every load is the same model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = auto.from_pretrained(str(base), **load_kw)
        if adapter is not None:
            model = _with_adapter(model, adapter)
    except BadInputError:
        raise
    except Exception as err:  # transformers / peft raise OSError, ValueError, KeyError, ...
        raise BadInputError(
            f"{path}: cannot load the Hugging Face model from {base}"
            + (f" with adapter {adapter}" if adapter else "")
            + f" ({type(err).__name__}: {err})"
        ) from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if not bars_off:
            transformers.utils.logging.enable_progress_bar()
    if task == "causal_lm":
        model = CausalLMLogits(model, kw.get("label_token_ids"))
    model.eval()
    return model


def _base_and_adapter(p: Path, kw: dict[str, Any]) -> tuple[Path, Path | None]:
    """The base model folder and the adapter folder (None without one)."""
    adapter: Path | None = None
    if (p / "adapter_config.json").is_file():
        adapter = p
        try:
            cfg = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise BadInputError(f"{p / 'adapter_config.json'}: unreadable ({err})") from None
        base_spec = kw.get("base_model") or cfg.get("base_model_name_or_path")
        if not base_spec:
            raise BadInputError(
                f"{p}: the adapter names no base model; pass model kwargs {{'base_model': DIR}}"
            )
        # A kwarg is relative to the working directory, the adapter config's entry to the adapter.
        base = resolve_local_dir(str(base_spec), None if kw.get("base_model") else p, "base model")
    else:
        base = p
        if kw.get("adapter"):
            adapter = resolve_local_dir(str(kw["adapter"]), None, "adapter")
    return base, adapter


def _with_adapter(model: nn.Module, adapter: Path) -> nn.Module:
    """``model`` with the PEFT adapter at ``adapter`` loaded on top (trainable)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise BadInputError(
            f"{adapter}: PEFT adapters need peft: pip install 'laplace-cli[llm]'"
        ) from None
    with warnings.catch_warnings():
        # peft calls a transformers method deprecated in v5; not the user's concern.
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    return model
