"""Model checkpoints: find out which of the four forms a file is, load it, and fingerprint it.

The forms (docs/design.md §2):

==============  ===========================================================================
form            how it loads
==============  ===========================================================================
``export``      ``*.pt2`` from ``torch.export.save``: ``torch.export.load`` then
                ``torch.export.unflatten``, so named submodules survive. Leaf submodules
                that were ``nn.Linear`` / ``nn.Conv2d`` come back as ``InterpreterModule``
                objects (an FX graph each); :func:`restore_layer_types` swaps those whose
                graph is exactly one ``aten.linear`` / ``aten.conv2d`` call for real
                ``nn.Linear`` / ``nn.Conv2d`` modules holding the *same* parameters, so
                K-FAC and last-layer hooks find them. The exported batch dimension must be
                dynamic.
``torchscript`` a ``torch.jit.save`` archive: ``torch.jit.load``. Submodules are
                ``RecursiveScriptModule`` objects, which take no Python forward hooks and no
                ``torch.func.functional_call``; :mod:`laplace_cli.subsets.scripted` substitutes their
                parameters instead, so every structure works except K-FAC over all weights
                (refused: it needs each layer's inputs).
``safetensors`` / ``state_dict``
                weights only (``*.safetensors``, or a ``torch.save``'d state dict read with
                ``weights_only=True``) plus a factory ``pkg.module:function`` or
                ``path/to/file.py:function`` that builds the module; strict loading.
``pickle``      a whole pickled ``nn.Module`` from ``torch.save(model)``; unpickling runs
                code from the file, so only with ``trust_checkpoint=True``
                (``--trust-checkpoint``).
==============  ===========================================================================

Nothing here prints; every user-fixable problem raises :class:`~laplace_cli.core.errors.BadInputError`
naming the file.

The parts live in :mod:`~laplace_cli.io.checkpoint_types` (forms, :class:`ModelRef`),
:mod:`~laplace_cli.io.model_factories` (importing factories), :mod:`~laplace_cli.io.exported_models`
(``.pt2`` loading, layer restoration, :func:`module_tree`), :mod:`~laplace_cli.io.state_dicts`
(``torch.save`` files, strict weight loading), :mod:`~laplace_cli.io.devices` (``--device``,
``--dtype``) and :mod:`~laplace_cli.io.fingerprint` (:func:`model_fingerprint`); this module
detects forms, loads models, and re-exports those modules' names so that
``laplace_cli.io.checkpoints`` stays the one import path.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from laplace_cli.core.errors import BadInputError
from laplace_cli.core.paths import user_path
from laplace_cli.io.checkpoint_types import FACTORY_HINT as FACTORY_HINT
from laplace_cli.io.checkpoint_types import HOOKABLE_TYPES as HOOKABLE_TYPES
from laplace_cli.io.checkpoint_types import ModelForm as ModelForm
from laplace_cli.io.checkpoint_types import ModelRef as ModelRef
from laplace_cli.io.checkpoint_types import ModuleInfo as ModuleInfo
from laplace_cli.io.checkpoint_types import fmt_names as fmt_names
from laplace_cli.io.devices import resolve_device as resolve_device
from laplace_cli.io.devices import resolve_dtype as resolve_dtype
from laplace_cli.io.exported_models import as_real_layer as as_real_layer
from laplace_cli.io.exported_models import load_export as load_export
from laplace_cli.io.exported_models import module_tree as module_tree
from laplace_cli.io.exported_models import nn_module_type as nn_module_type
from laplace_cli.io.exported_models import normalized_args as normalized_args
from laplace_cli.io.exported_models import require_hookable_layers as require_hookable_layers
from laplace_cli.io.exported_models import restore_layer_types as restore_layer_types
from laplace_cli.io.exported_models import static_batch_inputs as static_batch_inputs
from laplace_cli.io.fingerprint import model_fingerprint as model_fingerprint
from laplace_cli.io.model_factories import build_from_factory as build_from_factory
from laplace_cli.io.model_factories import import_callable as import_callable
from laplace_cli.io.model_factories import on_sys_path as on_sys_path
from laplace_cli.io.model_factories import parse_kwargs as parse_kwargs
from laplace_cli.io.state_dicts import describe_non_state_dict as describe_non_state_dict
from laplace_cli.io.state_dicts import from_weights as from_weights
from laplace_cli.io.state_dicts import is_tensor_mapping as is_tensor_mapping
from laplace_cli.io.state_dicts import load_state_dict_strict as load_state_dict_strict
from laplace_cli.io.state_dicts import load_torch_save as load_torch_save
from laplace_cli.io.state_dicts import safe_torch_load as safe_torch_load
from laplace_cli.io.state_dicts import trusted_torch_load as trusted_torch_load
from laplace_cli.io.state_dicts import unpickler_reason as unpickler_reason

# The part modules' names above are re-exported (``name as name``): callers and tests
# import them from laplace_cli.io.checkpoints.
__all__ = [
    "ModelForm",
    "ModelRef",
    "ModuleInfo",
    "detect_form",
    "import_callable",
    "load_model",
    "model_fingerprint",
    "module_tree",
    "require_hookable_layers",
    "resolve_device",
    "resolve_dtype",
    "restore_layer_types",
]


# --------------------------------------------------------------------------- detection


def _sniff(path: Path) -> str:
    """Classify the container by its bytes: export, torchscript, aoti, torch_save, safetensors."""
    with path.open("rb") as fh:
        head = fh.read(16)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            return "unknown"
        tails = {n.split("/", 1)[-1] for n in names}
        if any("aotinductor" in n for n in names):
            return "aoti"
        if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
            return "torchscript"
        if "archive_format" in tails or "models/model.json" in tails:
            return "export"
        if "data.pkl" in tails:
            return "torch_save"
        return "unknown"
    if len(head) >= 9:
        # safetensors: u64 little-endian header length, then a JSON object. A length beyond
        # the file still counts as safetensors, so that loading refuses it as such.
        if head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol marker: legacy (non-zip) torch.save
        return "torch_save"
    return "unknown"


def _check_file(path: str | Path) -> Path:
    p = user_path(path)
    if not p.exists():
        raise BadInputError(f"{path}: checkpoint file not found")
    if not p.is_file():
        raise BadInputError(f"{path}: not a file")
    try:
        with p.open("rb"):
            pass
    except OSError as err:
        raise BadInputError(f"{path}: cannot read checkpoint ({err.strerror or err})") from None
    return p


def detect_form(path: str | Path) -> ModelForm:
    """Which form a checkpoint file is, from its contents (not its extension).

    A ``torch.save`` file is opened with ``weights_only=True`` to tell a state dict from a
    pickled module; that unpickler refuses to import or call anything, so no code from the file
    runs.

    Raises:
        BadInputError: Missing or unreadable file, or a format this tool does not know.
    """
    p = _check_file(path)
    kind = _sniff(p)
    if kind == "export":
        return ModelForm.EXPORT
    if kind == "torchscript":
        return ModelForm.TORCHSCRIPT
    if kind == "safetensors":
        return ModelForm.SAFETENSORS
    if kind == "torch_save":
        try:
            safe_torch_load(p)
        except pickle.UnpicklingError:
            return ModelForm.PICKLE
        except Exception as err:
            raise BadInputError(f"{path}: unreadable torch checkpoint ({err})") from None
        return ModelForm.STATE_DICT
    _raise_unknown(path, kind)


def _raise_unknown(path: str | Path, kind: str) -> NoReturn:
    if kind == "aoti":
        raise BadInputError(
            f"{path}: an AOTInductor package (compiled code), not a torch.export archive; "
            "save the ExportedProgram with torch.export.save instead"
        )
    raise BadInputError(
        f"{path}: unknown checkpoint format; expected a torch.export archive (.pt2), a "
        "TorchScript archive, a .safetensors file or a torch.save'd state dict (.pt)"
    )


# --------------------------------------------------------------------------- loading


def _load_torchscript(p: Path, device: torch.device) -> nn.Module:
    try:
        return torch.jit.load(str(p), map_location=device)
    except Exception as err:
        raise BadInputError(
            f"{p}: cannot load TorchScript archive ({type(err).__name__}: {err})"
        ) from None


def load_model(
    path: str | Path,
    *,
    factory: str | None = None,
    factory_kwargs: Mapping[str, Any] | str | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> tuple[nn.Module, ModelRef]:
    """Load a model in any of the four checkpoint forms, in eval mode.

    Args:
        path: The checkpoint file. Its form is found from its contents.
        factory: ``pkg.module:function`` or ``path/to/file.py:function`` building the module, for
            weight-only checkpoints (``.safetensors`` or a state-dict ``.pt``). Giving one with a
            self-contained form is an error, so that a mistaken ``--model-factory`` does not go
            unnoticed.
        factory_kwargs: Keyword arguments for the factory, as a dict or a JSON object string.
        trust_checkpoint: Allow unpickling a whole module (runs code from the file).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a device.
        dtype: ``"float32"`` / ``"float64"`` / ``"bfloat16"`` / ``"float16"`` to convert the
            parameters, or None to keep them.

    Returns:
        ``(model, ref)``; ``ref.fingerprint`` is taken before the dtype / device conversion.

    Raises:
        BadInputError: Missing / unreadable / unknown file, a pickled module without
            ``trust_checkpoint``, a weight-only file without factory, an architecture mismatch,
            or a bad factory, device or dtype.
    """
    if user_path(path).is_dir():
        return _load_hf_dir(path, factory, factory_kwargs, device, dtype)
    p = _check_file(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    kwargs = parse_kwargs(factory_kwargs)
    kind = _sniff(p)

    if kind in ("export", "torchscript") and factory is not None:
        raise BadInputError(
            f"{path}: a self-contained {kind} archive; --model-factory {factory!r} is only for "
            ".safetensors / state-dict .pt weights"
        )

    if kind == "export":
        model = load_export(p, dev)
        form = ModelForm.EXPORT
    elif kind == "torchscript":
        model = _load_torchscript(p, dev)
        form = ModelForm.TORCHSCRIPT
    elif kind == "safetensors":
        model = _load_safetensors(path, p, factory, kwargs)
        form = ModelForm.SAFETENSORS
    elif kind == "torch_save":
        model, form = load_torch_save(p, factory, kwargs, trust_checkpoint)
    else:
        _raise_unknown(path, kind)

    fingerprint = model_fingerprint(model)
    model = model.to(dev)
    if dt is not None:
        model = model.to(dt)
    try:
        model.eval()
    except NotImplementedError:
        pass  # ExportedProgram.module() refuses eval(); its graph has its mode baked in
    ref = ModelRef(
        path=str(path),
        form=form.value,
        factory=factory if form in (ModelForm.SAFETENSORS, ModelForm.STATE_DICT) else None,
        kwargs=kwargs if form in (ModelForm.SAFETENSORS, ModelForm.STATE_DICT) else {},
        fingerprint=fingerprint,
    )
    return model, ref


def _load_safetensors(
    path: str | Path, p: Path, factory: str | None, kwargs: dict[str, Any]
) -> nn.Module:
    """Build the module with ``factory`` and load a checked ``.safetensors`` file into it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from laplace_cli.io.posterior_file import read_safetensors_header

    read_safetensors_header(p)  # absurd lengths, offsets or shapes: refused before allocating
    try:
        state = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise BadInputError(f"{path}: unreadable safetensors file ({err})") from None
    return from_weights(p, state, factory, kwargs)


