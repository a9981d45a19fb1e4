"""Resumable fits: the partial sums of a fit saved every N batches, and a fit continued from them.

    laplace fit model.pt2 --data data.yaml -o post.st --checkpoint-every 50
    # killed after batch 120 (checkpoint at batch 100) ...
    laplace fit model.pt2 --data data.yaml -o post.st --checkpoint-every 50 --resume

A fit is a sum over batches (docs/design.md §5), so its state after k batches is the raw sums
`Laplace.partial_state()` (curvature sums, loss, N), the number k and the MC Fisher's random
stream. The checkpoint file (`<output>.ckpt`; `<output>.rank<r>-of-<W>.ckpt` for each rank of a
distributed fit) is a safetensors file written atomically (temporary file + rename), so a kill
at any moment leaves either the previous checkpoint or the new one. `--resume` restores it and
skips the first k batches of the same, unshuffled loader: the sums, in the same order, give the
same posterior as an uninterrupted fit. The checkpoint records what the fit depends on (model
fingerprint, data, split, batch size, structure, ...) and a resume with other settings is
refused; it is removed once the posterior is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.atomic import atomic_write_bytes
from laplace_cli.laplace.approximation import Laplace

__all__ = ["FORMAT", "FitCheckpoint", "checkpoint_path"]

FORMAT = "laplace-cli/fit-checkpoint"
FORMAT_VERSION = "1"
_RNG_KEY = "rng_state"


def checkpoint_path(output: str | Path, rank: int = 0, world_size: int = 1) -> Path:
    """Where the checkpoint of a fit writing `output` lives (one file per rank)."""
    output = Path(output)
    suffix = ".ckpt" if world_size <= 1 else f".rank{rank}-of-{world_size}.ckpt"
    return output.with_name(output.name + suffix)


@dataclass
class FitCheckpoint:
    """Saves a fit's partial state every `every` batches and restores it.

    Args:
        path: The checkpoint file.
        every: Save after every `every` batches (0: never save, only resume).
        config: What the partial sums depend on (plain JSON values); a checkpoint written with
            another config is refused on resume, naming the first differing key.
    """

    path: Path
    every: int
    config: dict[str, Any] = field(default_factory=dict)
    la: Laplace | None = None
    saves: int = 0

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.every < 0:
            raise BadInputError(
                f"--checkpoint-every: expected a positive integer, got {self.every}"
            )

    # --- saving ---------------------------------------------------------------------------
    def attach(self, la: Laplace) -> FitCheckpoint:
        """Save this approximation's state from now on (`on_batch` is the fit hook)."""
        self.la = la
        return self

    def on_batch(self, batches_done: int) -> None:
        """`Laplace.fit` hook: save after every `every`-th batch."""
        if self.every and batches_done % self.every == 0:
            self.save(batches_done)

    def save(self, batches_done: int) -> None:
        """Write the partial state after `batches_done` batches, atomically."""
        from safetensors.torch import save

        assert self.la is not None, "attach() a Laplace first"
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.la.partial_state().items()}
        gen = getattr(self.la, "_fit_generator", None)
        if gen is not None:
            tensors[_RNG_KEY] = gen.get_state().cpu()
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "batches_done": str(int(batches_done)),
            "n_outputs": json.dumps(self.la.n_outputs),
            "config": json.dumps(self.config, sort_keys=True),
        }
        atomic_write_bytes(self.path, save(tensors, metadata=metadata))
        self.saves += 1

    def remove(self) -> None:
        """Delete the checkpoint (after the posterior is written)."""
        self.path.unlink(missing_ok=True)

    # --- resuming -------------------------------------------------------------------------
    def restore(self, la: Laplace) -> int:
        """Load the checkpoint into `la` and return the batches already done (0: none saved).

        Raises:
            BadInputError: The file is not a fit checkpoint, or was written by a fit with
                other settings (named).
        """
        if not self.path.exists():
            return 0
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(self.path))
            with open(self.path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(header_len))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BadInputError(f"{self.path}: not a readable fit checkpoint ({exc})") from exc
        meta: Mapping[str, str] = header.get("__metadata__") or {}
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise BadInputError(
                f"{self.path}: metadata 'format': expected {FORMAT} version {FORMAT_VERSION}, "
                f"got {meta.get('format')!r} version {meta.get('format_version')!r}"
            )
        saved = json.loads(meta.get("config", "{}"))
        for key in sorted(set(saved) | set(self.config)):
            if saved.get(key) != self.config.get(key):
                raise BadInputError(
                    f"{self.path}: the checkpoint was written with {key}={saved.get(key)!r}, "
                    f"this fit has {key}={self.config.get(key)!r}; rerun with the same "
                    "settings, or delete the checkpoint to start over"
                )
        rng: Tensor | None = tensors.pop(_RNG_KEY, None)
        try:
            la.load_partial_state(tensors, rng)
        except KeyError as exc:
            raise BadInputError(f"{self.path}: the checkpoint has no tensor {exc}") from exc
        n_outputs = json.loads(meta.get("n_outputs", "null"))
        if n_outputs is not None:
            la.n_outputs = int(n_outputs)
        self.la = la
        return int(meta.get("batches_done", "0"))


def fit_config(**values: Any) -> dict[str, Any]:
    """Plain-JSON settings a checkpoint must match (paths as strings, enums by value)."""
    out = {}
    for k, v in values.items():
        if hasattr(v, "value"):
            v = v.value
        elif isinstance(v, (Path, torch.dtype, torch.device)):
            v = str(v)
        out[k] = v
    return out
