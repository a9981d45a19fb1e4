"""Models and posterior files: where a model comes from, loading it, saving and loading posteriors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from laplace_cli.core.errors import BadInputError
from laplace_cli.core.paths import user_path
from laplace_cli.io.checkpoints import (
    ModelRef,
    load_model,
    model_fingerprint,
    resolve_device,
    resolve_dtype,
)
from laplace_cli.io.posterior_file import check_fingerprint, read_posterior, write_posterior
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.laplace.functional_state import (
    functional_from_state,
    functional_state,
    is_functional,
)
from laplace_cli.laplace.rebuild import laplace_from_state
from laplace_cli.laplace.serialization import laplace_state


# --- models -------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """Where a model comes from: a checkpoint, optionally with a factory and its kwargs."""

    path: str
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    trust_checkpoint: bool = False


@dataclass
class LoadedModel:
    model: nn.Module
    ref: ModelRef
    fingerprint: str


def load_model_spec(spec: ModelSpec, device: str = "auto", dtype: str | None = None) -> LoadedModel:
    """Load a checkpoint on the chosen device and dtype, and fingerprint its parameters."""
    model, ref = load_model(
        str(user_path(spec.path).resolve()),
        factory=_absolute_factory(spec.factory),
        factory_kwargs=spec.kwargs or None,
        trust_checkpoint=spec.trust_checkpoint,
        device=resolve_device(device),
        dtype=resolve_dtype(dtype),
    )
    # The fingerprint is taken before any --dtype/--device conversion, so a posterior fitted in
    # float64 still matches the same checkpoint loaded in float32.
    return LoadedModel(model, ref, ref.fingerprint or model_fingerprint(model))


def _absolute_factory(factory: str | None) -> str | None:
    """A file-style factory (`path/to/file.py:fn`) with an absolute path, so the posterior's
    model reference still works from another working directory."""
    if factory and ".py:" in factory:
        file, _, fn = factory.rpartition(":")
        if Path(file).exists():
            return f"{Path(file).resolve()}:{fn}"
    return factory


def model_spec_from_ref(ref: Mapping[str, Any], trust_checkpoint: bool = False) -> ModelSpec:
    """The model a posterior names (its recorded path, factory and kwargs)."""
    if not ref or not ref.get("path"):
        raise BadInputError("the posterior names no model; pass --model (and --model-factory)")
    if ref.get("factory") and not trust_checkpoint:
        _check_recorded_factory(str(ref["factory"]))
    return ModelSpec(
        path=str(ref["path"]),
        factory=ref.get("factory"),
        kwargs=dict(ref.get("kwargs") or {}),
        trust_checkpoint=trust_checkpoint,
    )


def _installed_code_dirs() -> list[Path]:
    """The standard library and site-packages folders of this interpreter."""
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    dirs = [paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    dirs += site.getsitepackages() + [site.getusersitepackages()]
    return [Path(d).resolve() for d in dirs if d]


def _is_installed_code(where: Path) -> bool:
    """Under this interpreter's stdlib / site-packages, or any Python's (lib/pythonX.Y/...)."""
    if any(where.is_relative_to(d) for d in _installed_code_dirs()):
        return True
    parts = where.parts
    return any(
        part in ("site-packages", "dist-packages")
        or (i > 0 and parts[i - 1] in ("lib", "lib64") and part.startswith("python"))
        for i, part in enumerate(parts)
    )


def _check_recorded_factory(factory: str) -> None:
    """Refuse a factory that a posterior file names from the Python installation.

    A posterior is a data file; its metadata names the factory that rebuilds the model and the
    kwargs to call it with. Calling whatever a file names would let a hostile posterior run
    commands (`subprocess:call` with `{"args": [...]}`) or overwrite files (`torch:save`), so a
    recorded factory must be the user's own code: a module or file outside the standard library
    and site-packages. This is decided from the file's location, before importing anything.
    An installed factory is confirmed on the command line with --model/--model-factory.
    """
    import importlib.util
    import sys

    target = factory.rpartition(":")[0]
    if target.endswith(".py") or "/" in target:
        origin: str | None = str(user_path(target))
    else:
        top = target.split(".")[0]
        sys.path.insert(0, str(Path.cwd()))  # as import_callable: the working directory first
        try:
            found = importlib.util.find_spec(top) if top.isidentifier() else None
        except (ImportError, ValueError):
            found = None
        finally:
            sys.path.remove(str(Path.cwd()))
        if found is None:
            return  # not importable: loading the model reports it
        origin = found.origin if found.has_location else None
        if origin is None and found.submodule_search_locations:  # a namespace package
            origin = next(iter(found.submodule_search_locations))
    where = Path(origin).resolve() if origin else None
    if where is None or _is_installed_code(where):
        raise BadInputError(
            f"the posterior names the model factory {factory!r}, which is "
            f"{'built into Python' if where is None else f'installed code ({where})'}; a "
            "posterior file may only name your own code. If this is the right factory, say so: "
            f"--model CHECKPOINT --model-factory {factory}"
        )


def save_posterior(
    la: Laplace, path: str | Path, loaded: LoadedModel, extra: dict[str, Any] | None = None
) -> None:
    """Write the posterior file atomically, with the model reference and fingerprint.

    In a distributed run only rank 0 writes, and the metadata records `world_size` and the
    examples of each rank's shard (`shard_sizes`) of a sharded fit.
    """
    from laplace_cli.pipeline import distributed

    ctx = distributed.context()
    if ctx is not None and not ctx.is_main:
        return
    shards = getattr(la, "shard_sizes", None)
    if shards is not None:
        extra = {"world_size": len(shards), "shard_sizes": list(shards), **(extra or {})}
    from laplace_cli.io.model_paths import portable_model_ref

    # Paths relative to the posterior, so that a moved run folder still finds its model.
    ref = portable_model_ref(loaded.ref.to_dict(), path)
    # Function-space (GP) Laplace has its own layout (structure "gp", the context inputs).
    state = functional_state if is_functional(la) else laplace_state
    tensors, metadata = state(la, model_ref=ref, fingerprint=loaded.fingerprint, extra=extra)
    write_posterior(path, tensors, metadata)


# --- load ---------------------------------------------------------------------------------------
@dataclass
class LoadedPosterior:
    la: Laplace
    metadata: dict[str, Any]
    loaded: LoadedModel
    path: str


def load_posterior(
    path: str | Path,
    *,
    model_override: ModelSpec | None = None,
    trust_checkpoint: bool = False,
    device: str = "auto",
    dtype: str | None = None,
) -> LoadedPosterior:
    """Read a posterior file, load the model it names (or `model_override`), check the fingerprint."""
    pf = read_posterior(path)
    meta = pf.metadata
    recorded = meta.get("model") or {}
    if model_override is None:
        from laplace_cli.io.model_paths import resolve_model_ref

        # Paths are stored relative to the posterior file (older files: absolute).
        recorded = resolve_model_ref(recorded, path)
        spec = model_spec_from_ref(recorded, trust_checkpoint)
    else:
        spec = model_override
    if dtype is None and meta.get("model_dtype"):
        # Fitted on a bfloat16 / float16 model (the posterior itself is float32): the same.
        dtype = str(meta["model_dtype"])
    if dtype is None:
        dtype = {torch.float64: "float64", torch.float32: "float32"}.get(pf.tensors["mean"].dtype)
    loaded = load_model_spec(spec, device, dtype)
    check_fingerprint(
        {**meta, "model": recorded},  # names the checkpoint where it was found
        loaded.fingerprint,
        str(path),
        model=spec.path,
        overridden=model_override is not None,
    )
    if str(meta.get("structure")) == "gp":
        la = functional_from_state(loaded.model, pf.tensors, meta)
    else:
        la = laplace_from_state(loaded.model, pf.tensors, meta)
    return LoadedPosterior(la, meta, loaded, str(path))


def resave(
    lp: LoadedPosterior, path: str | Path | None = None, extra: dict[str, Any] | None = None
) -> None:
    """Write a (re-tuned) posterior back, in place by default, keeping its extra metadata."""
    keep = {
        k: lp.metadata[k]
        for k in ("data", "fit_seconds", "world_size", "shard_sizes")
        if k in lp.metadata
    }
    keep.update(extra or {})
    save_posterior(lp.la, path or lp.path, lp.loaded, keep)