def _load_hf_dir(
    path: str | Path,
    factory: str | None,
    factory_kwargs: Mapping[str, Any] | str | None,
    device: str | torch.device,
    dtype: str | torch.dtype | None,
) -> tuple[nn.Module, ModelRef]:
    """A Hugging Face model or PEFT adapter folder; its kwargs are recorded in the reference."""
    from laplace_cli.io.hf import is_hf_dir, load_hf_model

    if not is_hf_dir(path):
        raise BadInputError(
            f"{path}: not a file, and not a Hugging Face model folder (config.json) or PEFT "
            "adapter folder (adapter_config.json)"
        )
    if factory is not None:
        raise BadInputError(f"{path}: a Hugging Face folder; --model-factory is not used with it")
    kwargs = parse_kwargs(factory_kwargs)
    for key in ("base_model", "adapter"):
        # Folders given as kwargs are relative to the working directory; recorded absolute so
        # that the posterior reloads the model from anywhere (package: specs stay as they are).
        value = kwargs.get(key)
        if isinstance(value, str) and value and not value.startswith("package:"):
            kwargs[key] = str(user_path(value).resolve())
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    model = load_hf_model(user_path(path), kwargs)
    fingerprint = model_fingerprint(model)
    model = model.to(dev)
    if dt is not None:
        model = model.to(dt)
    model.eval()
    ref = ModelRef(path=str(path), form=ModelForm.HF.value, kwargs=kwargs, fingerprint=fingerprint)
    return model, ref
