"""The vocabulary of model checkpoints: the forms, the model reference, module-tree rows.

Shared by the loaders (:mod:`laplace_cli.io.checkpoints`, :mod:`laplace_cli.io.exported_models`,
:mod:`laplace_cli.io.state_dicts`) and by the pipeline, which stores a :class:`ModelRef` in the
posterior. Kept apart so those modules can share these names without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from laplace_cli.core.enums import StrEnum
from laplace_cli.core.errors import BadInputError

__all__ = ["ModelForm", "ModelRef", "ModuleInfo"]


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


HOOKABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


# Printed in errors so that users learn which form to switch to.
FACTORY_HINT = (
    "save the weights (model.state_dict()) as .safetensors or .pt and pass "
    "--model-factory pkg.module:function"
)


@dataclass
class ModelRef:
    """Where a model came from; stored in the posterior so later commands can reload it.

    Attributes:
        path: The checkpoint path. A posterior stores it relative to the posterior file
            (:func:`laplace_cli.io.model_paths.portable_model_ref`), so that it stays portable.
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


# Here, not in a loader, because both the state-dict and the export loaders' messages use it.
def fmt_names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
