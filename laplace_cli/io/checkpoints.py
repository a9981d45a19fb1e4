"""Model checkpoints: find out which of the four forms a file is, load it, and fingerprint it.

The forms (DESIGN.md §2):

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
                ``RecursiveScriptModule`` objects, which take no Python forward hooks, so
                K-FAC and last-layer need another form.
``safetensors`` / ``state_dict``
                weights only (``*.safetensors``, or a ``torch.save``'d state dict read with
                ``weights_only=True``) plus a factory ``pkg.module:function`` or
                ``path/to/file.py:function`` that builds the module; strict loading.
``pickle``      a whole pickled ``nn.Module`` from ``torch.save(model)``; unpickling runs
                code from the file, so only with ``trust_checkpoint=True``
                (``--trust-checkpoint``).
==============  ===========================================================================

Nothing here prints; every user-fixable problem raises :class:`~laplace_cli.errors.BadInputError`
naming the file.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import re
import struct
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from laplace_cli.enums import StrEnum
from laplace_cli.errors import BadInputError

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


class ModelForm(StrEnum):
    """How a checkpoint file holds its model."""

    EXPORT = "export"
    """A ``torch.export`` archive (``*.pt2``); self-contained."""
    TORCHSCRIPT = "torchscript"
    """A TorchScript archive (``torch.jit.save``); self-contained."""
    SAFETENSORS = "safetensors"
    """A safetensors file of weights; needs a factory."""
    STATE_DICT = "state_dict"
    """A ``torch.save``'d mapping of names to tensors; needs a factory."""
    PICKLE = "pickle"
    """A whole pickled ``nn.Module``; loads only with ``trust_checkpoint=True``."""
    HF = "hf"
    """A Hugging Face model folder or a PEFT adapter folder (``laplace_cli.io.hf``)."""


_HOOKABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)

# Printed in errors so that users learn which form to switch to.
_FACTORY_HINT = (
    "save the weights (model.state_dict()) as .safetensors or .pt and pass "
    "--model-factory pkg.module:function"
)


@dataclass
class ModelRef:
    """Where a model came from; stored in the posterior so later commands can reload it.

    Attributes:
        path: The checkpoint path as given (not resolved, so that a posterior stays portable).
        form: One of :class:`ModelForm`'s values.
        factory: ``pkg.module:function`` or ``path/to/file.py:function`` for the weight-only
            forms, else ``None``.
        kwargs: Keyword arguments for the factory (JSON-serialisable).
        fingerprint: :func:`model_fingerprint` of the model *as stored in the file*, before any
            ``dtype`` / ``device`` conversion, so that ``--dtype float64`` at fit time and
            ``float32`` at predict time still match.
    """

    path: str
    form: str
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON / safetensors metadata."""
        return {
            "path": self.path,
            "form": str(self.form),
            "factory": self.factory,
            "kwargs": dict(self.kwargs),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRef:
        """Inverse of :meth:`to_dict`; raises :class:`BadInputError` on a malformed mapping."""
        try:
            form = ModelForm(str(data["form"]))
            return cls(
                path=str(data["path"]),
                form=form.value,
                factory=None if data.get("factory") is None else str(data["factory"]),
                kwargs=dict(data.get("kwargs") or {}),
                fingerprint=str(data.get("fingerprint", "")),
            )
        except (KeyError, ValueError, TypeError) as err:
            raise BadInputError(f"model reference: malformed ({err!r}): {dict(data)!r}") from None


@dataclass(frozen=True)
class ModuleInfo:
    """One row of :func:`module_tree`.

    Attributes:
        name: Qualified submodule name (``""`` for the root), as in ``named_modules()``.
        type_name: The original class, e.g. ``torch.nn.modules.linear.Linear``. For export
            graphs it comes from the graph's ``nn_module_stack`` metadata; for TorchScript it
            is the scripted module's ``original_name`` (e.g. ``Linear``).
        loaded_class: The class of the object actually loaded (``Linear``,
            ``InterpreterModule``, ``RecursiveScriptModule``, ...).
        hookable: True for real ``nn.Linear`` / ``nn.Conv2d`` instances, the layers that K-FAC
            and last-layer hooks use.
    """

    name: str
    type_name: str
    loaded_class: str
    hookable: bool


# --------------------------------------------------------------------------- devices, dtypes


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """Turn ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` / ``"mps"`` into a device.

    Args:
        device: ``"auto"`` picks CUDA when available, else CPU.

    Returns:
        The device.

    Raises:
        BadInputError: The string names no device, or one that is not available here.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        text = str(device).strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            raise BadInputError(
                f"--device: expected auto, cpu, cuda, cuda:N or mps, got {device!r}"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInputError(f"--device: {device!s} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInputError(
                f"--device: {device!s} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    elif dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise BadInputError(f"--device: {device!s} requested but MPS is not available")
    return dev


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Turn ``"float32"`` / ``"float64"`` (or a torch dtype, or None) into a dtype.

    Raises:
        BadInputError: Any other value.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and dtype not in _DTYPES.values():
            raise BadInputError(f"--dtype: expected float32 or float64, got {dtype}")
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise BadInputError(f"--dtype: expected float32 or float64, got {dtype!r}")
    return _DTYPES[key]


# --------------------------------------------------------------------------- fingerprint


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the model's parameters: names, shapes, dtypes and bytes, in sorted name order.

    Each parameter contributes its qualified name, its shape, its dtype and the raw bytes of a
    contiguous CPU copy (so the device and memory layout do not matter, but the dtype does).
    Buffers (e.g. BatchNorm running statistics) are not included, as DESIGN.md §2 says
    "parameter bytes".

    Names are part of the hash because they agree across the forms: ``torch.export`` /
    ``unflatten``, ``ExportedProgram.module()`` and TorchScript keep the original qualified
    names (``0.weight``, ``features.0.weight``, ``head.bias``), and :func:`restore_layer_types`
    keeps them too, so the same weights give the same fingerprint in every form (the tests
    check this for an MLP and a CNN). Sorting makes the hash independent of registration order.

    Args:
        model: Any module.

    Returns:
        A 64-character lowercase hex digest.
    """
    h = hashlib.sha256(b"laplace-cli/fingerprint/v1\0")
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        t = param.detach().to("cpu").contiguous()
        header = f"{name}\0{tuple(t.shape)}\0{str(t.dtype).removeprefix('torch.')}\0"
        h.update(header.encode())
        # Reinterpret as bytes through torch (numpy has no bfloat16); reshape first because
        # a 0-d tensor cannot be viewed as another dtype.
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        h.update(struct.pack("<Q", len(raw)))
        h.update(raw)
    return h.hexdigest()


# --------------------------------------------------------------------------- importing callables


@contextlib.contextmanager
def _on_sys_path(*folders: Path) -> Iterator[None]:
    """Put folders at the front of ``sys.path`` for the duration (as ``python -m`` does)."""
    added = []
    for folder in folders:
        text = str(folder)
        if text not in sys.path:
            sys.path.insert(0, text)
            added.append(text)
    importlib.invalidate_caches()  # files may have been written since the last import
    try:
        yield
    finally:
        for text in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(text)


def import_callable(
    spec: str, *, base_dir: str | Path | None = None, what: str = "--model-factory"
) -> Callable[..., Any]:
    """Import ``pkg.module:function`` or ``path/to/file.py:function``.

    Module-style specs import with the current working directory first on ``sys.path``, as
    ``python -m`` would. File-style specs resolve relative paths against ``base_dir`` (default:
    the working directory) and import with the file's own folder on ``sys.path``, as running
    the file as a script would, so it can import its neighbours. Dotted attributes after the
    colon (``mod:Class.build``) are followed.

    Args:
        spec: The callable, ``module:attr`` or ``file.py:attr``.
        base_dir: Folder that relative file paths resolve against.
        what: How the user gave it (an option or a YAML key), for error messages.

    Returns:
        The callable.

    Raises:
        BadInputError: Malformed spec, module not importable, attribute missing or not callable.
    """
    target, sep, attr = str(spec).rpartition(":")
    # "C:\\x.py" without an attribute would split at the drive colon; require a real attr.
    if not sep or not target or not attr or "/" in attr or "\\" in attr:
        raise BadInputError(
            f"{what}: expected 'pkg.module:function' or 'path/to/file.py:function', got {spec!r}"
        )
    cwd = Path.cwd()
    if target.endswith(".py") or "/" in target or os.sep in target:
        file = Path(target).expanduser()
        if not file.is_absolute():
            file = Path(base_dir) / file if base_dir is not None else cwd / file
        if not file.is_file():
            raise BadInputError(f"{what}: {spec!r}: file not found: {file}")
        file = file.resolve()
        digest = hashlib.sha256(str(file).encode()).hexdigest()[:12]
        mod_name = f"_laplace_user_{file.stem}_{digest}"
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, file)
            if loader_spec is None or loader_spec.loader is None:
                raise BadInputError(f"{what}: {spec!r}: cannot import {file}")
            module = importlib.util.module_from_spec(loader_spec)
            # Registered before running so that dataclasses / pickling inside it work.
            sys.modules[mod_name] = module
            try:
                with _on_sys_path(file.parent):
                    loader_spec.loader.exec_module(module)
            except Exception as err:
                sys.modules.pop(mod_name, None)
                raise BadInputError(
                    f"{what}: {spec!r}: importing {file} failed: {type(err).__name__}: {err}"
                ) from err
    else:
        try:
            with _on_sys_path(cwd):
                module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise BadInputError(
                f"{what}: {spec!r}: cannot import module {target!r} ({err}); the working "
                f"directory {cwd} is on the import path"
            ) from None
        except Exception as err:
            raise BadInputError(
                f"{what}: {spec!r}: importing {target!r} failed: {type(err).__name__}: {err}"
            ) from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BadInputError(f"{what}: {spec!r}: {target!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BadInputError(f"{what}: {spec!r}: {attr!r} is not callable")
    return obj


def _parse_kwargs(kwargs: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs) if kwargs.strip() else {}
        except json.JSONDecodeError as err:
            raise BadInputError(f"--model-kwargs: invalid JSON ({err}): {kwargs!r}") from None
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise BadInputError(
            f"--model-kwargs: expected a JSON object of keyword arguments, got {kwargs!r}"
        )
    return dict(kwargs)


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
    p = Path(path).expanduser()
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


def _safe_torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)``: refuses any pickle that would import or call code."""
    with warnings.catch_warnings():
        # Plain pickle.dump files trigger a protocol warning before being refused; the
        # refusal itself is reported as an error, so the warning is noise.
        warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)


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
            _safe_torch_load(p)
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


# --------------------------------------------------------------------------- export helpers


def _nn_module_type(graph_module: nn.Module, qualname: str) -> str | None:
    """The original class of submodule ``qualname``, read from its graph's node metadata."""
    graph = getattr(graph_module, "graph", None)
    if graph is None:
        return None
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for path, type_name in stack.values():
            if path == qualname:
                return (
                    type_name
                    if isinstance(type_name, str)
                    else getattr(type_name, "__qualname__", str(type_name))
                )
    return None


def _normalized_args(node: Any) -> dict[str, Any] | None:
    """Bind an ``aten`` call's args to its schema's argument names, defaults filled in."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return None
    bound: dict[str, Any] = {}
    arguments = list(schema.arguments)
    if len(node.args) > len(arguments):
        return None
    for arg, value in zip(arguments, node.args, strict=False):
        bound[arg.name] = value
    for key, value in node.kwargs.items():
        bound[key] = value
    for arg in arguments:
        if arg.name not in bound:
            if not arg.has_default_value():
                return None
            bound[arg.name] = arg.default_value
    return bound


def _as_real_layer(module: nn.Module) -> nn.Module | None:
    """A real nn.Linear / nn.Conv2d equivalent to an ``InterpreterModule``, or None.

    Only a graph of exactly ``placeholder -> aten.linear | aten.conv2d -> output`` whose weight
    and bias are ``get_attr`` of this module's own parameters qualifies, so the swap computes
    the very same function with the very same parameter objects.
    """
    graph = getattr(module, "graph", None)
    if graph is None:
        return None
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    calls = [n for n in nodes if n.op == "call_function"]
    outputs = [n for n in nodes if n.op == "output"]
    others = [
        n for n in nodes if n.op not in ("placeholder", "call_function", "output", "get_attr")
    ]
    if len(placeholders) != 1 or len(calls) != 1 or len(outputs) != 1 or others:
        return None
    call, out = calls[0], outputs[0]
    if out.args != (call,) or placeholders[0].kwargs:
        return None
    ops = torch.ops.aten
    linear_ops = (ops.linear.default,)
    conv_ops = (ops.conv2d.default, getattr(ops.conv2d, "padding", None))
    if call.target not in linear_ops and call.target not in conv_ops:
        return None
    bound = _normalized_args(call)
    if bound is None or bound.get("input") is not placeholders[0]:
        return None

    def param(node: Any) -> nn.Parameter | None | bool:
        # None: no bias; False: not a plain parameter of this module (do not swap).
        if node is None:
            return None
        if getattr(node, "op", None) != "get_attr" or "." in str(node.target):
            return False
        value = getattr(module, str(node.target), None)
        return value if isinstance(value, nn.Parameter) else False

    weight, bias = param(bound.get("weight")), param(bound.get("bias"))
    if weight is None or weight is False or bias is False:
        return None
    if call.target in linear_ops:
        if weight.dim() != 2:
            return None
        layer: nn.Module = nn.Linear(
            weight.shape[1], weight.shape[0], bias=bias is not None, device="meta"
        )
    else:
        groups = int(bound["groups"])
        if weight.dim() != 4:
            return None
        layer = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            kernel_size=tuple(weight.shape[2:]),
            stride=tuple(bound["stride"]),
            padding=bound["padding"]
            if isinstance(bound["padding"], str)
            else tuple(bound["padding"]),
            dilation=tuple(bound["dilation"]),
            groups=groups,
            bias=bias is not None,
            device="meta",
        )
    # Share the parameter objects: names, order, storage and fingerprint are unchanged.
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    layer.train(module.training)
    return layer


def restore_layer_types(model: nn.Module) -> list[str]:
    """Swap unflattened ``InterpreterModule`` leaves back to real ``nn.Linear`` / ``nn.Conv2d``.

    ``torch.export.unflatten`` rebuilds the module tree with the original names, but every
    submodule is an ``InterpreterModule`` (an FX graph), so ``isinstance(m, nn.Linear)`` fails
    and K-FAC / last-layer code cannot find the layers. A leaf whose graph is one
    ``aten.linear`` or ``aten.conv2d`` call on its own ``weight`` / ``bias`` is replaced by the
    equivalent ``nn`` layer holding the same ``Parameter`` objects; the parent graph calls the
    submodule by name, so forward hooks on the new layer fire. Anything else is left alone
    (see :func:`module_tree` for what remains).

    Args:
        model: An ``UnflattenedModule`` (other modules are returned unchanged).

    Returns:
        Names of the submodules swapped, in ``named_modules()`` order.
    """
    swapped: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or type(module).__name__ != "InterpreterModule":
            continue
        if any(True for _ in module.children()):
            continue
        layer = _as_real_layer(module)
        if layer is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        swapped.append(name)
    return swapped


def module_tree(model: nn.Module) -> list[ModuleInfo]:
    """Every submodule with its original type and whether hooks can use it as a layer.

    Useful to see what a ``.pt2`` or TorchScript model looks like after loading: which
    ``Linear`` / ``Conv2d`` layers are real (``hookable``) and which stayed graph modules.
    """
    rows = []
    for name, module in model.named_modules():
        cls = type(module)
        loaded = cls.__name__
        if loaded == "InterpreterModule":
            type_name = _nn_module_type(module, name) or loaded
        elif isinstance(module, torch.jit.ScriptModule):
            type_name = getattr(module, "original_name", loaded)
        else:
            type_name = f"{cls.__module__}.{cls.__qualname__}"
        rows.append(ModuleInfo(name, type_name, loaded, isinstance(module, _HOOKABLE_TYPES)))
    return rows


def require_hookable_layers(model: nn.Module, ref: ModelRef | None, feature: str) -> None:
    """Raise a clear error when ``feature`` (e.g. ``--structure kron``) needs real layers.

    Args:
        model: The loaded model.
        ref: Its reference (for the form and path in the message), if known.
        feature: What needs the layers, for the message.

    Raises:
        BadInputError: No submodule is an ``nn.Linear`` / ``nn.Conv2d``; the message names the
            form that works.
    """
    rows = module_tree(model)
    if any(r.hookable for r in rows):
        return
    # Layers that exist but as graph / script modules: name them, so the user sees why.
    lost = [
        f"{r.name} ({r.type_name.rsplit('.', 1)[-1]} as {r.loaded_class})"
        for r in rows
        if r.name and r.type_name.rsplit(".", 1)[-1] in ("Linear", "Conv2d")
    ]
    where = f"{ref.path} ({ref.form} form)" if ref is not None else "this model"
    detail = f" (only {_fmt_names(lost, 5)})" if lost else ""
    raise BadInputError(
        f"{where}: {feature} needs real nn.Linear / nn.Conv2d modules, found none{detail}; "
        f"{_FACTORY_HINT}, or export with torch.export to .pt2"
    )


def _static_batch_inputs(ep: Any) -> list[str]:
    """User inputs of an ExportedProgram whose first dimension is a fixed number."""
    user_inputs = set(ep.graph_signature.user_inputs)
    fixed = []
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        val = node.meta.get("val")
        shape = getattr(val, "shape", None)
        if shape is not None and len(shape) > 0 and isinstance(shape[0], int) and shape[0] > 1:
            fixed.append(
                f"{node.name} {tuple(int(s) if isinstance(s, int) else -1 for s in shape)}"
            )
    return fixed


# --------------------------------------------------------------------------- loading


def _load_export(p: Path, device: torch.device) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch's own deserialiser trips its own deprecation warning (LeafSpec); users
            # cannot act on it.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            ep = torch.export.load(str(p))
    except Exception as err:
        raise BadInputError(
            f"{p}: cannot load torch.export archive ({type(err).__name__}: {err})"
        ) from None
    fixed = _static_batch_inputs(ep)
    if fixed:
        # A static batch size makes every other batch size (including vmap's per-sample
        # calls) fail deep inside fitting; say so now.
        raise BadInputError(
            f"{p}: exported with a fixed batch size (inputs {', '.join(fixed)}); re-export with "
            "torch.export.export(model, args, dynamic_shapes=({0: torch.export.Dim.AUTO},)) "
            f"or {_FACTORY_HINT}"
        )
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, device)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            model = torch.export.unflatten(ep)
    except Exception:
        # Some programs cannot be unflattened. ExportedProgram.module() still runs them (and
        # keeps parameter names, so the fingerprint is unchanged), but as one flat graph: no
        # submodule is called, so no hook fires. Diagonal / full / low-rank Laplace over all
        # weights still work; K-FAC and last-layer are refused by require_hookable_layers,
        # whose message names the factory form.
        return ep.module()
    restore_layer_types(model)
    return model


def _load_torchscript(p: Path, device: torch.device) -> nn.Module:
    try:
        return torch.jit.load(str(p), map_location=device)
    except Exception as err:
        raise BadInputError(
            f"{p}: cannot load TorchScript archive ({type(err).__name__}: {err})"
        ) from None


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _describe_non_state_dict(obj: Any) -> str:
    if isinstance(obj, Mapping):
        bad = [
            f"{k!r} holds {type(v).__name__}"
            for k, v in obj.items()
            if not isinstance(v, torch.Tensor)
        ]
        nested = [k for k, v in obj.items() if _is_tensor_mapping(v)]
        hint = (
            f"; the weights seem to be under {nested[0]!r}: save that mapping alone"
            if nested
            else ""
        )
        return f"a mapping whose values are not all tensors ({', '.join(bad[:3])}){hint}"
    return f"a {type(obj).__name__}"


def _fmt_names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _load_state_dict_strict(
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
            parts.append(f"missing keys: {_fmt_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt_names(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_fmt_names(mismatched, 5)}")
        raise BadInputError(
            f"{p}: checkpoint of another architecture than {factory!r} builds: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=False)


def _build_from_factory(factory: str, kwargs: dict[str, Any]) -> nn.Module:
    fn = import_callable(factory)
    try:
        model = fn(**kwargs)
    except Exception as err:
        raise BadInputError(
            f"--model-factory: {factory!r} failed with kwargs {kwargs!r}: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(model, nn.Module):
        raise BadInputError(
            f"--model-factory: {factory!r} returned {type(model).__name__}, expected a torch.nn.Module"
        )
    return model


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
        dtype: ``"float32"`` / ``"float64"`` to convert the parameters, or None to keep them.

    Returns:
        ``(model, ref)``; ``ref.fingerprint`` is taken before the dtype / device conversion.

    Raises:
        BadInputError: Missing / unreadable / unknown file, a pickled module without
            ``trust_checkpoint``, a weight-only file without factory, an architecture mismatch,
            or a bad factory, device or dtype.
    """
    if Path(path).expanduser().is_dir():
        return _load_hf_dir(path, factory, factory_kwargs, device, dtype)
    p = _check_file(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    kwargs = _parse_kwargs(factory_kwargs)
    kind = _sniff(p)

    if kind in ("export", "torchscript") and factory is not None:
        raise BadInputError(
            f"{path}: a self-contained {kind} archive; --model-factory {factory!r} is only for "
            ".safetensors / state-dict .pt weights"
        )

    if kind == "export":
        model = _load_export(p, dev)
        form = ModelForm.EXPORT
    elif kind == "torchscript":
        model = _load_torchscript(p, dev)
        form = ModelForm.TORCHSCRIPT
    elif kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from laplace_cli.io.posterior_file import read_safetensors_header

        read_safetensors_header(p)  # absurd lengths, offsets or shapes: refused before allocating
        try:
            state = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise BadInputError(f"{path}: unreadable safetensors file ({err})") from None
        model = _from_weights(p, state, factory, kwargs)
        form = ModelForm.SAFETENSORS
    elif kind == "torch_save":
        model, form = _load_torch_save(p, factory, kwargs, trust_checkpoint)
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
    kwargs = _parse_kwargs(factory_kwargs)
    for key in ("base_model", "adapter"):
        # Folders given as kwargs are relative to the working directory; recorded absolute so
        # that the posterior reloads the model from anywhere (package: specs stay as they are).
        value = kwargs.get(key)
        if isinstance(value, str) and value and not value.startswith("package:"):
            kwargs[key] = str(Path(value).expanduser().resolve())
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    model = load_hf_model(Path(path).expanduser(), kwargs)
    fingerprint = model_fingerprint(model)
    model = model.to(dev)
    if dt is not None:
        model = model.to(dt)
    model.eval()
    ref = ModelRef(path=str(path), form=ModelForm.HF.value, kwargs=kwargs, fingerprint=fingerprint)
    return model, ref


def _load_torch_save(
    p: Path, factory: str | None, kwargs: dict[str, Any], trust_checkpoint: bool
) -> tuple[nn.Module, ModelForm]:
    """A ``torch.save`` file: a state dict (safe) or, only when trusted, a pickled module."""
    try:
        obj = _safe_torch_load(p)
    except pickle.UnpicklingError as err:
        # weights_only=True stopped at the first global it would have imported or called, so
        # nothing from the file ran.
        if not trust_checkpoint:
            reason = _unpickler_reason(err)
            raise BadInputError(
                f"{p}: not a state dict of tensors but a pickle that would import or run code "
                "(e.g. a whole pickled nn.Module), refused without running it; if you trust this "
                f"file pass --trust-checkpoint, or better {_FACTORY_HINT} "
                f"(weights-only unpickler: {reason})"
            ) from None
        obj = None
    except Exception as err:
        raise BadInputError(
            f"{p}: unreadable torch checkpoint ({type(err).__name__}: {err})"
        ) from None
    if obj is None:
        module = _trusted_torch_load(p)
        if not isinstance(module, nn.Module):
            raise BadInputError(
                f"{p}: unpickled a {type(module).__name__}, expected a torch.nn.Module"
            )
        if factory is not None:
            raise BadInputError(
                f"{p}: a whole pickled module; --model-factory {factory!r} is only for weights"
            )
        return module, ModelForm.PICKLE
    if not _is_tensor_mapping(obj):
        raise BadInputError(
            f"{p}: expected a state dict (a mapping of parameter names to tensors), got "
            f"{_describe_non_state_dict(obj)}"
        )
    return _from_weights(p, obj, factory, kwargs), ModelForm.STATE_DICT


def _unpickler_reason(err: BaseException) -> str:
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


def _trusted_torch_load(p: Path) -> Any:
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:
        raise BadInputError(
            f"{p}: unpickling the trusted checkpoint failed ({type(err).__name__}: {err}); the "
            "classes it names must be importable (run from the project folder), or "
            f"{_FACTORY_HINT}"
        ) from None


def _from_weights(
    p: Path, state: Mapping[str, torch.Tensor], factory: str | None, kwargs: dict[str, Any]
) -> nn.Module:
    if factory is None:
        raise BadInputError(
            f"{p}: holds weights only ({len(state)} tensors) and needs the code that builds the "
            "model: pass --model-factory pkg.module:function (or path/to/file.py:function) and, "
            "if it takes arguments, --model-kwargs '{\"hidden\": 64}'"
        )
    model = _build_from_factory(factory, kwargs)
    _load_state_dict_strict(model, state, p, factory)
    return model
