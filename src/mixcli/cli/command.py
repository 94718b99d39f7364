"""One help style for every command: click's plain metavars (MODEL, PATH, N, TEXT), never Typer's
`{MODEL}` usage braces or `<int range>` type labels, and -v/--verbose after the subcommand too."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Annotated

import typer

from typer.core import TyperArgument, TyperCommand, TyperOption

# Typer's type label (what it shows as <label>) -> the metavar shown instead.
TYPE_METAVARS = {"int": "N", "int range": "N", "float": "X", "float range": "X", "str": "TEXT", "path": "PATH"}
VERBOSE_HELP = "Show tracebacks and debug logs."


def enable_debug(value: bool) -> bool:
    """-v/--verbose: the same switch as the top-level option and MIX_DEBUG=1."""
    if value:
        os.environ["MIX_DEBUG"] = "1"
    return value


class PlainArgument(TyperArgument):
    """An argument written as click writes it: `MODEL`, `[IMAGE]...`, with no type beside it in the help."""

    def _shown(self) -> str:
        return self.metavar or (self.name or "").upper()

    def get_usage_pieces(self, ctx) -> list[str]:
        name = self._shown()
        if not self.required:
            name = f"[{name}]"
        return [name if self.nargs == 1 or name.endswith("...") else f"{name}..."]

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        return None if record is None else (self._shown(), record[1])


def _type_metavar(option: TyperOption) -> str:
    label = option.display_type(None).strip("<>")
    return TYPE_METAVARS.get(label, label.upper())


@lru_cache(maxsize=1)
def _verbose_option() -> TyperOption:
    """-v/--verbose as Typer builds it (its constructor is not public): the option of a one-command app."""
    probe = typer.Typer()

    @probe.command()
    def verbose(
        flag: Annotated[bool, typer.Option("--verbose", "-v", expose_value=False, is_eager=True,
                                           callback=enable_debug, help=VERBOSE_HELP)] = False,
    ) -> None: ...

    return typer.main.get_command(probe).params[0]


class MixCommand(TyperCommand):
    """Every mix subcommand: plain metavars, and -v/--verbose unless the command has its own."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.__class__ = PlainArgument
            elif isinstance(param, TyperOption) and param.metavar is None and not (param.is_flag or param.count):
                param.metavar = _type_metavar(param)
        if not any("--verbose" in getattr(param, "opts", ()) for param in self.params):
            self.params.append(_verbose_option())
