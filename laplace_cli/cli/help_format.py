"""How `--help` names things: flags without a value type, arguments in capitals.

Typer 0.29 shows every boolean flag with a value type (`--json <bool>`, as if it took one) and a
required argument as `{model}` in the usage line. `PlainMetavars` makes a flag show no type and
an argument read `MODEL` (as the command's own help text names it), in the usage line, the
Arguments panel and "Missing argument 'MODEL'".
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand

__all__ = ["LaplaceCommand", "PlainMetavars"]


class PlainMetavars:
    """Mixin for Typer commands and groups: flags show no metavar, arguments are upper-case."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if param.metavar is not None:
                continue  # an explicit metavar (e.g. N) wins
            if getattr(param, "is_flag", False):
                param.metavar = ""  # a flag takes no value: show none
            elif param.param_type_name == "argument":
                param.metavar = param.name.upper()
        return params


class LaplaceCommand(PlainMetavars, TyperCommand):
    """The class of every `laplace` command (see `PlainMetavars`)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        # Click's convention (`laplace fit [OPTIONS] MODEL`, `[NAME]` when optional) instead of
        # Typer's `{model}`.
        pieces = [self.options_metavar] if self.options_metavar else []  # type: ignore[attr-defined]
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                continue
            name = param.metavar or param.name.upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces
