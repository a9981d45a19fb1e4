"""`laplace inspect POSTERIOR`: the metadata and tensor shapes of a posterior file."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table
from rich.text import Text

from laplace_cli.cli.common import apply_threads
from laplace_cli.cli.console import emit_json, stderr_console
from laplace_cli.cli.options import DebugOpt, JsonOpt, PosteriorArg, ThreadsOpt

EXAMPLES = [
    "laplace inspect post.st",
    "laplace inspect post.st --json | jq .metadata.structure",
]

_MAX_VALUE_CHARS = 100


def inspect(
    posterior: PosteriorArg,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Print the metadata, tensor names, dtypes and shapes of a posterior file.

    The file is fully checked (format, version, keys, shapes, finite values) on the way, so
    'laplace inspect' is also how to validate a posterior. Tables go to stderr; --json prints
    one JSON document on stdout.
    """
    apply_threads(threads)
    from laplace_cli.io.posterior_file import describe, read_posterior  # imports torch

    info = describe(read_posterior(posterior))
    if json_:
        emit_json(info)
    else:
        render(info)


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _value_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    if len(text) > _MAX_VALUE_CHARS:
        extra = f" ({len(value)} items)" if isinstance(value, (list, dict)) else ""
        text = text[: _MAX_VALUE_CHARS - 1] + "…" + extra
    return text


def render(info: dict[str, Any]) -> None:
    """Print `describe()`'s summary as two rich tables on stderr."""
    meta = info["metadata"]
    stderr_console.print(
        Text.assemble(
            ("posterior ", "bold"),
            str(info["path"]),
            f"  ({_human_bytes(info['file_size'])}, {info['n_params']:,} parameters, ",
            f"{meta.get('structure')} / {meta.get('subset')} / {meta.get('likelihood')})",
        ),
        soft_wrap=True,
    )
    table = Table(title="metadata", title_justify="left", show_header=True)
    table.add_column("key", style="cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in meta.items():
        table.add_row(key, Text(_value_text(value)))
    stderr_console.print(table)

    tensors = Table(title="tensors", title_justify="left")
    tensors.add_column("name", style="cyan", no_wrap=True)
    tensors.add_column("dtype")
    tensors.add_column("shape", justify="right")
    tensors.add_column("size", justify="right")
    for name, t in info["tensors"].items():
        shape = (
            "("
            + ", ".join(str(d) for d in t["shape"])
            + ("," if len(t["shape"]) == 1 else "")
            + ")"
        )
        tensors.add_row(name, t["dtype"], shape, _human_bytes(t["bytes"]))
    stderr_console.print(tensors)
    ctx = info.get("context_points")
    if ctx is not None:
        stderr_console.print(
            f"context points: {ctx['count']} ({ctx['strategy']}) training inputs stored, "
            f"{_human_bytes(ctx['input_bytes'])}; kernel system {_human_bytes(ctx['kernel_bytes'])}"
            " (shipping this file ships those training rows)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
