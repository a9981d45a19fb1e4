"""Weight files from ``torch.save``: state dicts read safely, trusted pickles, strict loading.

A ``torch.save`` file is first read with ``weights_only=True``, whose unpickler refuses to
import or call anything, so a state dict loads without running code from the file. A whole
pickled module loads only when the user trusts the file (``--trust-checkpoint``). Weights,
from here or from safetensors, go into the module a factory builds, with one strict check
that names every missing, unexpected or mis-shaped key.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.checkpoint_types import FACTORY_HINT, ModelForm, fmt_names
from laplace_cli.io.model_factories import build_from_factory, on_sys_path


def safe_torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)``: refuses any pickle that would import or call code."""
    with warnings.catch_warnings():
        # Plain pickle.dump files trigger a protocol warning before being refused; the
        # refusal itself is reported as an error, so the warning is noise.
        warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)


def is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def describe_non_state_dict(obj: Any) -> str:
    if isinstance(obj, Mapping):
        bad = [
            f"{k!r} holds {type(v).__name__}"
            for k, v in obj.items()
            if not isinstance(v, torch.Tensor)
        ]
        nested = [k for k, v in obj.items() if is_tensor_mapping(v)]
        hint = (
            f"; the weights seem to be under {nested[0]!r}: save that mapping alone"
            if nested
            else ""
        )
        return f"a mapping whose values are not all tensors ({', '.join(bad[:3])}){hint}"
    return f"a {type(obj).__name__}"


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], p: Path, factory: str
) -> None:
    """Strict load with one message listing every missing / unexpected / mis-shaped key."""
    expected = model.state_dict()
    # Tied weights appear under several names in state_dict() but once in safetensors files;
    # a missing name whose tensor is shared with a present one is not really missing.
    ptr_to_names: dict[tuple[int, int], list[str]] = {}
    for name, tensor in expected.items():
        if tensor.device.type != "meta" and tensor.numel() > 0:
            ptr_to_names.setdefault((tensor.data_ptr(), tensor.numel()), []).append(name)
    aliases: dict[str, list[str]] = {}
    for names in ptr_to_names.values():
        for n in names:
            aliases[n] = [m for m in names if m != n]
    missing = [
        k for k in expected if k not in state and not any(a in state for a in aliases.get(k, []))
    ]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {fmt_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {fmt_names(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {fmt_names(mismatched, 5)}")
        raise BadInputError(
            f"{p}: checkpoint of another architecture than {factory!r} builds: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=False)


def load_torch_save(
    p: Path, factory: str | None, kwargs: dict[str, Any], trust_checkpoint: bool
) -> tuple[nn.Module, ModelForm]:
    """A ``torch.save`` file: a state dict (safe) or, only when trusted, a pickled module."""
    try:
        obj = safe_torch_load(p)
    except pickle.UnpicklingError as err:
        # weights_only=True stopped at the first global it would have imported or called, so
        # nothing from the file ran.
        if not trust_checkpoint:
            reason = unpickler_reason(err)
            raise BadInputError(
                f"{p}: not a state dict of tensors but a pickle that would import or run code "
                "(e.g. a whole pickled nn.Module), refused without running it; if you trust this "
                f"file pass --trust-checkpoint, or better {FACTORY_HINT} "
                f"(weights-only unpickler: {reason})"
            ) from None
        obj = None
    except Exception as err:
        raise BadInputError(
            f"{p}: unreadable torch checkpoint ({type(err).__name__}: {err})"
        ) from None
    if obj is None:
        module = trusted_torch_load(p)
        if not isinstance(module, nn.Module):
            raise BadInputError(
                f"{p}: unpickled a {type(module).__name__}, expected a torch.nn.Module"
            )
        if factory is not None:
            raise BadInputError(
                f"{p}: a whole pickled module; --model-factory {factory!r} is only for weights"
            )
        return module, ModelForm.PICKLE
    if not is_tensor_mapping(obj):
        raise BadInputError(
            f"{p}: expected a state dict (a mapping of parameter names to tensors), got "
            f"{describe_non_state_dict(obj)}"
        )
    return from_weights(p, obj, factory, kwargs), ModelForm.STATE_DICT


def unpickler_reason(err: BaseException) -> str:
    """The informative part of torch's long weights-only error, e.g. the refused global."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    match = re.search(r"GLOBAL (\S+)", text)
    if match:
        return f"it names {match.group(1)}"
    _, _, rest = text.partition("WeightsUnpickler error:")
    for line in rest.splitlines():
        if line.strip():
            return line.strip().split(". ")[0]
    return type(err).__name__


def trusted_torch_load(p: Path) -> Any:
    """Unpickle a whole module, with the working directory first on the import path.

    The pickle names its classes by module (``nets.Net``); ``python -m laplace_cli`` finds
    ``nets.py`` in the working directory because ``python -m`` puts it on ``sys.path``, the
    ``laplace`` script does not. Both now import the same way (as ``--model-factory`` does).
    """
    cwd = Path.cwd()
    try:
        with on_sys_path(cwd):
            return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:
        raise BadInputError(
            f"{p}: unpickling the trusted checkpoint failed ({type(err).__name__}: {err}); the "
            f"classes it names must be importable from the working directory ({cwd}) or the "
            f"installed packages: run from the project folder, or {FACTORY_HINT}"
        ) from None


def from_weights(
    p: Path, state: Mapping[str, torch.Tensor], factory: str | None, kwargs: dict[str, Any]
) -> nn.Module:
    if factory is None:
        raise BadInputError(
            f"{p}: holds weights only ({len(state)} tensors) and needs the code that builds the "
            "model: pass --model-factory pkg.module:function (or path/to/file.py:function) and, "
            "if it takes arguments, --model-kwargs '{\"hidden\": 64}'"
        )
    model = build_from_factory(factory, kwargs)
    load_state_dict_strict(model, state, p, factory)
    return model
